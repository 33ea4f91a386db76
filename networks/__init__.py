"""Network architectures, looked up by name.

    from networks import create_model, list_models
    model = create_model("densenet", image_size=128, metadata_features=0)

Importing the package registers every model; add a new one by writing a module with one
`@register_backbone` function and importing it here (docs/models.md, "Adding a model").
"""

from networks import applications, conv_blocks, densenet, efficientnet_lite, vgg16  # noqa: F401  (registers the models)
from networks.augmentation import AugmentationOptions, build_augmentation, let_augmentation_compile
from networks.finetune import Blocks, backbone_variables, freeze_backbone, unfreeze_top_blocks
from networks.heads import HeadOptions
from networks.registry import ModelEntry, Width, check_input, create_model, get_model_entry, list_models, model_options

__all__ = [
    "AugmentationOptions",
    "Blocks",
    "backbone_variables",
    "build_augmentation",
    "check_input",
    "HeadOptions",
    "create_model",
    "freeze_backbone",
    "get_model_entry",
    "let_augmentation_compile",
    "list_models",
    "ModelEntry",
    "model_options",
    "unfreeze_top_blocks",
    "Width",
]

"""A trained model at another input size: test-time resolution (Touvron et al., 2019, "FixRes").

Random crops and zooms in training make objects look larger than at test time, so a model often
scores better when it is shown larger test images than it trained on. Every network here ends in
global pooling, so its weights fit any input size; only the input layers fix one. This rebuilds
the model from its own configuration with a new size and copies the weights over.

    model = with_image_size(model, 160)   # trained at 128 px
"""

import keras

from networks.augmentation import let_augmentation_compile


def with_image_size(model, image_size):
    """The same network with square image inputs of `image_size`, sharing no state with `model`.

    Every 4-dimensional input layer is resized, the backbone's nested one included; a metadata
    input is left as it is.

    Raises:
        ValueError: a layer's weights depend on the input size (a head that flattens the feature
            map), so the weights do not fit the new size.
    """
    if image_size < 1:
        raise ValueError(f"image size must be positive; got {image_size}")
    config = keras.saving.serialize_keras_object(model)
    _resize_inputs(config, image_size)
    try:
        # A layer whose weights fit one size only fails as the graph is rebuilt, or as they are set.
        resized = keras.saving.deserialize_keras_object(config)
        resized.set_weights(model.get_weights())
    except ValueError as error:
        raise ValueError(
            f"the model's weights depend on its input size, so it cannot take {image_size} px images ({error})"
        ) from None
    return let_augmentation_compile(resized)


def _resize_inputs(config, image_size):
    """Sets the spatial size of every image `InputLayer` in a serialised model, in place."""
    if isinstance(config, dict):
        if config.get("class_name") == "InputLayer":
            shape = config["config"].get("batch_shape")
            if shape is not None and len(shape) == 4:
                config["config"]["batch_shape"] = [shape[0], image_size, image_size, shape[3]]
        for value in config.values():
            _resize_inputs(value, image_size)
    elif isinstance(config, list):
        for value in config:
            _resize_inputs(value, image_size)

"""Grad-CAM: where in the image the evidence for a class lies.

Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
Localization", ICCV 2017. The feature map A of the last convolutional stage is weighted, channel
by channel, by the spatial mean of d score / dA, summed, clipped at zero and upsampled to the
image: a heat map of the regions that raise the class's score.

    cam = GradCAM(model)
    heatmaps = cam.heatmaps(images, class_indices)              # (n, size, size) in [0, 1]
    overlay = overlay_heatmap(images[0], heatmaps[0])           # (size, size, 3) uint8

The feature map is found in the model, not named: every classifier from `networks` is an image
input, one nested backbone model, then the head (`networks/heads.py`); the map is the backbone's
last 4-D output at least `MIN_SIDE` (4) positions wide: the final map at 224 px (7x7), an earlier
one in small models, whose final maps (2x2 at 64 px, 1x1 for VGG16 at 32 px) cannot localise
anything. A model without a nested backbone is searched the same way at its top level. Metadata
models are explained with their metadata input held fixed.

Gradients need the backend's own differentiation: TensorFlow's GradientTape, `jax.grad`, or
torch's autograd; `_gradients` is the one place that knows which.
"""

import io

import keras
import numpy as np
from matplotlib import colormaps
from PIL import Image

# A heat map is as coarse as its feature map. The final maps of 224 px models are 7x7; at the CPU
# preset's 64 px they are 2x2, too coarse to point at anything, so a map at least this wide is taken.
MIN_SIDE = 4


class GradCAM:
    """Grad-CAM heat maps of a classifier.

    Args:
        model: a `keras.Model` with one (batch, size, size, 3) image input, optionally further
            inputs (the metadata vector), and a softmax output.

    Raises:
        ValueError: the model has no 4-D feature map with more than one position.
    """

    def __init__(self, model):
        images = [tensor for tensor in model.inputs if len(tensor.shape) == 4]
        if len(images) != 1:
            raise ValueError(f"Grad-CAM needs a model with one image input; {model.name} has {len(images)}")
        self.image_input = images[0]
        self.other_inputs = [tensor for tensor in model.inputs if tensor is not self.image_input]
        nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
        searched = nested[0] if len(nested) == 1 else model
        feature_layer = last_feature_map_layer(searched)
        self.layer_name = feature_layer.name
        feature_map = feature_layer.output
        # image -> A, then A -> backbone output (if A is inside the backbone) -> probabilities.
        self.to_features = keras.Model(searched.inputs[0] if searched is not model else self.image_input, feature_map)
        if searched is model:
            self.to_backbone_output = None
            self.head = keras.Model([feature_map, *self.other_inputs], model.output)
        else:
            self.to_backbone_output = (
                None if feature_map is searched.output else keras.Model(feature_map, searched.output)
            )
            # The head starts at the last 4-D tensor the top level passes on: the backbone's output.
            head_start = [
                tensor
                for layer in model.layers
                if not isinstance(layer, keras.layers.InputLayer)
                for tensor in keras.tree.flatten(layer.input)
                if len(tensor.shape) == 4
            ][-1]
            self.head = keras.Model([head_start, *self.other_inputs], model.output)
        self._maps = self._class_activation_maps
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            # Compiled: eager TensorFlow runs the model layer by layer, about 15 times slower.
            self._maps = tf.function(self._maps, reduce_retracing=True)

    def _probabilities(self, features, others):
        if self.to_backbone_output is not None:
            features = self.to_backbone_output(features)
        return self.head([features, *others])

    def heatmaps(self, images, class_indices, others=()):
        """Heat maps of the given classes.

        Args:
            images: (n, size, size, 3) images as the model takes them.
            class_indices: the class explained for each image (e.g. the predicted one).
            others: the model's other inputs (the metadata vectors), in its input order.

        Returns:
            An (n, size, size) float32 array in [0, 1], 1 at each map's strongest evidence; all
            zero where nothing in the image raises the class's score.
        """
        images = keras.ops.convert_to_tensor(np.asarray(images, dtype="float32"))
        others = [keras.ops.convert_to_tensor(np.asarray(value, dtype="float32")) for value in others]
        one_hot = keras.ops.one_hot(keras.ops.convert_to_tensor(np.asarray(class_indices)), self.head.output.shape[-1])
        cam = keras.ops.convert_to_numpy(self._maps(images, one_hot, others))
        peak = cam.max(axis=(1, 2), keepdims=True)
        return np.divide(cam, peak, out=np.zeros_like(cam), where=peak > 0).astype(np.float32)

    def _class_activation_maps(self, images, one_hot, others):
        """The unnormalised maps, (n, size, size): ReLU of the gradient-weighted feature channels."""
        features = self.to_features(images)

        def score(features):
            # The log-probability rather than the probability: its gradient does not vanish
            # when the softmax saturates on a confident prediction.
            probabilities = self._probabilities(features, others)
            return keras.ops.sum(one_hot * keras.ops.log(probabilities + 1e-7))

        weights = keras.ops.mean(_gradients(score, features), axis=(1, 2), keepdims=True)
        cam = keras.ops.relu(keras.ops.sum(weights * features, axis=-1, keepdims=True))
        return keras.ops.image.resize(cam, self.image_input.shape[1:3], interpolation="bilinear")[..., 0]


class PredictorGradCAM:
    """Grad-CAM of a `Predictor`: its model's heat maps, or for a fold ensemble the mean of its
    models' maps, each model given the metadata as its own encoder encodes it.

    Args:
        predictor: an `evaluation.Predictor`.
    """

    def __init__(self, predictor):
        self.members = [(member, GradCAM(member.model)) for member in predictor.members]
        # An ensemble of configurations weighs each configuration alike, as its probabilities do.
        self.weights = predictor.weights

    def heatmaps(self, images, class_indices, metadata=None):
        """(n, size, size) heat maps in [0, 1] of the given classes (see `GradCAM.heatmaps`).

        Args:
            images: (n, size, size, 3) images as the model takes them.
            class_indices: the class explained for each image (e.g. the predicted one).
            metadata: the images' `age, sex, localization` table for metadata models; None: unknown.
        """
        maps = [
            cam.heatmaps(
                images, class_indices, [] if member.encoder is None else [member.encode(metadata, len(images))]
            )
            for member, cam in self.members
        ]
        if len(maps) == 1:
            return maps[0]
        mean = np.average(maps, axis=0, weights=self.weights)
        peak = mean.max(axis=(1, 2), keepdims=True)
        return np.divide(mean, peak, out=np.zeros_like(mean), where=peak > 0).astype(np.float32)


def last_feature_map_layer(model):
    """The layer of the map to explain: the last 4-D output at least `MIN_SIDE` positions wide
    that the rest of the model is computed from alone.

    Without one (a very small input), the last such output with more than one position. A branch
    of a multi-branch block (Inception's) is no such map: its siblings reach the output around it.
    """
    maps = [
        layer
        for layer in model.layers
        if not isinstance(layer, keras.layers.InputLayer) and len(layer.output.shape) == 4
    ]
    for smallest in (MIN_SIDE, 2):
        wide_enough = [
            layer
            for layer in maps
            if min(layer.output.shape[1] or smallest, layer.output.shape[2] or smallest) >= smallest
        ]
        for layer in reversed(wide_enough):
            if _cuts(model, layer):
                return layer
    raise ValueError(f"{model.name} has no convolutional feature map with more than one position for Grad-CAM")


def _cuts(model, layer):
    """Whether every path from the image to the output passes through the layer's output."""
    others = [tensor for tensor in model.inputs if len(tensor.shape) != 4]
    try:
        keras.Model([layer.output, *others], model.output)
    except ValueError:  # "not connected to inputs": a path goes around the layer
        return False
    return True


def _gradients(score, features):
    """d score(features) / d features with the backend's differentiation."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(features)
            value = score(features)
        return tape.gradient(value, features)
    if backend == "jax":
        import jax

        return jax.grad(score)(features)
    if backend == "torch":
        features = features.detach().requires_grad_(True)
        score(features).backward()
        return features.grad
    raise ValueError(f"Grad-CAM supports the tensorflow, jax and torch backends, not {backend}")


def overlay_heatmap(image, heatmap, alpha=0.45):
    """The image with the heat map blended over it in the "jet" colours; (h, w, 3) uint8.

    The heat map is resized to the image, so the overlay can be drawn on the full-size original.
    """
    image = np.asarray(image, dtype=np.uint8)
    heat = Image.fromarray(np.uint8(np.clip(heatmap, 0, 1) * 255)).resize(image.shape[1::-1], Image.Resampling.BILINEAR)
    colours = colormaps["jet"](np.asarray(heat) / 255.0)[..., :3] * 255
    return np.uint8(np.clip((1 - alpha) * image + alpha * colours, 0, 255))


def png_bytes(image):
    """An (h, w, 3) uint8 array encoded as PNG."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()

"""Custom Keras objects of the networks: resize layers, Dice loss and a thresholded IoU metric.

All are registered, so saved models load without extra arguments. Imported only by code that
builds, trains or loads networks (it imports TensorFlow).
"""

from __future__ import annotations

import keras
import tensorflow as tf

PACKAGE = "efficientcellseg"


@keras.saving.register_keras_serializable(package=PACKAGE)
class ResizeTo(keras.layers.Layer):
    """Bilinear resize to a fixed square size (a Layer: Keras 3 cannot resize symbolic tensors)."""

    def __init__(self, size: int, **kwargs):
        super().__init__(**kwargs)
        self.size = int(size)

    def call(self, x):
        return tf.image.resize(x, (self.size, self.size), method="bilinear")

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.size, self.size, input_shape[3])

    def get_config(self):
        return {**super().get_config(), "size": self.size}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ResizeLike(keras.layers.Layer):
    """Bilinear resize of the first input to the height and width of the second."""

    def call(self, inputs):
        x, reference = inputs
        return tf.image.resize(x, tf.shape(reference)[1:3], method="bilinear")

    def compute_output_shape(self, input_shapes):
        x, reference = input_shapes
        return (x[0], reference[1], reference[2], x[3])


@keras.saving.register_keras_serializable(package=PACKAGE)
def dice_loss(y_true, y_pred, smooth: float = 1.0):
    """Soft Dice loss (the paper's segmentation loss) of the whole batch; 0 is a perfect overlap.

    One overlap over all pixels of the batch, not a mean of per-image losses: the Dice loss of
    a single image without cells is ``sum(p) / (sum(p) + smooth)``, already ~1 for a few
    hundred false-positive pixels, so its gradient vanishes and such slices (the empty first
    and last slices of a stack, say) would never teach the network anything. Returned once per
    image, so that Keras' mean over the batch is the batch's Dice loss.
    """
    y_true = keras.ops.cast(y_true, y_pred.dtype)
    intersection = keras.ops.sum(y_true * y_pred)
    total = keras.ops.sum(y_true) + keras.ops.sum(y_pred)
    loss = 1.0 - (2.0 * intersection + smooth) / (total + smooth)
    return keras.ops.broadcast_to(loss, keras.ops.shape(y_pred)[:1])


@keras.saving.register_keras_serializable(package=PACKAGE)
class ThresholdedIoU(keras.metrics.Metric):
    """IoU of ``target > 0.5`` and ``prediction > 0.5`` accumulated over all pixels.

    Keras' BinaryIoU casts soft targets to integers, which breaks on the centre heatmaps.
    """

    def __init__(self, threshold: float = 0.5, name: str = "iou", **kwargs):
        super().__init__(name=name, **kwargs)
        self.threshold = threshold
        self.intersection = self.add_variable(shape=(), initializer="zeros", name="intersection")
        self.union = self.add_variable(shape=(), initializer="zeros", name="union")

    def update_state(self, y_true, y_pred, sample_weight=None):
        truth = keras.ops.cast(y_true > self.threshold, "float32")
        predicted = keras.ops.cast(y_pred > self.threshold, "float32")
        self.intersection.assign_add(keras.ops.sum(truth * predicted))
        self.union.assign_add(keras.ops.sum(keras.ops.maximum(truth, predicted)))

    def result(self):
        return keras.ops.divide_no_nan(self.intersection, self.union)

    def reset_state(self):
        self.intersection.assign(0.0)
        self.union.assign(0.0)

    def get_config(self):
        return {**super().get_config(), "threshold": self.threshold}

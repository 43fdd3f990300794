"""Custom Keras layers tflq's graph rewrites create: :class:`ScalarOp` (``x op constant``)
and :class:`LayerNormStep` (the integer-friendly steps of LayerNormalization)."""

from __future__ import annotations

__all__ = ["ScalarOp", "LayerNormStep"]


def _make_scalar_op_class():
    from tflq.models import tf, tf_keras

    class ScalarOp(tf_keras.layers.Layer):
        """``x (op) constant`` as a Keras layer: what a TFOpLambda such as MobileNetV3's
        ``x + 3.0`` computes, in a form tfmot's QuantizeWrapper can call."""

        def __init__(self, op: str, constant: float, **kwargs):
            super().__init__(**kwargs)
            self.op, self.constant = op, float(constant)

        def call(self, inputs, *args, **kwargs):  # the original call's constant is ignored
            c = tf.cast(self.constant, inputs.dtype)
            return {"add": lambda: inputs + c, "multiply": lambda: inputs * c,
                    "subtract": lambda: inputs - c, "divide": lambda: inputs / c}[self.op]()

        def get_config(self):
            return {**super().get_config(), "op": self.op, "constant": self.constant}

    return ScalarOp


ScalarOp = _make_scalar_op_class()


def _make_layer_norm_step():
    from tflq.models import tf, tf_keras

    class LayerNormStep(tf_keras.layers.Layer):
        """One step of a decomposed LayerNormalization over the last axis.

        ``mean``: mean over the last axis (keepdims); ``sub``: x − mean; ``square``: x·x;
        ``rsqrt``: 1/sqrt(max(x, floor)); ``mul``: x·r. Epsilon is added by a ScalarOp before
        rsqrt and is also rsqrt's floor: in float the floor never acts (x ≥ epsilon), in
        QAT it keeps a variance that rounds to 0 from making inf. Each step is its own layer so QAT
        quantizes every intermediate, as TFLite's int8 kernels need; γ and β become a 1×1
        depthwise convolution (int8 weights).
        """

        def __init__(self, step: str, floor: float = 0.0, **kwargs):
            super().__init__(**kwargs)
            if step not in ("mean", "sub", "square", "rsqrt", "mul"):
                raise ValueError(f"Unknown LayerNormStep step {step!r}.")
            self.step, self.floor = step, float(floor)

        def call(self, inputs):
            if self.step == "mean":
                return tf.reduce_mean(inputs, axis=-1, keepdims=True)
            if self.step == "sub":
                return inputs[0] - inputs[1]
            if self.step == "square":
                return inputs * inputs
            if self.step == "rsqrt":
                return tf.math.rsqrt(tf.maximum(inputs, self.floor))
            return inputs[0] * inputs[1]

        def get_config(self):
            return {**super().get_config(), "step": self.step, "floor": self.floor}

    return LayerNormStep


LayerNormStep = _make_layer_norm_step()



"""Float graph rewrites before QAT: BatchNormalization folded into the layer before it (or
turned into a 1x1 depthwise conv), scalar TFOpLambda ops replaced by :class:`ScalarOp`."""

from __future__ import annotations

import numpy as np

from tflq.quant.layers import ScalarOp

__all__ = ["fold_batch_norms", "replace_scalar_op_lambdas"]

_FOLDABLE = {"Conv2D", "DepthwiseConv2D", "Dense", "Conv2DTranspose"}


def _bn_scale_shift(bn):
    gamma = bn.gamma.numpy() if bn.gamma is not None else 1.0
    beta = bn.beta.numpy() if bn.beta is not None else 0.0
    scale = gamma / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
    return scale, beta - bn.moving_mean.numpy() * scale


def _producer(layer):
    nodes = layer._inbound_nodes
    if len(nodes) != 1:
        return None
    inbound = nodes[0].inbound_layers
    return inbound if not isinstance(inbound, (list, tuple)) else (
        inbound[0] if len(inbound) == 1 else None)


def _normalization_affine(layer):
    """(scale, shift) per channel of a Keras ``Normalization`` layer over the last axis of a
    4-D tensor (x·scale + shift = (x − mean)/max(√var, ε)); None for any other layer."""
    if type(layer).__name__ != "Normalization" or len(layer.input_shape) != 4:
        return None
    axis = tuple(a % 4 for a in layer.axis)
    if axis != (3,) or getattr(layer, "invert", False):
        return None
    from tflq.models import tf_keras

    channels = layer.input_shape[-1]
    mean = np.broadcast_to(np.asarray(layer.mean, np.float32).reshape(-1), (channels,))
    variance = np.broadcast_to(np.asarray(layer.variance, np.float32).reshape(-1), (channels,))
    scale = 1.0 / np.maximum(np.sqrt(variance), tf_keras.backend.epsilon())
    return scale.astype(np.float32), (-mean * scale).astype(np.float32)


def _fold_plan(model) -> dict:
    """layer name -> ("fold_into", bn) | ("folded", producer) | ("depthwise", bn)."""
    plan = {}
    for layer in model.layers:
        if type(layer).__name__ == "Rescaling" and len(layer.input_shape) == 4:
            plan[layer.name] = ("depthwise", layer)  # x·scale + offset: a per-channel affine
            continue
        if _normalization_affine(layer) is not None:
            plan[layer.name] = ("depthwise", layer)  # (x − mean)/std: a per-channel affine
            continue
        if type(layer).__name__ != "BatchNormalization":
            continue
        axis = layer.axis[0] if isinstance(layer.axis, (list, tuple)) else layer.axis
        rank = len(layer.input_shape)
        if axis not in (-1, rank - 1):
            continue
        producer = _producer(layer)
        if (producer is not None and type(producer).__name__ in _FOLDABLE
                and len(producer._outbound_nodes) == 1
                and getattr(producer.activation, "__name__", "linear") == "linear"
                and producer.name not in plan):
            plan[producer.name] = ("fold_into", layer)
            plan[layer.name] = ("folded", producer)
        elif rank == 4:
            plan[layer.name] = ("depthwise", layer)
    return plan


def fold_batch_norms(model):
    """Folds inference-mode BatchNormalization into the layer before it.

    ``Conv2D``/``DepthwiseConv2D``/``Conv2DTranspose``/``Dense`` followed only by a
    BatchNormalization (last axis) absorb its scale and shift into kernel and bias; the BN
    becomes a linear ``Activation`` (a pass-through). A BatchNormalization on a 4-D tensor
    after anything else, and a ``Rescaling`` or ``Normalization`` of a 4-D tensor, become a 1×1
    ``DepthwiseConv2D`` with the same per-channel affine map, so they quantize like any
    other weight layer (their float constants would otherwise stay in float). Float outputs
    are unchanged up to float rounding.
    """
    from tflq.models import tf_keras

    layers = tf_keras.layers
    plan = _fold_plan(model)
    if not plan:
        return model

    def clone(layer):
        action = plan.get(layer.name, (None,))[0]
        if action == "fold_into":
            config = layer.get_config()
            config["use_bias"] = True
            return layer.__class__.from_config(config)
        if action == "folded":
            return layers.Activation("linear", name=layer.name)
        if action == "depthwise":
            return layers.DepthwiseConv2D(1, use_bias=True, name=layer.name)
        return layer.__class__.from_config(layer.get_config())

    folded = tf_keras.models.clone_model(model, clone_function=clone)
    for layer in model.layers:
        if type(layer).__name__ == "InputLayer":
            continue
        target = folded.get_layer(layer.name)
        action, other = plan.get(layer.name, (None, None))
        if action == "fold_into":
            scale, shift = _bn_scale_shift(other)
            weights = layer.get_weights()
            kernel = weights[0]
            bias = weights[1] if layer.use_bias else np.zeros_like(shift)
            kind = type(layer).__name__
            if kind == "DepthwiseConv2D":
                h, w, cin, mult = kernel.shape
                kernel = kernel * scale.reshape(cin, mult)
            elif kind == "Conv2DTranspose":
                kernel = kernel * scale.reshape(1, 1, -1, 1)
            else:
                kernel = kernel * scale
            target.set_weights([kernel, bias * scale + shift])
        elif action == "depthwise":
            if _normalization_affine(layer) is not None:
                scale, shift = _normalization_affine(layer)
            elif type(layer).__name__ == "Rescaling":
                channels = layer.input_shape[-1]
                scale = np.broadcast_to(np.asarray(layer.scale, np.float32), (channels,))
                shift = np.broadcast_to(np.asarray(layer.offset, np.float32), (channels,))
            else:
                scale, shift = _bn_scale_shift(layer)
            target.set_weights([np.reshape(scale, (1, 1, -1, 1)), np.asarray(shift)])
        elif action != "folded":
            target.set_weights(layer.get_weights())
    return folded


_SCALAR_OPS = {"__operators__.add": "add", "math.add": "add", "math.multiply": "multiply",
               "math.subtract": "subtract", "__operators__.sub": "subtract",
               "math.truediv": "divide", "__operators__.truediv": "divide"}


def _scalar_op_for(layer):
    if type(layer).__name__ != "TFOpLambda" or len(layer._inbound_nodes) != 1:
        return None
    op = _SCALAR_OPS.get(layer.get_config().get("function"))
    node = layer._inbound_nodes[0]
    args = list(node.call_args)
    constant = args[1] if len(args) == 2 else node.call_kwargs.get("y")
    if op is None or not isinstance(constant, (int, float)) or isinstance(constant, bool):
        return None
    return ScalarOp(op, constant, name=layer.name)


def replace_scalar_op_lambdas(model):
    """Replaces TFOpLambda layers of the form ``x (+ − × ÷) constant`` with :class:`ScalarOp`
    layers (same function, wrappable for QAT). Other TFOpLambda layers stay as they are."""
    from tflq.models import tf_keras

    if not any(_scalar_op_for(layer) is not None for layer in model.layers):
        return model

    def clone(layer):
        replacement = _scalar_op_for(layer)
        return replacement if replacement is not None else layer.__class__.from_config(
            layer.get_config())

    replaced = tf_keras.models.clone_model(model, clone_function=clone)
    replaced.set_weights(model.get_weights())
    return replaced



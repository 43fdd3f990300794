"""Per-tensor int8 weight ranges chosen for the smallest layer output error.

The converter's per-tensor int8 weight scale is max|W| / 127: one outlier channel sets the
grid of all the others. In a pretrained MobileNetV2 (nsfwjs) the first depthwise has
channels whose kernels reach 33.5 and 11 while the live ones span 0.3–4; ReLU6 clips those
two channels' outputs anyway, and cross-layer equalization may not rescale them (that
would move the clip). Clipping the float kernel to ±T = ratio · max|W| before conversion
moves the converter's scale to T / 127 (it reads max|W| of the clipped kernel): the large
weights lose what ReLU6 would have cut, the small ones gain levels.

For every Conv2D/DepthwiseConv2D/Dense of a prepared (BatchNorm-folded) model, in graph
order, each ratio in :data:`RATIOS` is tried: the kernel clipped and rounded to the
per-tensor int8 grid, the layer's *activated* output (its own activation, then the ReLU /
elementwise Activation layers that follow it alone; logits for softmax) compared with the
unclipped float output on the calibration inputs. The ratio with the smallest squared
error is kept (1.0, no clipping, is a candidate: never worse on that data). Bias correction
(:func:`tflq.ptq.equalize.bias_correct` with ``reference``) then removes the mean shift of
clipping and rounding together.
"""

from __future__ import annotations

import numpy as np

from tflq.ptq.equalize import quantize_weights

__all__ = ["RATIOS", "clip_per_tensor"]

# Candidate T / max|W|, 1.0 = no clipping (finer below 0.3: outliers 5–10× the rest occur).
RATIOS = tuple(float(r) for r in np.round(np.concatenate(
    [np.arange(1.0, 0.33, -0.05), np.arange(0.3, 0.05, -0.02)]), 3))
_WEIGHT = ("Conv2D", "DepthwiseConv2D", "Dense")
_NOT_ELEMENTWISE = ("softmax", "log_softmax")


def _activation_chain(layer) -> list:
    """The ReLU / elementwise Activation layers applied to ``layer``'s output alone, up to
    and including the first ReLU (folded BatchNorms leave linear Activations before it)."""
    chain, current = [], layer
    while len(current._outbound_nodes) == 1:
        nxt = current._outbound_nodes[0].outbound_layer
        kind = type(nxt).__name__
        if kind not in ("ReLU", "Activation") or (
                kind == "Activation" and nxt.get_config()["activation"] in _NOT_ELEMENTWISE):
            break
        chain.append(nxt)
        if kind == "ReLU":
            break
        current = nxt
    return chain


def _activated(activation, twin, chain, x):
    """The activated output on ``x`` of the layer ``twin`` copies (linear): its own
    ``activation`` (None for softmax: logits), then the ``chain`` of layers after it."""
    out = twin(x)
    if activation is not None:
        out = activation(out)
    for following in chain:
        out = following(out)
    return np.asarray(out)


def clip_per_tensor(model, batches, max_samples: int = 64, progress=None) -> dict:
    """Clips every weight layer's kernel of the prepared tf_keras ``model`` in place to the
    per-tensor range with the smallest activated output error (see the module docstring).

    Args:
      model: a prepared (BatchNorm-folded, inlined) tf_keras model; changed in place.
      batches: callable returning an iterator of input batches.
      max_samples: calibration samples used (the first ones).
      progress: shows progress per layer (as in :func:`tflq.ptq.adaround.apply`), or None.

    Returns:
      ``{"layers": [{"layer", "ratio", "error_unclipped", "error_clipped"}],
      "clipped_layers": n, "originals": {layer: kernel before clipping}}`` (errors: mean
      squared activated-output error with per-tensor int8 weights).
    """
    from tflq.models import tf_keras
    from tflq.sampling import first_samples

    data = first_samples(batches, max_samples)
    record = {"layers": [], "clipped_layers": 0, "originals": {}}
    layers = [layer for layer in model.layers if type(layer).__name__ in _WEIGHT]
    bar = progress("weight clipping", len(layers), "layer") if progress else None
    for layer in (bar(layers) if bar else layers):
        kind = type(layer).__name__
        x = np.asarray(tf_keras.Model(model.inputs, layer.input)(data, training=False))
        kernel, *rest = layer.get_weights()
        config = layer.get_config()
        twin = layer.__class__.from_config({**config, "activation": "linear",
                                            "name": f"{layer.name}_clip_twin"})
        twin(x[:1])
        twin.set_weights([kernel, *rest])
        name = config.get("activation", "linear")
        activation = None if name in _NOT_ELEMENTWISE else tf_keras.activations.get(name)
        chain = _activation_chain(layer)
        target = _activated(activation, twin, chain, x)
        top = float(np.abs(kernel).max())
        errors = []
        for ratio in RATIOS:
            clipped = np.clip(kernel, -ratio * top, ratio * top)
            twin.set_weights([quantize_weights(clipped, kind, per_channel=False), *rest])
            errors.append(float(np.sum((_activated(activation, twin, chain, x) - target) ** 2)))
        best = int(np.argmin(errors))
        record["layers"].append({"layer": layer.name, "ratio": RATIOS[best],
                                 "error_unclipped": errors[0] / target.size,
                                 "error_clipped": errors[best] / target.size})
        if RATIOS[best] < 1.0:
            record["originals"][layer.name] = kernel
            layer.set_weights([np.clip(kernel, -RATIOS[best] * top, RATIOS[best] * top), *rest])
            record["clipped_layers"] += 1
    return record

"""Preflight: what in a model will hurt int8 quantization, found before converting, each
finding with a suggested fix.

Checks (:func:`run`):

* ``per_tensor_collapse``: weight layers whose output channels span very different ranges
  (largest / smallest channel max |w| above ``channel_ratio``): with per-tensor scales the
  small channels round to a few levels (typical for depthwise convs after BatchNorm);
* ``weight_outliers``: weights whose max |w| is far above their 99.9th percentile;
* ``activation_outliers`` (with data): layer outputs whose observed range is far wider
  than their 99.99th-percentile range, so min/max calibration wastes most int8 levels;
* ``unfused_activation``: activations TFLite cannot fuse into the op before them (swish,
  gelu, elu, leaky ReLU, …), which cost a separate int8 op and a re-quantization;
* ``float_ops``: ops left in float by a full-integer conversion (no int8 kernel);
* ``input_range``: calibration data whose value range does not look like what the model's
  first layers expect (0..255 pixels into a model without a Rescaling, or the reverse), or
  evaluation data outside the calibration range.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["Finding", "layer_graph", "weight_findings", "activation_findings", "data_findings", "input_findings",
    "static_findings", "run"]

_WEIGHT_TYPES = {"Conv1D", "Conv2D", "DepthwiseConv2D", "Dense", "Conv2DTranspose",
                 "SeparableConv2D"}
_FUSABLE = {"linear", "relu", "relu6", "tanh", None}


@dataclasses.dataclass(frozen=True)
class Finding:
    kind: str
    layer: str
    detail: str
    fix: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _channel_ranges(layer) -> np.ndarray | None:
    kernel = layer.get_weights()[0] if layer.get_weights() else None
    if kernel is None or kernel.ndim < 2:
        return None
    if type(layer).__name__ == "DepthwiseConv2D":
        h, w, c, m = kernel.shape
        return np.abs(kernel.reshape(h, w, c * m)).max(axis=(0, 1))
    if type(layer).__name__ == "Conv2DTranspose":
        return np.abs(kernel).max(axis=(0, 1, 3))
    return np.abs(kernel.reshape(-1, kernel.shape[-1])).max(axis=0)


def _effective_layers(model):
    """Weight layers with BatchNorm folded in (what the converter quantizes)."""
    from tflq.quant import fold

    return fold.fold_batch_norms(model).layers


def weight_findings(model, channel_ratio: float = 100.0,
                    outlier_ratio: float = 10.0) -> list[Finding]:
    findings = []
    for layer in _effective_layers(model):
        kind = type(layer).__name__
        if kind not in _WEIGHT_TYPES or not layer.get_weights():
            continue
        ranges = _channel_ranges(layer)
        if ranges is not None and ranges.size > 1:
            positive = ranges[ranges > 0]
            ratio = float(positive.max() / positive.min()) if positive.size else 0.0
            if ratio > channel_ratio:
                findings.append(Finding(
                    "per_tensor_collapse", layer.name,
                    f"{kind} output-channel weight ranges differ {ratio:.0f}x (max |w| "
                    f"{positive.max():.3g} vs {positive.min():.3g})",
                    "keep per-channel weights (the default; avoid --per_tensor) or equalize "
                    "the layer pair (tflq.ptq.equalize.equalize)"))
        w = np.abs(layer.get_weights()[0]).ravel()
        p999 = float(np.percentile(w, 99.9)) if w.size >= 1000 else float(w.max())
        if p999 > 0 and w.max() / p999 > outlier_ratio:
            findings.append(Finding(
                "weight_outliers", layer.name,
                f"max |w| {w.max():.3g} is {w.max() / p999:.0f}x the 99.9th percentile "
                f"({p999:.3g})",
                "train with weight decay or clip the outliers; QAT (pipelines.qat) learns "
                "around them"))
    return findings


def activation_findings(model) -> list[Finding]:
    findings = []
    layers = model.layers
    for layer in layers:
        kind = type(layer).__name__
        activation = getattr(getattr(layer, "activation", None), "__name__", None)
        if kind in _WEIGHT_TYPES and activation not in _FUSABLE:
            findings.append(Finding(
                "unfused_activation", layer.name,
                f"{kind} with activation {activation!r}: TFLite runs it as separate ops "
                "after the layer (an extra int8 tensor to re-quantize)",
                "use relu or relu6 (fused for free) or hard_swish instead of swish"))
        if kind in ("LeakyReLU", "ELU") or (kind == "Activation" and activation in (
                "swish", "gelu", "elu", "selu", "softplus")):
            findings.append(Finding(
                "unfused_activation", layer.name,
                f"{kind}{f'({activation})' if activation else ''} cannot be fused into the "
                "op before it",
                "use ReLU/ReLU6 where accuracy allows; otherwise keep it (it runs in int8 "
                "as its own op)"))
    return findings


def data_findings(model, batches, outlier_ratio: float = 10.0,
                  max_layers: int = 200) -> tuple[list[Finding], dict]:
    """Activation outliers per layer output, from calibration batches (a callable returning
    an iterator of input arrays or dicts). Returns (findings, per-layer stats)."""
    from tflq.ptq import ranges

    names = [layer.name for layer in model.layers[1:max_layers]
             if type(layer).__name__ != "InputLayer"]
    hists = ranges.collect(model, batches, names, bins=4096)
    findings, stats = [], {}
    for name, hist in hists.items():
        lo, hi = ranges.estimate(hist, "minmax")
        plo, phi = ranges.estimate(hist, "percentile", percentile=99.99)
        width, core = hi - lo, phi - plo
        stats[name] = {"min": lo, "max": hi, "p99_99_min": plo, "p99_99_max": phi}
        if core > 0 and width / core > outlier_ratio:
            findings.append(Finding(
                "activation_outliers", name,
                f"output range [{lo:.3g}, {hi:.3g}] is {width / core:.0f}x its 99.99% range "
                f"[{plo:.3g}, {phi:.3g}]: min/max calibration leaves few int8 levels for "
                "most values",
                "calibrate with a percentile or mse range estimator (tflq.ptq.ranges), or "
                "bound the activation (ReLU6)"))
    return findings, stats


def input_findings(model, calibration: np.ndarray,
                   evaluation: np.ndarray | None = None) -> list[Finding]:
    findings = []
    lo, hi = float(np.min(calibration)), float(np.max(calibration))
    first = [type(layer).__name__ for layer in model.layers[:4]]
    rescales = any(k in ("Rescaling", "Normalization") for k in first)
    if hi > 10 and not rescales:
        findings.append(Finding(
            "input_range", "input",
            f"calibration data spans [{lo:.3g}, {hi:.3g}] (raw pixels?) but the model has no "
            "Rescaling/Normalization layer at its input",
            "scale the data the way the model was trained (pipelines.convert --normalize "
            "0_1 for IDX/image data) or add a Rescaling layer"))
    if rescales and hi <= 1.0 and lo >= -1.0 and any(k == "Rescaling" for k in first):
        findings.append(Finding(
            "input_range", "input",
            f"calibration data spans [{lo:.3g}, {hi:.3g}] but the model rescales its input "
            "itself (it probably expects 0..255)",
            "feed raw pixel values (--normalize none)"))
    if evaluation is not None:
        elo, ehi = float(np.min(evaluation)), float(np.max(evaluation))
        span = max(hi - lo, 1e-12)
        if elo < lo - 0.5 * span or ehi > hi + 0.5 * span:
            findings.append(Finding(
                "input_range", "input",
                f"evaluation data spans [{elo:.3g}, {ehi:.3g}], far outside the calibration "
                f"range [{lo:.3g}, {hi:.3g}]",
                "calibrate on data drawn like the data the model will see"))
    return findings


def layer_graph(loaded):
    """The tf_keras layer graph the checks read: the model itself (tf_keras), the checked
    tf_keras rebuild of a Keras 3 model once :meth:`tflq.models.LoadedModel.prepare_conversion`
    or ``to_tf_keras`` has checked it (cached, so no samples are needed here), else None."""
    from tflq.models import tf_keras

    model = loaded.keras_model
    if loaded.flavor == "keras3" and loaded.rebuild_notes:
        model = loaded.to_tf_keras([])
    if not isinstance(model, tf_keras.Model) or not model._is_graph_network:
        return None
    return model


def static_findings(loaded) -> list[Finding]:
    """The checks that need no data (weights, activations) on :func:`layer_graph`; one
    ``skipped`` finding saying why when there is no layer graph to read."""
    model = layer_graph(loaded)
    if model is None:
        why = (loaded.conversion_route or "no tf_keras rebuild was checked") \
            if loaded.flavor == "keras3" else f"a {loaded.flavor} model has no Keras layers"
        return [Finding("skipped", "(model)", "weight, activation and data checks need a Keras "
                        f"layer graph: {why}", "bring the Keras model file (.keras / .h5)")]
    return weight_findings(model) + activation_findings(model)


def run(loaded, calibration: dict | None = None, evaluation: dict | None = None,
        workdir: str | None = None) -> dict:
    """Every check on a loaded model (:class:`tflq.models.LoadedModel`).

    Args:
      calibration / evaluation: {input name: array (N, ...)}; without calibration data the
        float-op check calibrates on random normal data (fine for finding ops without int8
        kernels, meaningless for ranges) and the data checks are skipped.

    Returns {"findings": [...], "float_ops": [...], "activation_stats": {...}}.
    """
    import shutil
    import tempfile

    from tflq import options
    from tflq.ptq import convert

    names = loaded.input_names
    if calibration is None:
        rng = np.random.default_rng(0)
        samples = [{s.name: rng.normal(size=(1, *[d or 1 for d in s.shape])).astype(
            np.float32) for s in loaded.inputs} for _ in range(8)]
    else:
        count = len(next(iter(calibration.values())))
        samples = [{n: calibration[n][i:i + 1] for n in names} for i in range(min(count, 200))]
    loaded.prepare_conversion(samples)  # a Keras 3 model: its checked tf_keras rebuild
    findings = static_findings(loaded)
    scratch = workdir or tempfile.mkdtemp(prefix="tflq-preflight-")
    try:
        conversion = convert.convert_model(
            loaded, "int8", scratch, representative=lambda: iter(samples),
            options=options.ConvertOptions(allow_float_ops=True))
    finally:
        if workdir is None:
            shutil.rmtree(scratch, ignore_errors=True)
    for op in conversion.float_ops:
        findings.append(Finding("float_ops", op, f"{op} has no int8 kernel here and runs in "
                                "float in a full-integer model",
                                "replace the layer with an int8-capable one, or accept float "
                                "ops (--allow_float_ops) where the target allows it"))
    stats = {}
    model = layer_graph(loaded)
    if calibration is not None and model is not None:
        data_batch = calibration if len(names) > 1 else calibration[names[0]]

        def batches():
            return iter([data_batch])

        found, stats = data_findings(model, batches)
        findings += found
        first = calibration[names[0]]
        other = evaluation[names[0]] if evaluation is not None else None
        findings += input_findings(model, first, other)
    return {"findings": [f.to_dict() for f in findings], "float_ops": list(conversion.float_ops),
            "activation_stats": stats}



"""Every read of a .tflite file: ops and the ops left in float, int8 weights against a QAT
model's, per-layer weight statistics and sizes."""

from __future__ import annotations

import gzip
import re

import numpy as np

__all__ = ["ops_details", "tflite_layout", "int8_weight_tensors", "weight_requantization",
           "find_float_ops", "quantize_islands", "gzip_size", "weight_stats"]


def ops_details(interpreter) -> list[dict]:
    """The op list of a LiteRT interpreter (``op_name``, ``index``, ``inputs``, ``outputs``).

    LiteRT exposes it only as a private method; this is the one place tflq calls it.
    """
    return interpreter._get_ops_details()


def tflite_layout(kind: str, kernel: np.ndarray) -> np.ndarray:
    """A Keras kernel in the layout TFLite stores it (output channels first; depthwise
    (1, h, w, c·m); Dense transposed)."""
    if kind in ("Conv2D",):
        return kernel.transpose(3, 0, 1, 2)
    if kind == "Conv2DTranspose":
        return kernel.transpose(2, 0, 1, 3)
    if kind == "DepthwiseConv2D":
        h, w, cin, mult = kernel.shape
        return kernel.reshape(1, h, w, cin * mult)
    if kind == "Dense":
        return kernel.T
    return kernel


def int8_weight_tensors(content: bytes) -> list[dict]:
    """Every constant int8 tensor of a .tflite with at least 2 dimensions (the weights):
    ``name``, ``codes`` (int8 array), ``scales``, ``zero_points``, ``axis``."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=content)
    found = []
    for detail in interp.get_tensor_details():
        if np.dtype(detail["dtype"]) != np.int8 or len(detail["shape"]) < 2:
            continue
        try:
            codes = interp.get_tensor(detail["index"])
        except ValueError:  # not a constant: activations have no data before invoke
            continue
        params = detail["quantization_parameters"]
        found.append({"name": detail["name"], "codes": np.array(codes),
                      "scales": np.asarray(params["scales"], np.float64),
                      "zero_points": np.asarray(params["zero_points"]),
                      "axis": int(params["quantized_dimension"])})
    return found


def weight_requantization(model, content: bytes) -> list[dict]:
    """Per quantized kernel: the QAT model's fake-quantized weights against the int8 weights
    the .tflite actually holds (dequantized). ``max_abs_error`` 0 means the scheme deployed
    exactly; otherwise this is what the converter's re-quantization cost. An LSTM's kernel is
    compared gate by gate with the four matrices of its ``UNIDIRECTIONAL_SEQUENCE_LSTM`` (the
    i-th LSTM layer with the i-th such op)."""
    from ai_edge_litert.interpreter import Interpreter

    from tflq import metrics

    interp = Interpreter(model_content=content)
    tensors = [t for t in interp.get_tensor_details() if np.dtype(t["dtype"]) == np.int8]
    lstm_ops = [op for op in ops_details(interp) if op["op_name"] == "UNIDIRECTIONAL_SEQUENCE_LSTM"]
    rows = []
    for layer in model.layers:
        inner = getattr(layer, "layer", None)
        if inner is None:
            continue
        kind = type(inner).__name__
        op = lstm_ops.pop(0) if kind == "LSTM" and lstm_ops else None  # in layer order
        for weight, quantizer, quantizer_vars in getattr(layer, "_weight_vars", []):
            fake = np.asarray(quantizer(weight, training=False, weights=quantizer_vars))
            short = weight.name.split("/")[-1]
            if kind == "LSTM":  # per gate: TFLite's (units, inputs) matrices, op inputs 1-4, 5-8
                gates = np.split(fake, 4, axis=-1)
                found = ([] if op is None else
                         op["inputs"][5:9] if short.startswith("recurrent") else op["inputs"][1:5])
                pairs = [(g.T, interp.get_tensor_details()[i]) for g, i in zip(gates, found, strict=False)]
            else:
                expected = tflite_layout(kind, fake)
                tokens = lambda name: set(re.split(r"[/;:]", name))  # noqa: E731
                found = [t for t in tensors if layer.name in tokens(t["name"])
                         and tuple(t["shape"]) == expected.shape] or [
                    t for t in tensors if inner.name in tokens(t["name"])  # calibrated deploy
                    and tuple(t["shape"]) == expected.shape]
                pairs = [(expected, found[0])] if len(found) == 1 else []
            row = {"layer": inner.name, "type": kind, "weight": short,
                   "shape": list(tflite_layout(kind, fake).shape)}
            if not pairs:
                rows.append({**row, "found": False})
                continue
            expected = np.concatenate([e.ravel() for e, _ in pairs])
            deployed = np.concatenate([_dequantized(interp, d).ravel() for _, d in pairs])
            error = np.abs(deployed - expected)
            row.update(found=True, max_abs_error=float(error.max()),
                       sqnr_db=metrics.sqnr_db(expected[None], deployed[None]),
                       exact=bool(np.allclose(deployed, expected, rtol=0, atol=1e-7 * max(
                           1.0, float(np.abs(expected).max())))))
            rows.append(row)
    return rows


def _dequantized(interp, detail) -> np.ndarray:
    """A constant int8 tensor of the interpreter, dequantized (per channel where it is)."""
    params = detail["quantization_parameters"]
    codes = interp.get_tensor(detail["index"]).astype(np.float64)
    shape = [1] * codes.ndim
    shape[params["quantized_dimension"]] = -1
    scales = np.asarray(params["scales"], np.float64)
    zeros = np.asarray(params["zero_points"], np.float64)
    if scales.size > 1:
        scales, zeros = scales.reshape(shape), zeros.reshape(shape)
    return (codes - zeros) * scales


# Boundary ops that convert between float and integer I/O; not compute left in float.
_BOUNDARY_OPS = frozenset({"QUANTIZE", "DEQUANTIZE"})


_FLOAT_DTYPES = (np.float32, np.float16, np.float64)


def find_float_ops(content: bytes) -> list[str]:
    """Lists the compute ops that run in float in a .tflite (``NAME#index``).

    An op counts as float when any of its input or output tensors is a float tensor;
    QUANTIZE/DEQUANTIZE at the model's boundary convert I/O and are not counted, nor is a
    CAST from a float model input to an integer type (token ids declared float32 and cast
    for an Embedding lookup: an input conversion, no float arithmetic).
    """
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    model_inputs = {int(d["index"]) for d in interpreter.get_input_details()}
    found = []
    for op in ops_details(interpreter):
        name = op["op_name"]
        if name in _BOUNDARY_OPS or (
                name == "CAST" and {int(i) for i in op["inputs"]} <= model_inputs
                and all(np.dtype(tensors[int(i)]["dtype"]).kind in "iu" for i in op["outputs"])):
            continue
        indices = [int(i) for i in list(op["inputs"]) + list(op["outputs"]) if int(i) >= 0]
        if any(i in tensors and tensors[i]["dtype"] in _FLOAT_DTYPES for i in indices):
            found.append(f"{name}#{op['index']}")
    return found


def quantize_islands(content: bytes) -> dict:
    """Where float ops split an integer graph: the QUANTIZE (float to integer) and DEQUANTIZE
    ops inserted between ops (not those converting the model's own inputs and outputs, nor
    DEQUANTIZE of constant weights as float16 and dynamic-range models hold them, nor
    integer-to-integer requantization), and the float compute ops on the other side of them
    (the ops responsible), as ``NAME#index`` and counted by op type.

    Returns:
      ``{"quantize": n, "dequantize": n, "float_ops": [...], "by_type": {op: count}}``.
    """
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content)
    dtypes = {t["index"]: t["dtype"] for t in interpreter.get_tensor_details()}
    ops = ops_details(interpreter)
    produced = {int(t): op for op in ops for t in op["outputs"] if int(t) >= 0}
    consumers: dict[int, list] = {}
    for op in ops:
        for t in op["inputs"]:
            consumers.setdefault(int(t), []).append(op)
    model_io = {d["index"] for d in interpreter.get_input_details()} | {
        d["index"] for d in interpreter.get_output_details()}
    counts = {"QUANTIZE": 0, "DEQUANTIZE": 0}
    responsible: dict[int, dict] = {}
    for op in ops:
        if op["op_name"] not in counts or not len(op["inputs"]):
            continue
        source, target = int(op["inputs"][0]), int(op["outputs"][0])
        float_side = source if op["op_name"] == "QUANTIZE" else target
        if (source in model_io or target in model_io or source not in produced
                or dtypes.get(float_side) not in _FLOAT_DTYPES):
            continue  # the model's I/O, a constant's dequantization, or a requantization
        counts[op["op_name"]] += 1
        near = [produced[source]] if op["op_name"] == "QUANTIZE" else consumers.get(target, [])
        responsible.update({other["index"]: other for other in near
                            if other["op_name"] not in _BOUNDARY_OPS})
    by_type: dict[str, int] = {}
    for i in sorted(responsible):
        by_type[responsible[i]["op_name"]] = by_type.get(responsible[i]["op_name"], 0) + 1
    return {"quantize": counts["QUANTIZE"], "dequantize": counts["DEQUANTIZE"],
            "float_ops": [f"{responsible[i]['op_name']}#{i}" for i in sorted(responsible)],
            "by_type": by_type}


_WEIGHT_INPUT = {"CONV_2D": 1, "DEPTHWISE_CONV_2D": 1, "FULLY_CONNECTED": 1, "TRANSPOSE_CONV": 1}


def gzip_size(content: bytes) -> int:
    """Size after ``gzip -9``: what a compressed download or APK asset costs."""
    return len(gzip.compress(content, compresslevel=9, mtime=0))


def weight_stats(content: bytes) -> list[dict]:
    """Per int8 weight tensor of CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED /
    TRANSPOSE_CONV in a .tflite: sparsity (codes equal to the zero point), unique codes in
    the tensor and at most in one output channel, and 2:4 compliance along input channels.
    Read through the interpreter: this is what ships, not what Keras held."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=content)
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    rows, seen = [], set()
    for op in ops_details(interp):
        slot = _WEIGHT_INPUT.get(op["op_name"])
        if slot is None or len(op["inputs"]) <= slot:
            continue
        index = int(op["inputs"][slot])
        detail = tensors.get(index)
        if detail is None or np.dtype(detail["dtype"]) != np.int8 or index in seen:
            continue
        seen.add(index)
        try:
            codes = interp.get_tensor(index)
        except ValueError:  # not a constant buffer
            continue
        zero_points = np.asarray(detail["quantization_parameters"]["zero_points"])
        zero = int(zero_points.ravel()[0]) if zero_points.size else 0
        channel_axis = 3 if op["op_name"] == "DEPTHWISE_CONV_2D" else 0
        per_channel = np.moveaxis(codes, channel_axis, 0).reshape(codes.shape[channel_axis], -1)
        row = {
            "op": f"{op['op_name']}#{op['index']}", "tensor": detail["name"],
            "shape": [int(s) for s in codes.shape], "weights": int(codes.size),
            "sparsity": float(np.mean(codes == zero)),
            "unique_values": int(np.unique(codes).size),
            "max_unique_per_channel": int(max(np.unique(c).size for c in per_channel)),
        }
        if op["op_name"] in ("CONV_2D", "FULLY_CONNECTED") and codes.shape[-1] % 4 == 0:
            groups = (codes == zero).reshape(-1, 4).sum(axis=1)
            row["two_four_compliant"] = bool(np.all(groups >= 2))
        rows.append(row)
    return rows



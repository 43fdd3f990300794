"""Per-layer error of a quantized .tflite against the float32 .tflite of the same model.

Two views, as TFLite's QuantizationDebugger gives them:

* **cumulative** — the real quantized model runs on a sample; every op's output is
  dequantized and compared with the float32 .tflite's tensor of the matching op (both run
  with every intermediate tensor preserved). Errors of earlier ops flow into later ones.
* **per-layer** (``layer_*`` fields) — every op of the quantized model runs alone, fed the
  float model's tensors at its inputs, quantized with the quantized model's own input scale
  and zero point. This isolates what the op itself adds: its weight quantization, its
  integer arithmetic and the rounding/clipping of its output. The isolated ops come from a
  rewritten copy of the quantized .tflite (:func:`isolate_ops`) that gives each op private
  input tensors; weights and constants stay as they are.

Ops are matched between the two models by aligning their sequences of (op type, output
shape), QUANTIZE/DEQUANTIZE left out (:func:`match_ops`); the TFLite converter, LiteRT
Quantizer and QAT conversions keep the op order of the float graph. Both models run on
TFLite's builtin kernels without the XNNPACK delegate, whose fused partitions would hide
the intermediate tensors.

Metrics per op (over all samples): SQNR in dB, RMSE in units of the output quantization
step (``rmse_over_scale``), the range the quantized output can represent
(``scale·(qmin − zp) … scale·(qmax − zp)``) against the float range observed, and the share
of float values the grid clips (beyond half a step outside that range).
"""

from __future__ import annotations

import copy
import difflib
import math
import time
from collections.abc import Iterable, Mapping

import numpy as np

__all__ = ["METHOD", "DEFAULT_SAMPLES", "preserving_interpreter", "match_ops", "isolate_ops", "measure"]

DEFAULT_SAMPLES = 16

METHOD = ("cumulative: the quantized .tflite's op outputs (dequantized) against the float32 "
          ".tflite's matching tensors; per-layer (layer_*): each quantized op run alone on the "
          "float model's input tensors quantized with its own input scale/zero point; builtin "
          "kernels, no XNNPACK")

_BOUNDARY = frozenset({"QUANTIZE", "DEQUANTIZE"})
_CONTROL_FLOW = frozenset({"WHILE", "IF", "CALL_ONCE", "CALL"})


def preserving_interpreter(content: bytes):
    """A LiteRT interpreter of ``content`` that keeps every intermediate tensor readable."""
    import warnings

    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    with warnings.catch_warnings():  # "preserve_all_tensors is for debugging": it is
        warnings.simplefilter("ignore")
        interp = Interpreter(
            model_content=bytes(content), experimental_preserve_all_tensors=True,
            experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interp.allocate_tensors()
    return interp


def _invoke(interp) -> None:
    """Invokes from a zero state: a fused LSTM keeps its state in variable tensors that would
    otherwise carry over from the previous sample (Keras's ``stateful=False`` starts at 0)."""
    interp.reset_all_variables()
    interp.invoke()


def _compute_ops(interp) -> list[dict]:
    """The ops of a .tflite that compute (QUANTIZE/DEQUANTIZE and delegate nodes left out)."""
    from tflq.tflite_inspect import ops_details

    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    ops = []
    for op in ops_details(interp):
        if op["op_name"] in _BOUNDARY or op["op_name"] == "DELEGATE" or not len(op["outputs"]):
            continue
        out = tensors[int(op["outputs"][0])]
        ops.append({"index": int(op["index"]), "op": op["op_name"],
                    "inputs": [int(i) for i in op["inputs"]],
                    "output": int(op["outputs"][0]), "name": out["name"],
                    "shape": tuple(int(s) for s in out["shape"]), "detail": out})
    return ops


def match_ops(float_ops: list[dict], quant_ops: list[dict]) -> dict[int, int]:
    """Pairs quantized ops with float ops: ``{quant op index: float op index}``.

    Aligns the two sequences of ``(op, shape)`` keys (longest matching blocks, in order), so
    an op the quantized model adds or drops leaves the others matched.
    """
    float_keys = [(o["op"], o["shape"]) for o in float_ops]
    quant_keys = [(o["op"], o["shape"]) for o in quant_ops]
    matcher = difflib.SequenceMatcher(None, float_keys, quant_keys, autojunk=False)
    pairs = {}
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            pairs[quant_ops[block.b + k]["index"]] = float_ops[block.a + k]["index"]
    return pairs


def _constant_tensors(subgraph, buffers) -> set[int]:
    """Tensors with data in the file, and tensors computed from those only (e.g. DEQUANTIZE
    of int8 or float16 weights)."""
    constant = {i for i, t in enumerate(subgraph.tensors)
                if t.buffer and buffers[t.buffer].data is not None and len(buffers[t.buffer].data)}
    changed = True
    while changed:
        changed = False
        for op in subgraph.operators:
            inputs = [i for i in op.inputs if i >= 0]
            if inputs and all(i in constant for i in inputs):
                for o in op.outputs:
                    if o not in constant:
                        constant.add(o)
                        changed = True
    return constant


def isolate_ops(content: bytes, op_indices: Iterable[int]) -> tuple[bytes, dict[int, list]]:
    """A copy of a .tflite in which each listed op reads private copies of its non-constant
    inputs, made graph inputs; nothing else feeds it.

    Returns:
      ``(model bytes, {op index: [(input position, tensor index in the copy), ...]})``; the
      op's outputs keep their tensor indices and become graph outputs. Ops computing only
      constants (e.g. DEQUANTIZE of weights) stay in place; other ops are dropped.
    """
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    graph = model.subgraphs[0]
    constant = _constant_tensors(graph, model.buffers)
    wanted = set(op_indices)
    operators, inputs, outputs, feeds = [], [], [], {}
    for index, op in enumerate(graph.operators):
        if all(i < 0 or i in constant for i in op.inputs) and index not in wanted:
            operators.append(op)  # computes a constant: keep it
            continue
        if index not in wanted:
            continue
        op = copy.copy(op)
        op.inputs = list(op.inputs)
        feeds[index] = []
        for position, tensor in enumerate(op.inputs):
            if tensor < 0 or tensor in constant:
                continue
            private = copy.deepcopy(graph.tensors[tensor])
            private.name = f"{graph.tensors[tensor].name}/tflq_isolated_{index}_{position}"
            graph.tensors.append(private)
            op.inputs[position] = len(graph.tensors) - 1
            inputs.append(len(graph.tensors) - 1)
            feeds[index].append((position, len(graph.tensors) - 1))
        operators.append(op)
        outputs.extend(o for o in op.outputs if o not in outputs)
    graph.operators, graph.inputs, graph.outputs = operators, inputs, outputs
    model.signatureDefs = []
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), feeds


def _quant_params(detail) -> tuple[float, int] | None:
    scale, zero_point = detail["quantization"]
    if not scale or np.dtype(detail["dtype"]).kind not in "iu":
        return None
    return float(scale), int(zero_point)


def _grid(detail) -> tuple[float, float, float] | None:
    """(step, lowest, highest) value a quantized tensor can hold; None for float tensors."""
    params = _quant_params(detail)
    if params is None:
        return None
    info = np.iinfo(np.dtype(detail["dtype"]))
    return params[0], params[0] * (info.min - params[1]), params[0] * (info.max - params[1])


def _dequantized(interp, detail) -> np.ndarray:
    value = interp.get_tensor(detail["index"])
    params = _quant_params(detail)
    if params is None:
        return np.asarray(value, np.float64)
    return (np.asarray(value, np.float64) - params[1]) * params[0]


def _to_dtype(x: np.ndarray, detail) -> np.ndarray:
    """A float tensor in the dtype of ``detail`` (quantized with its scale/zero point)."""
    dtype = np.dtype(detail["dtype"])
    params = _quant_params(detail)
    if params is None:
        return np.asarray(x).astype(dtype)
    info = np.iinfo(dtype)
    q = np.round(np.asarray(x, np.float64) / params[0]) + params[1]
    return np.clip(q, info.min, info.max).astype(dtype)


class _Stats:
    """Sums over samples of one op's output against the float reference."""

    def __init__(self):
        self.signal = self.noise = self.layer_noise = 0.0
        self.count = self.clipped = self.layer_count = 0
        self.low, self.high = math.inf, -math.inf

    def update(self, reference, test, grid: tuple[float, float, float] | None):
        """``grid``: (step, lowest, highest) value the quantized output can hold, or None."""
        self.signal += float(np.sum(reference ** 2))
        self.noise += float(np.sum((reference - test) ** 2))
        self.count += reference.size
        self.low = min(self.low, float(reference.min()))
        self.high = max(self.high, float(reference.max()))
        if grid is not None:
            half, lo, hi = grid[0] / 2, grid[1], grid[2]
            self.clipped += int(np.sum((reference < lo - half) | (reference > hi + half)))

    def update_layer(self, reference, test):
        self.layer_noise += float(np.sum((reference - test) ** 2))
        self.layer_count += reference.size


def _sqnr(signal: float, noise: float) -> float:
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(signal / noise) if signal > 0 else -math.inf


def _row(op: dict, float_index: int | None, stats: _Stats | None, layer_note: str | None) -> dict:
    params = _quant_params(op["detail"])
    grid = _grid(op["detail"])
    row = {"index": op["index"], "op": op["op"], "name": op["name"], "shape": list(op["shape"]),
           "dtype": np.dtype(op["detail"]["dtype"]).name, "float_index": float_index,
           "scale": params[0] if params else None, "zero_point": params[1] if params else None}
    if stats is None or not stats.count:
        return {**row, "matched": False}
    rmse = math.sqrt(stats.noise / stats.count)
    row.update(matched=True, sqnr_db=_sqnr(stats.signal, stats.noise), rmse=rmse,
               rmse_over_scale=rmse / params[0] if params else None,
               range_observed=[stats.low, stats.high])
    if grid:
        row["range_used"] = [grid[1], grid[2]]
        row["clipped_share"] = stats.clipped / stats.count
    else:
        row["range_used"], row["clipped_share"] = None, None
    if stats.layer_count:
        layer_rmse = math.sqrt(stats.layer_noise / stats.layer_count)
        row.update(layer_sqnr_db=_sqnr(stats.signal, stats.layer_noise), layer_rmse=layer_rmse,
                   layer_rmse_over_scale=layer_rmse / params[0] if params else None)
    else:
        row.update(layer_sqnr_db=None, layer_rmse=None, layer_rmse_over_scale=None,
                   layer_note=layer_note)
    return row


class _ModeRun:
    """One quantized .tflite: its interpreter, its isolated-op copy, matches and sums."""

    def __init__(self, content: bytes, float_ops: list[dict]):
        self.interp = preserving_interpreter(content)
        self.ops = _compute_ops(self.interp)
        self.pairs = match_ops(float_ops, self.ops)
        self.stats = {i: _Stats() for i in self.pairs}
        self.layer_note = None
        self.isolated = None
        wanted = [o["index"] for o in self.ops if o["index"] in self.pairs and o["op"] not in
                  _CONTROL_FLOW]
        try:
            isolated, self.feeds = isolate_ops(content, wanted)
            self.isolated = preserving_interpreter(isolated)
        except (ValueError, RuntimeError) as e:  # an op the rewrite cannot isolate
            self.layer_note = f"per-layer view unavailable: {str(e).splitlines()[0][:200]}"
        self.inputs = self.interp.get_signature_runner().get_input_details()
        self.by_index = {o["index"]: o for o in self.ops}

    def update(self, sample: Mapping[str, np.ndarray], float_value, float_inputs):
        for name, detail in self.inputs.items():
            self.interp.set_tensor(detail["index"], _to_dtype(sample[name], detail))
        _invoke(self.interp)
        for q_index, f_index in self.pairs.items():
            op = self.by_index[q_index]
            reference = float_value(f_index)
            test = _dequantized(self.interp, op["detail"])
            if reference.shape != test.shape:
                continue
            self.stats[q_index].update(reference, test, _grid(op["detail"]))
        if self.isolated is not None:
            self._update_isolated(float_value, float_inputs)

    def _update_isolated(self, float_value, float_inputs):
        details = {d["index"]: d for d in self.isolated.get_input_details()}
        fed = []
        for q_index, positions in self.feeds.items():
            f_inputs = float_inputs(self.pairs[q_index])
            ok = True
            for position, tensor in positions:
                detail = details[tensor]
                value = f_inputs[position] if position < len(f_inputs) else None
                if value is None or tuple(value.shape) != tuple(detail["shape"]):
                    ok = False
                    break
                self.isolated.set_tensor(tensor, _to_dtype(value, detail))
            if ok:
                fed.append(q_index)
        _invoke(self.isolated)
        for q_index in fed:
            op = self.by_index[q_index]
            reference = float_value(self.pairs[q_index])
            self.stats[q_index].update_layer(reference, _dequantized(self.isolated, op["detail"]))

    def rows(self) -> list[dict]:
        return [_row(o, self.pairs.get(o["index"]), self.stats.get(o["index"]), self.layer_note)
                for o in self.ops]


def measure(float_content: bytes, quantized: Mapping[str, bytes],
            samples: Iterable[Mapping[str, np.ndarray]]) -> dict[str, dict]:
    """Per-op error of each quantized .tflite against the float32 .tflite.

    Args:
      float_content: the float32 .tflite (the reference).
      quantized: ``{key: .tflite bytes}``, e.g. ``{"int8": ...}``.
      samples: batch-1 ``{input name: array}`` dicts (e.g. the first calibration samples).

    Returns:
      ``{key: {"layers": [row per compute op], "samples": n, "seconds": s,
      "unmatched": [op names], "method": METHOD, "note": str or None}}``; each row has
      ``index``, ``op``, ``name``, ``shape``, ``dtype``, ``scale``, ``zero_point``,
      ``float_index``, ``matched``, ``sqnr_db``, ``rmse``, ``rmse_over_scale``,
      ``range_used``, ``range_observed``, ``clipped_share``, ``layer_sqnr_db``,
      ``layer_rmse``, ``layer_rmse_over_scale``.

    Raises:
      ValueError: a sample lacks an input of the float model.
    """
    start = time.perf_counter()
    reference = preserving_interpreter(float_content)
    float_ops = _compute_ops(reference)
    float_by_index = {o["index"]: o for o in float_ops}
    float_inputs_detail = reference.get_signature_runner().get_input_details()
    runs, seconds = {}, {}
    for key, content in quantized.items():
        t0 = time.perf_counter()
        runs[key] = _ModeRun(content, float_ops)
        seconds[key] = time.perf_counter() - t0
    shared = time.perf_counter() - start - sum(seconds.values())
    count = 0
    for sample in samples:
        missing = [n for n in float_inputs_detail if n not in sample]
        if missing:
            raise ValueError(f"Sample {count} has no input(s) {missing}. Received: {sorted(sample)}")
        t0 = time.perf_counter()
        for name, detail in float_inputs_detail.items():
            reference.set_tensor(detail["index"], _to_dtype(sample[name], detail))
        _invoke(reference)
        cache = {}

        def float_value(f_index, cache=cache):
            if f_index not in cache:
                cache[f_index] = np.asarray(
                    reference.get_tensor(float_by_index[f_index]["output"]), np.float64)
            return cache[f_index]

        def float_inputs(f_index):
            return [None if i < 0 else np.asarray(reference.get_tensor(i), np.float32)
                    for i in float_by_index[f_index]["inputs"]]

        shared += time.perf_counter() - t0
        for key, run in runs.items():
            t0 = time.perf_counter()
            run.update(sample, float_value, float_inputs)
            seconds[key] += time.perf_counter() - t0
        count += 1
    results = {}
    for key, run in runs.items():
        rows = run.rows()
        results[key] = {
            "samples": count, "seconds": seconds[key] + shared / max(len(runs), 1),
            "method": METHOD, "note": run.layer_note,
            "unmatched": [f"{r['op']}#{r['index']}" for r in rows if not r["matched"]],
            "layers": rows}
    return results


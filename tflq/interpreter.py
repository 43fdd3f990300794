"""Run a .tflite on arrays with LiteRT's interpreter.

Inputs are fed by name through the model's signature; float inputs are quantized and
integer outputs dequantized with the scale and zero point read from the tensor details.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import numpy as np
from ai_edge_litert.interpreter import Interpreter

__all__ = ["quantize", "dequantize", "TfliteModel", "measure_latency"]


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype) -> np.ndarray:
    """q = clamp(round(x / scale) + zero_point, dtype.min, dtype.max)."""
    info = np.iinfo(dtype)
    q = np.round(np.asarray(x, dtype=np.float64) / scale) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """x = (q - zero_point) * scale, as float32."""
    return ((np.asarray(q, dtype=np.float64) - zero_point) * scale).astype(np.float32)


class TfliteModel:
    """A .tflite ready to run on float arrays by input name.

    Args:
      content: the .tflite bytes.
      output_names: the signature's output names in the order to return them (all
        outputs in signature order when None).
      num_threads: interpreter threads.

    Attributes:
      static_batch: True when the .tflite takes exactly one sample per invoke (its inputs'
        batch dimension is a static 1, as tflq converts recurrent models): :meth:`run` then
        runs a larger batch sample by sample. Such a model's fused LSTM keeps its state in
        variable tensors that survive an invoke; they are reset before every invoke, so each
        sample starts from a zero state as in Keras (``stateful=False``). An app running the
        .tflite must do the same (``interpreter.reset_all_variables()``, C++
        ``ResetVariableTensors()``).
    """

    def __init__(self, content: bytes, output_names: Sequence[str] | None = None,
                 num_threads: int = 1):
        if num_threads < 1:
            raise ValueError(f"num_threads must be at least 1. Received: num_threads={num_threads}")
        self.interpreter = Interpreter(model_content=content, num_threads=num_threads)
        signatures = self.interpreter.get_signature_list()
        if not signatures:
            raise ValueError("The .tflite has no signature; convert it with a signature.")
        self.signature_key = next(iter(signatures))
        self.interpreter.allocate_tensors()  # reset_all_variables needs allocated tensors
        self._runner = self.interpreter.get_signature_runner(self.signature_key)
        self.input_details = self._runner.get_input_details()
        self.output_details = self._runner.get_output_details()
        self.static_batch = bool(self.input_details) and all(
            len(d["shape_signature"]) > 0 and int(d["shape_signature"][0]) == 1
            for d in self.input_details.values())
        names = list(signatures[self.signature_key]["outputs"])
        if output_names is not None:
            missing = [n for n in output_names if n not in self.output_details]
            if missing:
                raise ValueError(
                    f"The .tflite has no output(s) {missing}. Received outputs: {names}"
                )
            names = list(output_names)
        self.output_names = names

    def output_scale(self, name: str) -> float | None:
        """The quantization step of an integer output, None for float outputs."""
        detail = self.output_details[name]
        if np.dtype(detail["dtype"]).kind == "f":
            return None
        return float(detail["quantization"][0])

    def _feed(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {}
        for name, detail in self.input_details.items():
            if name not in inputs:
                raise ValueError(f"Missing input {name!r}. Received: {sorted(inputs)}")
            dtype = np.dtype(detail["dtype"])
            x = inputs[name]
            if dtype.kind in "iu" and np.asarray(x).dtype.kind == "f":
                scale, zero_point = detail["quantization"]
                x = quantize(x, scale, zero_point, dtype)
            feed[name] = np.ascontiguousarray(x, dtype=dtype)
        return feed

    def _invoke(self, feed: Mapping[str, np.ndarray]) -> dict:
        if self.static_batch:
            self.interpreter.reset_all_variables()
        return self._runner(**feed)

    def run(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Runs a batch; returns float outputs in ``output_names`` order.

        A .tflite with a static batch of 1 (:attr:`static_batch`) runs a larger batch one
        sample at a time; the outputs are concatenated in sample order.
        """
        feed = self._feed(inputs)
        rows = {len(x) for x in feed.values() if x.ndim}
        if self.static_batch and rows and max(rows) > 1:
            if len(rows) > 1:
                raise ValueError(f"Inputs have different batch sizes {sorted(rows)}; expected "
                                 f"one batch size. Received: { {k: v.shape for k, v in feed.items()} }")
            per_sample = [self._run_feed({k: v[i:i + 1] for k, v in feed.items()})
                          for i in range(rows.pop())]
            return [np.concatenate(outs) for outs in zip(*per_sample, strict=True)]
        return self._run_feed(feed)

    def _run_feed(self, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        result = self._invoke(feed)
        outs = []
        for name in self.output_names:
            y = result[name]
            detail = self.output_details[name]
            if np.dtype(detail["dtype"]).kind in "iu":
                scale, zero_point = detail["quantization"]
                y = dequantize(y, scale, zero_point)
            outs.append(np.asarray(y, dtype=np.float32))
        return outs

    def time_invokes(self, inputs: Mapping[str, np.ndarray], runs: int) -> list[float]:
        """Times ``runs`` invocations on a fixed input; returns milliseconds each."""
        feed = self._feed(inputs)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            self._invoke(feed)
            times.append((time.perf_counter() - start) * 1e3)
        return times


def measure_latency(models: Mapping[str, TfliteModel], sample: Mapping[str, np.ndarray],
                    warmup: int = 5, runs: int = 50, rounds: int = 5) -> dict[str, dict]:
    """Batch-1 latency of several models measured side by side.

    The runs are split into ``rounds`` and the models take turns each round, so drift on
    a shared, noisy machine hits every model alike and their ratios stay honest.

    Returns:
      ``{key: {"median": ms, "p90": ms, "runs": n}}``.
    """
    if runs < 1 or rounds < 1:
        raise ValueError(f"runs and rounds must be positive. Received: runs={runs}, rounds={rounds}")
    batch1 = {k: np.asarray(v)[:1] for k, v in sample.items()}
    for model in models.values():
        model.time_invokes(batch1, max(warmup, 0))
    times = {k: [] for k in models}
    per_round = max(1, runs // rounds)
    while min(len(t) for t in times.values()) < runs:
        for key, model in models.items():
            times[key].extend(model.time_invokes(batch1, per_round))
    return {
        k: {"median": float(np.median(t[:runs])), "p90": float(np.percentile(t[:runs], 90)),
            "runs": runs}
        for k, t in times.items()
    }

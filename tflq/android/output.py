"""Parsing TFLite ``benchmark_model`` output (every known variant) and checking delegates."""

from __future__ import annotations

import dataclasses
import re

__all__ = ["DeviceError", "BenchmarkResult", "parse_benchmark_output", "quote", "check_delegate"]

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


_PREFIX = re.compile(r"^(?:INFO|WARNING|ERROR|VERBOSE):\s*")


_STAT_KEYS = ("count", "first", "curr", "min", "max", "avg", "std", "p5", "median", "p95")


_PAIR = re.compile(rf"\b({'|'.join(_STAT_KEYS)})=({_NUMBER})")


_TIMINGS = re.compile(
    rf"Inference timings in us:\s*Init:\s*({_NUMBER}),\s*First inference:\s*({_NUMBER}),"
    rf"\s*Warmup \(avg\):\s*({_NUMBER}),\s*Inference \(avg\):\s*({_NUMBER})")


_MEM_DELTA = re.compile(
    rf"Memory footprint delta from the start of the tool \(MB\):\s*init=({_NUMBER})\s+"
    rf"overall=({_NUMBER})")


_MEM_PEAK_NEW = re.compile(
    rf"Overall peak memory footprint \(MB\) via periodic monitoring:\s*({_NUMBER})")


_MEM_PEAK_OLD = re.compile(
    rf"Peak memory footprint \(MB\):\s*init=({_NUMBER})\s+overall=({_NUMBER})")


_XNNPACK = re.compile(r"Created TensorFlow Lite XNNPACK delegate for CPU")


_REPLACING = re.compile(
    r"Replacing (\d+) out of (\d+) node\(s\) with delegate \(([^)]+)\) node")


_LITERT_HEADER = re.compile(r"=+\s*BENCHMARK RESULTS\s*=+")


_LITERT_FIELD = re.compile(rf"^([A-Za-z][A-Za-z ()/]*?):\s+({_NUMBER})\s*(ms|us|MB)\b(.*)$")


_DELEGATE_FAILURE = re.compile(
    r"(Failed to apply|failed to apply|Failed to create|Could not create|not supported)"
    r"[^\n]*delegate[^\n]*|[^\n]*delegate[^\n]*(failed|error)[^\n]*", re.IGNORECASE)


class DeviceError(ValueError):
    """A device-side problem the user can fix (no device, unauthorized, wrong ABI, …)."""


@dataclasses.dataclass(frozen=True)
class BenchmarkResult:
    """One parsed benchmark run. Times in milliseconds, memory in MB (None if not printed)."""

    format: str
    inference_avg_ms: float | None
    init_ms: float | None = None
    first_inference_ms: float | None = None
    warmup_avg_ms: float | None = None
    inference_stats_us: dict | None = None
    warmup_stats_us: dict | None = None
    peak_memory_mb: float | None = None
    memory_overall_mb: float | None = None
    xnnpack_created: bool = False
    delegate: str | None = None
    delegated_nodes: int | None = None
    total_nodes: int | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _num(text: str) -> float:
    return float(text)


def _stat_line(line: str) -> dict | None:
    pairs = dict(_PAIR.findall(line))
    if "count" not in pairs or (len(pairs) == 1 and float(pairs["count"]) != 0):
        return None
    return {k: (int(float(v)) if k == "count" else _num(v)) for k, v in pairs.items()}


def parse_benchmark_output(text: str) -> BenchmarkResult:
    """Parses TFLite ``benchmark_model`` or LiteRT benchmark output.

    Raises:
      ValueError: the text holds no recognizable result (quoted in the message).
    """
    lines = [_PREFIX.sub("", ln.rstrip()) for ln in text.splitlines()]
    body = "\n".join(lines)
    xnnpack = bool(_XNNPACK.search(body))
    delegate = nodes = total = None
    for match in _REPLACING.finditer(body):
        nodes, total, delegate = int(match.group(1)), int(match.group(2)), match.group(3)
    if _LITERT_HEADER.search(body):
        return _parse_litert(lines, text, xnnpack, delegate, nodes, total)
    stats = [s for s in (_stat_line(ln) for ln in lines if "count=" in ln) if s is not None]
    timings = _TIMINGS.search(body)
    if timings is None and not stats:
        raise ValueError(f"Unrecognized benchmark output: {quote(text)}")
    inference = stats[-1] if stats else None  # the last stat line is the timed runs
    warmup = stats[0] if len(stats) >= 2 else None
    avg_ms = None
    if timings is not None:
        avg_ms = _num(timings.group(4)) / 1e3
    elif inference is not None and "avg" in inference:
        avg_ms = inference["avg"] / 1e3
    if avg_ms is None:
        raise ValueError(f"Benchmark output has no inference average: {quote(text)}")
    delta = _MEM_DELTA.search(body)
    peak_new = _MEM_PEAK_NEW.search(body)
    peak_old = _MEM_PEAK_OLD.search(body)
    peak = _num(peak_new.group(1)) if peak_new else (_num(peak_old.group(2)) if peak_old else None)
    overall = _num(delta.group(2)) if delta else (_num(peak_old.group(2)) if peak_old else None)
    return BenchmarkResult(
        format="tflite_benchmark_model",
        inference_avg_ms=avg_ms,
        init_ms=_num(timings.group(1)) / 1e3 if timings else None,
        first_inference_ms=_num(timings.group(2)) / 1e3 if timings else None,
        warmup_avg_ms=_num(timings.group(3)) / 1e3 if timings else None,
        inference_stats_us=inference,
        warmup_stats_us=warmup,
        peak_memory_mb=peak,
        memory_overall_mb=overall,
        xnnpack_created=xnnpack,
        delegate=delegate,
        delegated_nodes=nodes,
        total_nodes=total,
    )


def _parse_litert(lines, text, xnnpack, delegate, nodes, total) -> BenchmarkResult:
    fields = {}
    for line in lines:
        match = _LITERT_FIELD.match(line.strip())
        if match:
            name, value, unit = match.group(1).strip().lower(), _num(match.group(2)), match.group(3)
            fields[name] = value / 1e3 if unit == "us" else value
    avg = fields.get("inference (avg)")
    if avg is None:
        raise ValueError(f"LiteRT benchmark output has no 'Inference (avg)': {quote(text)}")
    return BenchmarkResult(
        format="litert_benchmark",
        inference_avg_ms=avg,
        init_ms=fields.get("init") or fields.get("init time"),
        first_inference_ms=fields.get("first inference"),
        warmup_avg_ms=fields.get("warmup (avg)"),
        peak_memory_mb=fields.get("peak memory"),
        xnnpack_created=xnnpack,
        delegate=delegate,
        delegated_nodes=nodes,
        total_nodes=total,
    )


def quote(text: str, limit: int = 300) -> str:
    flat = " | ".join(ln.strip() for ln in text.strip().splitlines() if ln.strip())
    if not flat:
        return "(empty output)"
    return repr(flat[:limit] + (" …" if len(flat) > limit else ""))


def check_delegate(result: BenchmarkResult, delegate: str, output: str) -> None:
    """Refuses a run whose requested delegate failed or delegated nothing.

    Raises:
      DeviceError: naming the delegate and quoting the output.
    """
    failure = _DELEGATE_FAILURE.search(output)
    if delegate in ("gpu", "nnapi"):
        if failure:
            raise DeviceError(f"Delegate {delegate} failed: {failure.group(0).strip()[:200]}")
        if not result.delegated_nodes:
            raise DeviceError(
                f"Delegate {delegate} delegated nothing: no 'Replacing N out of M node(s)' line "
                f"with N > 0 in the output. Output: {quote(output)}"
            )
    if delegate == "xnnpack" and not result.xnnpack_created and not result.delegated_nodes:
        raise DeviceError(f"Delegate xnnpack was not applied. Output: {quote(output)}")



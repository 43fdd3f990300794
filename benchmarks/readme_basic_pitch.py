"""README regions of the Basic Pitch per-output run (``basic_pitch_outputs.json``, written by
``python -m benchmarks.basic_pitch_outputs``): the per-output table, the modes' latency and
quantize/dequantize islands, and the warnings."""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["render_basic_pitch"]


def _num(value, spec: str) -> str:
    if value is None:
        return "–"
    if isinstance(value, str):
        return "∞" if value == "inf" else value
    return format(value, spec)


def render_basic_pitch(data: Mapping) -> dict[str, str]:
    """``intro``, ``table`` (per output × mode) and ``notes`` (latency, islands, warnings)."""
    audio, tasks = data["audio"], data["output_tasks"]["outputs"]
    versions = data["versions"]
    intro = (
        f"`python -m benchmarks.basic_pitch_outputs` on {data['model']} with real music: "
        f"{audio['package']}, {len(audio['files'])} tracks resampled to 22,050 Hz and cut into "
        f"{audio['windows']} non-silent 2 s windows; {audio['calibration']} calibrate, "
        f"{audio['evaluation']} evaluate (`benchmarks/results/basic_pitch_outputs.json`; "
        f"{data['machine']}, load average {data['load_average'][0]:.1f} at the start, TensorFlow "
        f"{versions['tensorflow']}, LiteRT {versions['litert']}, {data['created_utc'][:10]}). "
        "Every output was inferred as " + ", ".join(
            f"`{name}` {t['task']} ({t['reason']}; {t['activation_source'].split(' ')[0]} "
            "read from the graph)" for name, t in tasks.items()) + ".")
    rows = []
    for name in tasks:
        for mode in data["modes"]:
            g = mode["per_output"][name]
            rows.append([f"`{name}`", mode["mode"], _num(g["f1"], ".3f"),
                         f"{100 * g['agreement']:.2f} %",
                         f"{g['float_positives']:,} / {g['quantized_positives']:,}",
                         _num(g["sqnr_db"], ".1f"), f"{g['cosine']:.4f}",
                         f"{g['max_abs_error']:.3f}"])
    header = ["output", "mode", "F1 vs float", "agreement at 0.5", "positives float / mode",
              "SQNR dB", "cosine", "max abs err"]
    table = "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                       *["| " + " | ".join(r) + " |" for r in rows]])
    base = data["modes"][0]["latency_ms"]["median"]
    speed = "; ".join(
        f"{m['mode']} {m['latency_ms']['median']:.1f} ms ({m['latency_ms']['median'] / base:.2f}× "
        f"float32, {len(m['float_ops'])} float ops"
        + (f", {m['performance']['quantize']} QUANTIZE + {m['performance']['dequantize']} "
           "DEQUANTIZE inserted" if m.get("performance") and (
               m["performance"]["quantize"] or m["performance"]["dequantize"]) else "") + ")"
        for m in data["modes"])
    warnings = " ".join(f"“{w}”" for w in data["warnings"]) or "none"
    notes = (f"Median batch-1 latency, 1 thread, modes interleaved: {speed}. Warnings in the "
             f"report and on stderr: {warnings}")
    return {"intro": intro, "table": table, "notes": notes}

"""Reports a person can read: report.json (stable schema), report.md and a PNG plot;
quality gates over the per-mode results."""

from __future__ import annotations

import dataclasses
import io
import json
import math

from tflq import output_gates, report_outputs
from tflq.settings import setting

__all__ = ["SCHEMA_VERSION", "MODE_NOTES", "Gates", "model_section", "mode_row", "to_json",
           "format_qat", "format_selective", "format_table", "to_markdown",
           "format_compression", "format_device_table", "to_png", "format_findings",
           "worst_layers", "format_layer_error", "format_outputs", "accuracy_missing", "percent"]

SCHEMA_VERSION = 1

MODE_NOTES = {
    "float16": "float16 weights, float32 compute",
    "dynamic": "int8 weights, float activations (dynamic range)",
    "int16x8": "int16 activations run on reference kernels: expect it to be much slower",
}


@dataclasses.dataclass(frozen=True)
class Gates:
    """Quality gates against the float model.

    Attributes:
      max_accuracy_drop: largest allowed accuracy drop in percentage points (needs labels).
      min_agreement: smallest allowed top-1 agreement with the float model, in [0, 1].
      gate: rules ``[output:]metric OP value`` (``onset:f1>=0.95``; see
        :mod:`tflq.output_gates`), checked on every mode.
    """

    max_accuracy_drop: float | None = setting(
        "Gate: largest accuracy drop (percentage points) of any mode.", None, kind="float")
    min_agreement: float | None = setting(
        "Gate: smallest top-1 agreement (0..1) with the float model.", None, kind="float")
    # Repeatable on the command line (--gate a --gate b); a list (or one rule) in a spec.
    gate: tuple[str, ...] = setting(
        "Gate rule [output:]metric OP value, repeatable, e.g. 'onset:f1>=0.95' or "
        "'sqnr_db>=30' (OP: >=, <=, >, <). Exit 3 when a mode breaks it.", (),
        flag_kind="multi_string", flag_none=True)

    def __post_init__(self):
        rules = (self.gate,) if isinstance(self.gate, str) else tuple(self.gate or ())
        for rule in rules:
            output_gates.parse_gate(rule)
        object.__setattr__(self, "gate", tuple(str(r).strip() for r in rules))
        if self.max_accuracy_drop is not None and not self.max_accuracy_drop >= 0:
            raise ValueError(
                "max_accuracy_drop must be >= 0 percentage points. "
                f"Received: max_accuracy_drop={self.max_accuracy_drop}"
            )
        if self.min_agreement is not None and not 0 <= self.min_agreement <= 1:
            raise ValueError(
                f"min_agreement must be in [0, 1]. Received: min_agreement={self.min_agreement}"
            )

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "gate": list(self.gate)}

    @property
    def any_set(self) -> bool:
        return bool(self.gate) or self.max_accuracy_drop is not None or (
            self.min_agreement is not None)

    def check(self, modes: list[dict]) -> list[str]:
        """Returns one line per breach (empty when every mode passes)."""
        failures = output_gates.check_rules([output_gates.parse_gate(r) for r in self.gate], modes)
        for m in modes:
            drop = m.get("accuracy_drop_pp")
            if self.max_accuracy_drop is not None:
                if drop is None:
                    failures.append(f"{m['mode']}: max_accuracy_drop needs labelled eval data")
                elif drop > self.max_accuracy_drop:
                    failures.append(
                        f"{m['mode']}: accuracy drop {drop:.2f} pp > {self.max_accuracy_drop:g} pp"
                    )
            if self.min_agreement is not None and m["top1_agreement"] < self.min_agreement:
                failures.append(
                    f"{m['mode']}: top-1 agreement {m['top1_agreement']:.4f} "
                    f"< {self.min_agreement:g}"
                )
        return failures


def model_section(model, source: str) -> dict:
    """report["model"]: what was converted (a :class:`tflq.models.LoadedModel`)."""
    return {"source": source, "flavor": model.flavor, "sha256": model.fingerprint(),
            "inputs": [s.to_dict() for s in model.inputs], "outputs": list(model.output_names),
            "conversion": getattr(model, "conversion_route", None)}


def mode_row(mode: str, path: str, content: bytes, float_size: int, float_ops, result: dict,
             float_accuracy: float | None, latency_ms: dict, seconds: float | None,
             notes: list) -> dict:
    """One report["modes"] row from a .tflite and its :meth:`tflq.metrics.Comparison.result`
    against the float model (``float_accuracy`` None: no labels, no drop)."""
    drop = None
    if result["accuracy"] is not None and float_accuracy is not None:
        drop = 100.0 * (float_accuracy - result["accuracy"])
    return {"mode": mode, "path": path, "size_bytes": len(content),
            "size_ratio": len(content) / float_size, "float_ops": list(float_ops),
            "accuracy": result["accuracy"], "accuracy_drop_pp": drop,
            "top1_agreement": result["top1_agreement"], "sqnr_db": result["sqnr_db"],
            "cosine": result["cosine"], "max_abs_error": result["max_abs_error"],
            "latency_ms": latency_ms, "conversion_seconds": seconds, "notes": notes}


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def to_json(report: dict) -> bytes:
    """report.json bytes (infinite SQNR is written as the string "inf")."""
    return (json.dumps(_json_safe(report), indent=2, sort_keys=False) + "\n").encode()


def _fmt(value, spec: str, missing: str = "–") -> str:
    if value is None:
        return missing
    if isinstance(value, str):
        return value
    if isinstance(value, float) and math.isinf(value):
        return "∞"
    return format(value, spec)


def format_table(report: dict) -> str:
    """The per-mode Markdown table (also printed by the CLI)."""
    head = ("| mode | size KB | × float32 | float ops | accuracy | Δ pp | agreement | SQNR dB "
            "| cosine | max abs err | latency ms (median / p90) |")
    rule = "|" + "---|" * 11
    rows = [head, rule]
    base = report["float"]
    missing = accuracy_missing(report)
    rows.append(
        f"| keras float | – | – | – | {_fmt(_pct(base['accuracy']), '.2f', missing)} "
        "| – | – | – | – | – | – |"
    )
    for m in report["modes"]:
        lat = m["latency_ms"]
        rows.append(
            f"| {m['mode']} | {m['size_bytes'] / 1024:.1f} | {m['size_ratio']:.3f} "
            f"| {len(m['float_ops'])} | {_fmt(_pct(m['accuracy']), '.2f', missing)} "
            f"| {_fmt(m['accuracy_drop_pp'], '+.2f')} | {m['top1_agreement'] * 100:.2f}% "
            f"| {_fmt(m['sqnr_db'], '.1f')} | {m['cosine']:.5f} | {m['max_abs_error']:.3g} "
            f"| {lat['median']:.3f} / {lat['p90']:.3f} |"
        )
    return "\n".join(rows)


def _pct(x):
    return None if x is None else 100.0 * x


def percent(x, missing: str) -> str:
    """``x`` (a share) as "12.34%", or ``missing`` when None."""
    return missing if x is None else f"{100.0 * x:.2f}%"


def accuracy_missing(report: dict) -> str:
    """What an accuracy cell says when there is no accuracy: "no labels" when the evaluation
    data has none, "–" otherwise."""
    labelled = report.get("data", {}).get("evaluation", {}).get("has_labels", True)
    return "–" if labelled else "no labels"


def format_outputs(report: dict) -> str:
    """Markdown: per model output (multi-output models), float model against each mode, and
    the QAT Keras model against the .tflite."""
    missing = accuracy_missing(report)
    lines = ["| mode | output | kind | top-1 agreement | accuracy | SQNR dB | max abs err |",
             "|" + "---|" * 7]
    for m in report["modes"]:
        for name, o in m.get("outputs", {}).items():
            agreement = "–" if o["top1_agreement"] is None else f"{100 * o['top1_agreement']:.2f}%"
            accuracy = (_fmt(_pct(o["accuracy"]), ".2f", missing) if o["kind"] == "classification"
                        else "–")
            lines.append(f"| {m['mode']} | {name} | {o['kind']} | {agreement} | {accuracy} "
                         f"| {_fmt(o['sqnr_db'], '.1f')} | {o['max_abs_error']:.3g} |")
    return "\n".join(lines)


def to_markdown(report: dict) -> str:
    """report.md: settings, the table, notes and the gate verdict, then each job's sections."""
    lines = [*_markdown_header(report), format_table(report), ""]
    if report.get("warnings"):
        lines += ["## Warnings", "", *[f"- {w}" for w in report["warnings"]], ""]
    notes = [f"- `{m['mode']}`: {n}" for m in report["modes"] for n in m["notes"]]
    if notes:
        lines += ["## Notes", "", *notes, ""]
    float_ops = [m for m in report["modes"] if m["float_ops"] and m["mode"] in ("int8", "int16x8")]
    for m in float_ops:
        lines.append(f"- `{m['mode']}` keeps {len(m['float_ops'])} op(s) in float: "
                     + ", ".join(m["float_ops"]))
    lines += ["## Quality gates", "", *_markdown_gates(report["gates"])]
    if "qat" in report:
        lines += ["", "## Quantization-aware training", "",
                  format_qat(report["qat"], accuracy_missing(report))]
    if "preflight" in report:
        lines += ["", "## Preflight", "", format_findings(report["preflight"])]
    if "selective" in report:
        lines += ["", "## Selective quantization", "",
                  format_selective(report["selective"], report["gates"]["max_accuracy_drop"])]
    if any("outputs" in m for m in report["modes"]):
        lines += ["", "## Outputs (float model vs each mode)", "", format_outputs(report)]
    if any("per_output" in m for m in report["modes"]):
        lines += ["", *report_outputs.to_markdown(report)]
    if any("layers" in m for m in report["modes"]):
        lines += ["", "## Per-layer error", "", format_layer_error(report)]
    if "compression" in report:
        lines += ["", "## Compression", "", format_compression(report["compression"])]
    if "device" in report:
        lines += ["", "## On device", "", format_device_table(report["device"])]
    return "\n".join(lines) + "\n"


def _markdown_header(report: dict) -> list[str]:
    s, data = report["settings"], report["data"]
    return [
        f"# tflq report: {report['model']['source']}",
        "",
        f"- Model: `{report['model']['source']}` ({report['model']['flavor']}), inputs "
        + ", ".join(f"`{i['name']}` {tuple(i['shape'])} {i['dtype']}"
                    for i in report["model"]["inputs"]),
        *([f"- Conversion: {report['model']['conversion']}"] if report["model"].get("conversion") else []),
        f"- {'Training' if 'qat' in report or 'compression' in report else 'Calibration'}: "
        f"{data['calibration']['num_samples']} samples of "
        f"`{data['calibration']['source']}` (seed {s['seed']})"
        + (" (no labels)" if data["calibration"].get("has_labels") is False else ""),
        f"- Evaluation: {data['evaluation']['num_samples']} samples of "
        f"`{data['evaluation']['source']}`"
        + ("" if data["evaluation"]["has_labels"] else " (no labels: accuracy not measured)"),
        f"- Float Keras model accuracy: "
        f"{percent(report['float']['accuracy'], accuracy_missing(report))}",
        f"- Latency: batch 1, {s['num_threads']} thread(s), {s['latency_runs']} runs after "
        "warm-up, modes interleaved",
        f"- TensorFlow {report['versions']['tensorflow']}, LiteRT {report['versions']['litert']}, "
        f"tflq {report['versions']['tflq']}; {report['machine']}",
        "",
    ]


def _markdown_gates(gates: dict) -> list[str]:
    rules = gates.get("gate") or []
    if gates["max_accuracy_drop"] is None and gates["min_agreement"] is None and not rules:
        return ["No gates set."]
    if gates["passed"]:
        return [f"PASSED (max_accuracy_drop={gates['max_accuracy_drop']}, "
                f"min_agreement={gates['min_agreement']}"
                + "".join(f", {r}" for r in rules) + ")."]
    return ["FAILED:", *[f"- {f}" for f in gates["failures"]]]


def format_qat(q: dict, missing: str = "–") -> str:
    """The QAT section: scheme, Keras QAT accuracy (``missing`` when there is none),
    distillation, parity (per output for multi-output models) and per-kernel deployment."""
    p = q["parity"]
    lines = [f"- Scheme `{q['scheme']}`, strategy `{q['strategy']}`; runs exactly on "
             f"TFLite int8 kernels: {'yes' if q['deploys_exactly'] else 'no'}",
             f"- Keras QAT model accuracy: {percent(q['keras_qat_accuracy'], missing)}",
             f"- Parity, Keras QAT model vs TFLite int8: top-1 agreement "
             f"{100 * p['top1_agreement']:.2f}%, outputs within one LSB " + (
                 f"({p['output_step']:.4g}): {100 * p['within_1_lsb']:.2f}%"
                 if p["output_step"] is not None else "n/a (float output)")]
    if q.get("distillation"):
        d = q["distillation"]
        lines.append(f"- Distillation: alpha {d['alpha']}, temperature {d['temperature']}"
                     + (f" ({d['reason']}: the teacher alone supplies the targets)"
                        if d.get("reason") else ""))
    if len(p.get("outputs", {})) > 1:
        lines += ["", "Parity per output (Keras QAT model vs TFLite int8):", "",
                  "| output | kind | loss | top-1 agreement | within one LSB | LSB | SQNR dB |",
                  "|---|---|---|---|---|---|---|"]
        for name, o in p["outputs"].items():
            agreement = "–" if o["top1_agreement"] is None else f"{100 * o['top1_agreement']:.2f}%"
            lines.append(f"| {name} | {o['kind']} | {q['outputs'][name]['loss']} "
                         f"| {agreement} | {_fmt(o['within_1_lsb'], '.2%')} "
                         f"| {_fmt(o['output_step'], '.4g')} | {_fmt(o['sqnr_db'], '.1f')} |")
    weights = q.get("weights") or []
    if weights:
        lines += ["", "Weights in the .tflite against the QAT model's quantized weights "
                  "(0 = deployed exactly; otherwise the converter re-quantized them):", "",
                  "| layer | weight | shape | max abs error | SQNR dB | exact |",
                  "|---|---|---|---|---|---|"]
        for w in weights:
            if not w.get("found"):
                lines.append(f"| {w['layer']} | {w['weight']} | {w['shape']} | not found | – | – |")
                continue
            lines.append(f"| {w['layer']} | {w['weight']} | {w['shape']} | "
                         f"{w['max_abs_error']:.3g} | {_fmt(w['sqnr_db'], '.1f')} | "
                         f"{'yes' if w['exact'] else 'no'} |")
    return "\n".join(lines)


def format_selective(sel: dict, max_accuracy_drop=None) -> str:
    """The selective-quantization section: budget verdict, ops kept in float, where it chose,
    trials, cost."""
    verdict = "met" if sel["met"] else ("NOT met, even with every ranked op in float; the "
                                        "most accurate model tried is written")
    budget = sel.get("budget") or {"max_accuracy_drop": max_accuracy_drop}
    limits = [f"accuracy drop ≤ {budget['max_accuracy_drop']} pp"
              if budget.get("max_accuracy_drop") is not None else "",
              f"top-1 agreement ≥ {budget['min_agreement']}"
              if budget.get("min_agreement") is not None else ""]
    lines = [f"- Budget: {' and '.join(x for x in limits if x)}: {verdict}",
             f"- Kept in float ({len(sel['kept_float'])}): "
             + (", ".join(f"`{t}`" for t in sel["kept_float"]) or "none")]
    chosen = budget.get("chosen_on")
    if chosen:
        lines.append(f"- Chosen on {chosen['samples']} samples ({chosen['source']}; "
                     f"{'labelled' if budget['labelled'] else 'no labels'}), calibrated on "
                     f"the other {chosen['calibrated_on']}; the evaluation data above was not "
                     "used to choose")
    lines += ["", "| ops in float | accuracy drop pp | agreement | size bytes |",
              "|---|---|---|---|"]
    lines += [f"| {t['k']} | {_fmt(t.get('drop_pp'), '+.2f')} "
              f"| {_fmt(None if t.get('agreement') is None else 100 * t['agreement'], '.2f')} "
              f"| {t['size_bytes']:,} |" for t in sel["trials"]]
    cost = sel.get("cost")
    if cost:
        lines += ["", f"Cost of the ops kept in float: {cost['selective_bytes']:,} B against "
                  f"{cost['all_int8_bytes']:,} B all-int8; median batch-1 latency "
                  f"{cost['selective_latency_ms']:.3f} ms against "
                  f"{cost['all_int8_latency_ms']:.3f} ms (measured side by side)."]
    return "\n".join(lines)


def format_compression(c: dict) -> str:
    """Markdown: the stages, the size accounting and the per-layer weights of the .tflite."""
    sparse = c["sparse_encoding"]
    lines = [f"- Stages: {' → '.join(c['stages'])}",
             f"- Compressed layers: {', '.join(c['layers']) or 'none'}",
             f"- Size: {c['size_bytes']:,} B raw, {c['gzip_bytes']:,} B gzip -9 "
             f"(float32 .tflite gzip: {c['float32_gzip_bytes']:,} B)",
             f"- Weight sparsity in the .tflite: {100 * c['weight_sparsity']:.1f}%",
             f"- TFLite sparse tensor encoding: {sparse['size_bytes']:,} B raw, "
             f"{sparse['gzip_bytes']:,} B gzip, {sparse['sparse_tensors']} tensor(s) encoded",
             "", "| op | weight shape | sparsity | unique int8 values | max unique per channel "
             "| 2:4 |", "|---|---|---|---|---|---|"]
    for w in c["weights"]:
        two_four = {True: "yes", False: "no"}.get(w.get("two_four_compliant"), "–")
        lines.append(f"| {w['op']} | {w['shape']} | {100 * w['sparsity']:.1f}% | "
                     f"{w['unique_values']} | {w['max_unique_per_channel']} | {two_four} |")
    return "\n".join(lines)


def format_device_table(device: dict) -> str:
    """Markdown: mode × delegate × threads, desktop and device side by side."""
    info = device["info"]
    lines = [f"Device {info.get('model')} ({info.get('serial')}, {info.get('abi')}, "
             f"SDK {info.get('sdk')})", "",
             "| model | mode | delegate | threads | device avg ms | desktop median ms "
             "| device peak MB | delegated nodes |", "|" + "---|" * 8]
    for r in device["table"]:
        nodes = ("–" if r["delegated_nodes"] is None
                 else f"{r['delegated_nodes']}/{r['total_nodes']}")
        desktop = "–" if r["desktop_median_ms"] is None else f"{r['desktop_median_ms']:.3f}"
        memory = "–" if r["device_peak_memory_mb"] is None else f"{r['device_peak_memory_mb']:.1f}"
        lines.append(f"| {r['model']} | {r['mode'] or '–'} | {r['delegate']} | {r['threads']} "
                     f"| {r['device_avg_ms']:.3f} | {desktop} | {memory} | {nodes} |")
    return "\n".join(lines)


def to_png(report: dict) -> bytes:
    """A plot of accuracy (or agreement when unlabelled) against size, one point per mode."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    labelled = report["float"]["accuracy"] is not None
    key = "accuracy" if labelled else "top1_agreement"
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
    for i, m in enumerate(sorted(report["modes"], key=lambda row: row["size_bytes"])):
        x, y = m["size_bytes"] / 1024, 100 * m[key]
        ax.scatter([x], [y], s=40)
        # Quantized modes sit close together: stagger the labels so none overlap.
        ax.annotate(m["mode"], (x, y), textcoords="offset points", xytext=(6, -14 + 12 * (i % 3)),
                    fontsize=9)
    ax.set_xscale("log")
    ax.margins(x=0.15, y=0.2)
    if labelled:
        ax.axhline(100 * report["float"]["accuracy"], color="gray", linestyle="--",
                   label="Keras float")
        ax.legend(loc="lower right")
    ax.set_xlabel("model size (KB)")
    ax.set_ylabel("top-1 accuracy (%)" if labelled else "top-1 agreement with float (%)")
    ax.set_title(f"{report['model']['source'].rstrip('/').split('/')[-1]}: "
                 f"{'accuracy' if labelled else 'agreement'} vs size")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def worst_layers(rows: list[dict], n: int = 5) -> list[dict]:
    """The ``n`` matched ops that add the most error themselves (lowest per-layer SQNR; the
    cumulative SQNR where the per-layer view is missing), worst first."""
    def own(row):
        value = row.get("layer_sqnr_db")
        value = row.get("sqnr_db") if value is None else value
        return math.inf if value in (None, "inf") else float(value)

    return sorted((r for r in rows if r.get("matched")), key=own)[:n]


def format_layer_error(report: dict, n: int = 5) -> str:
    """Markdown: per mode, the ``n`` ops adding the most error, with both views."""
    lines = []
    for m in report["modes"]:
        if "layers" not in m:
            continue
        info = m["layer_error"]
        lines += [f"**{m['mode']}** ({info['samples']} calibration samples, "
                  f"{len(m['layers'])} ops, {info['seconds']:.1f} s"
                  + (f"; not matched to the float model: {', '.join(info['unmatched'])}"
                     if info["unmatched"] else "") + "): worst ops by their own error", "",
                  "| op | tensor | SQNR dB (per-layer) | SQNR dB (cumulative) | RMSE/scale "
                  "(per-layer) | range used | range observed | clipped |", "|" + "---|" * 8]
        for r in worst_layers(m["layers"], n):
            used = "float" if r["range_used"] is None else (
                f"{r['range_used'][0]:.3g}..{r['range_used'][1]:.3g}")
            observed = f"{r['range_observed'][0]:.3g}..{r['range_observed'][1]:.3g}"
            clipped = "–" if r["clipped_share"] is None else f"{100 * r['clipped_share']:.2f}%"
            lines.append(f"| {r['op']}#{r['index']} | `{r['name'][:60]}` "
                         f"| {_fmt(r['layer_sqnr_db'], '.1f')} | {_fmt(r['sqnr_db'], '.1f')} "
                         f"| {_fmt(r['layer_rmse_over_scale'], '.3f')} | {used} | {observed} "
                         f"| {clipped} |")
        lines.append("")
    lines.append("Per-layer: each op alone on the float model's inputs (its own error); "
                 "cumulative: the real quantized model (errors of earlier ops included).")
    return "\n".join(lines)


def format_findings(findings: list[dict]) -> str:
    """Markdown table of findings (or a line saying there are none)."""
    if not findings:
        return "No findings: nothing in this model is known to hurt int8 quantization."
    lines = ["| check | where | what | suggested fix |", "|---|---|---|---|"]
    for f in findings:
        lines.append(f"| {f['kind']} | {f['layer']} | {f['detail']} | {f['fix']} |")
    return "\n".join(lines)



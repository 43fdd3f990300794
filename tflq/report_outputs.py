"""The per-output part of a report, in Markdown and HTML: one table per model output (its
task, why, and every mode's errors and task metrics against the float model), which output
the headline columns measure, and the performance warnings. Pure Python."""

from __future__ import annotations

import html
import math

__all__ = ["METRIC_LABELS", "output_tables", "headline_line", "to_markdown", "to_html"]

# Column label and format of each metric; "%" formats a share as a percentage.
METRIC_LABELS = {
    "top1_agreement": ("top-1 agreement", "%"), "top5_agreement": ("top-5 agreement", "%"),
    "accuracy": ("accuracy", "%"), "agreement": ("agreement", "%"), "f1": ("F1 vs float", ".4f"),
    "relative_error": ("relative error", ".3g"), "r2": ("R² vs float", ".4f"),
    "mean_iou": ("mean IoU", ".4f"), "matched_at_50": ("matched at IoU≥0.5", "%"),
    "score_agreement": ("score agreement", "%"), "pixel_agreement": ("pixel agreement", "%"),
    "miou": ("mIoU vs float", ".4f"),
}
_COMMON = (("sqnr_db", "SQNR dB", ".1f"), ("cosine", "cosine", ".5f"),
           ("max_abs_error", "max abs err", ".3g"), ("mean_abs_error", "mean abs err", ".3g"))
_TASK_KEYS = {
    "classification": ("top1_agreement", "top5_agreement", "accuracy"),
    "multilabel": ("agreement", "f1"), "regression": ("relative_error", "r2"),
    "detection": ("mean_iou", "matched_at_50", "score_agreement"),
    "segmentation": ("pixel_agreement", "miou"),
}


def _cell(value, spec: str) -> str:
    if value is None:
        return "–"
    if isinstance(value, str):  # "inf" / "-inf" after a JSON round trip
        return {"inf": "∞", "-inf": "−∞"}.get(value, value)
    if isinstance(value, float) and math.isinf(value):
        return "∞" if value > 0 else "−∞"
    return f"{100 * value:.2f}%" if spec == "%" else format(value, spec)


def output_tables(report: dict) -> list[dict]:
    """Per output: ``{"output", "title", "head", "rows"}`` with text cells, one row per mode
    that has per-output groups."""
    rows = [m for m in report["modes"] if "per_output" in m]
    if not rows:
        return []
    tasks = report.get("output_tasks", {}).get("outputs", {})
    tables = []
    for name, first in rows[0]["per_output"].items():
        task = first["task"]
        info = tasks.get(name, {})
        keys = _TASK_KEYS[task]
        if task == "classification" and all(m["per_output"][name].get("accuracy") is None
                                             for m in rows):
            keys = keys[:2]
        threshold = (f", threshold {info['threshold']:g}" if info.get("threshold") is not None
                     and "threshold" not in first["reason"] else "")
        shape = f" {tuple(info['shape'])}" if info.get("shape") else ""
        title = f"{name}{shape}: {task} ({first['reason']}{threshold})"
        head = ["mode", *(METRIC_LABELS[k][0] for k in keys), *(c[1] for c in _COMMON)]
        body = [[m["mode"], *(_cell(m["per_output"][name].get(k), METRIC_LABELS[k][1])
                              for k in keys),
                 *(_cell(m["per_output"][name].get(k), spec) for k, _, spec in _COMMON)]
                for m in rows]
        tables.append({"output": name, "title": title, "head": head, "rows": body})
    return tables


def headline_line(report: dict) -> str | None:
    """Which output the headline columns (accuracy, agreement) measure, for multi-output
    models; None for one output."""
    section = report.get("output_tasks")
    if not section or len(section.get("outputs", {})) < 2:
        return None
    headline = section["headline"]
    return (f"The accuracy and agreement columns above measure output `{headline['output']}` "
            f"({headline['why']}).")


def to_markdown(report: dict) -> list[str]:
    """Markdown lines of the per-output section (empty when the report has none)."""
    tables = output_tables(report)
    if not tables:
        return []
    lines = ["## Per output (float model vs each mode)", ""]
    line = headline_line(report)
    if line:
        lines += [line, ""]
    for table in tables:
        lines += [f"**{table['title']}**", "", "| " + " | ".join(table["head"]) + " |",
                  "|" + "---|" * len(table["head"])]
        lines += ["| " + " | ".join(row) + " |" for row in table["rows"]]
        lines.append("")
    return lines


def to_html(report: dict) -> str:
    """HTML of the warnings and the per-output section ("" when there is neither)."""
    e = html.escape
    parts = []
    if report.get("warnings"):
        parts.append("<h2>Warnings</h2><ul>" + "".join(
            f'<li class="fail">{e(w)}</li>' for w in report["warnings"]) + "</ul>")
    tables = output_tables(report)
    if tables:
        parts.append("<h2>Per output (float model vs each mode)</h2>")
        line = headline_line(report)
        if line:
            parts.append(f"<p>{e(line).replace('`', '')}</p>")
        for i, table in enumerate(tables):
            head = "".join(f"<th>{e(h)}</th>" for h in table["head"])
            body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>"
                           for row in table["rows"])
            parts.append(f"<h3>{e(table['title'])}</h3><div class=\"scroll\"><table "
                         f"id=\"output-{i}\"><thead><tr>{head}</tr></thead><tbody>{body}"
                         "</tbody></table></div>")
    return "".join(parts)

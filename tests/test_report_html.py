"""report.html: every section from a report dict, self-contained, and rendered by Debian's
headless Chromium for the bundled example (DOM, console errors, screenshots at desktop and
phone widths)."""

import io
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from conftest import EXAMPLE_DIR
from PIL import Image

from tflq import report_html
from tflq.jobs import convert

CHROMIUM = "/usr/bin/chromium"
WIDTHS = (1280, 390)  # desktop, phone


def _layer(index, op, sqnr, layer_sqnr):
    return {"index": index, "op": op, "name": f"model/{op.lower()}_{index}", "shape": [1, 4],
            "dtype": "int8", "float_index": index, "scale": 0.05, "zero_point": -128,
            "matched": True, "sqnr_db": sqnr, "rmse": 0.01, "rmse_over_scale": 0.2,
            "range_used": [0.0, 12.75], "range_observed": [0.0, 11.0], "clipped_share": 0.001,
            "layer_sqnr_db": layer_sqnr, "layer_rmse": 0.01, "layer_rmse_over_scale": 0.2}


def full_report() -> dict:
    """A report with every optional section (values need not be consistent)."""
    mode = {"mode": "int8", "path": "m_int8.tflite", "size_bytes": 2048, "size_ratio": 0.27,
            "float_ops": [], "accuracy": 0.9, "accuracy_drop_pp": 0.5, "top1_agreement": 0.98,
            "sqnr_db": 30.0, "cosine": 0.999, "max_abs_error": 0.1,
            "latency_ms": {"median": 0.05, "p90": 0.07, "runs": 3}, "conversion_seconds": 1.0,
            "notes": ["note with <script>alert(1)</script>"],
            "layers": [_layer(1, "CONV_2D", 35.0, 35.0), _layer(2, "MAX_POOL_2D", 34.0, "inf"),
                       _layer(3, "FULLY_CONNECTED", 31.0, 21.5)],
            "layer_error": {"samples": 4, "seconds": 0.2, "method": "m", "note": None,
                            "unmatched": []}}
    f32 = {**mode, "mode": "float32", "path": "m_float32.tflite", "size_bytes": 7600,
           "size_ratio": 1.0, "accuracy": 0.905, "accuracy_drop_pp": 0.0, "sqnr_db": "inf",
           "latency_ms": {"median": 0.1, "p90": 0.2, "runs": 3}, "notes": []}
    del f32["layers"], f32["layer_error"]
    return {
        "schema_version": 1, "created_utc": "2026-11-28T00:00:00+00:00",
        "versions": {"tflq": "0.1.0", "tensorflow": "2.21.0", "litert": "2.3.0"},
        "machine": "test machine",
        "model": {"source": "m.keras", "flavor": "tf_keras", "sha256": "0",
                  "inputs": [{"name": "img", "shape": [8, 8, 1], "dtype": "float32"}],
                  "outputs": ["logits"]},
        "settings": {"seed": 0, "num_threads": 1, "latency_runs": 3},
        "data": {"calibration": {"source": "c.npz", "num_samples": 10},
                 "evaluation": {"source": "e.npz", "num_samples": 20, "has_labels": True}},
        "float": {"accuracy": 0.905, "float32_tflite_bytes": 7600},
        "modes": [f32, mode],
        "gates": {"max_accuracy_drop": 0.1, "min_agreement": None, "passed": False,
                  "failures": ["int8: accuracy drop 0.50 pp > 0.1 pp"]},
        "preflight": [{"kind": "activation_outlier", "layer": "conv", "detail": "range 10×",
                       "fix": "use a percentile estimator"}],
        "qat": {"scheme": "pow2", "strategy": "gradient", "deploys_exactly": True,
                "keras_qat_accuracy": 0.9,
                "parity": {"top1_agreement": 1.0, "within_1_lsb": 0.99, "output_step": 0.1,
                           "sqnr_db": 40.0},
                "weights": [{"layer": "conv", "weight": "kernel", "shape": [4, 3, 3, 1],
                             "found": True, "max_abs_error": 0.0, "sqnr_db": "inf",
                             "exact": True}]},
        "selective": {"met": True, "kept_float": ["CONV_2D#1"],
                      "trials": [{"k": 1, "drop_pp": 0.05, "size_bytes": 3000}]},
        "compression": {"stages": ["prune", "int8"], "size_bytes": 2048, "gzip_bytes": 900,
                        "weight_sparsity": 0.5,
                        "weights": [{"op": "CONV_2D#1", "shape": [4, 3, 3, 1], "sparsity": 0.5,
                                     "unique_values": 9, "max_unique_per_channel": 5}]},
        "device": {"info": {"model": "Pixel 8", "serial": "S1", "abi": "arm64-v8a", "sdk": "34"},
                   "runs": [], "table": [{"model": "m_int8.tflite", "mode": "int8",
                                          "delegate": "xnnpack", "threads": 4,
                                          "device_avg_ms": 0.8, "desktop_median_ms": 0.05,
                                          "device_peak_memory_mb": 12.0, "delegated_nodes": 3,
                                          "total_nodes": 3}]},
    }


def test_every_section_is_on_the_page_and_nothing_is_fetched():
    page = report_html.to_html(full_report())
    for marker in ('id="modes"', 'class="scatter"', 'class="latency"',
                   '<svg class="layer-chart" data-mode="int8"', 'id="worst-int8"',
                   'id="preflight"', 'id="qat-weights"', 'id="selective"', 'id="compression"',
                   'id="device"', "Pixel 8", 'class="fail"', "accuracy drop 0.50 pp"):
        assert marker in page, marker
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)" in page  # escaped
    # Self-contained: no URL the browser would fetch (only the SVG namespace-free inline tags).
    assert not re.search(r"(src|href)\s*=|https?://|@import|url\(", page)
    assert 'name=viewport content="width=device-width' in page


def test_layer_chart_highlights_the_ops_adding_most_error():
    rows = full_report()["modes"][1]["layers"]
    svg = report_html.svg_layer_chart("int8", rows, worst=1)
    assert svg.count('class="worst"') == 1
    assert ">fully_connected#3</text>" in svg  # per-layer 21.5 dB: the worst op itself
    # The cumulative line has one point per op.
    points = re.search(r'<polyline points="([^"]+)"', svg).group(1).split()
    assert len(points) == 3


def test_scatter_and_latency_place_every_point():
    svg = report_html.svg_scatter([("a", 100.0, 90.0), ("b", 400.0, 91.0)], "x", "y", 91.5, "ref")
    assert svg.count("<circle") == 2 and "stroke-dasharray" in svg and ">ref<" in svg
    bars = report_html.svg_latency([("int8", 0.05, 0.07), ("int16x8", 6.9, 7.0)])
    widths = [float(w) for w in re.findall(r'<rect x="\d+" y="[\d.]+" width="([\d.]+)"', bars)]
    assert len(widths) == 2 and widths[1] > widths[0]  # slower mode, longer bar


def test_a_report_without_labels_plots_agreement():
    r = full_report()
    r["float"]["accuracy"] = None
    for m in r["modes"]:
        m["accuracy"] = m["accuracy_drop_pp"] = None
    page = report_html.to_html(r)
    assert "top-1 agreement with float %" in page and "Keras float" not in page


def _chromium(tmp_path, *args) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile{len(list(tmp_path.iterdir()))}"
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--hide-scrollbars", f"--user-data-dir={profile}",
         "--enable-logging=stderr", "--v=0", *args],
        capture_output=True, text=True, timeout=120, check=False)


def _console_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines()
            if ":CONSOLE" in line and ("Uncaught" in line or "rror" in line)]


@pytest.fixture(scope="module")
def bundled_report(tmp_path_factory):
    """The bundled example converted (fewer samples than the CLI default, all five modes)."""
    out = tmp_path_factory.mktemp("example") / "out"
    job = convert.ConvertJob(
        model=os.path.join(EXAMPLE_DIR, "fashion_mnist_cnn.keras"),
        data=os.path.join(EXAMPLE_DIR, "calibration-images-idx3-ubyte.gz"),
        eval_data=os.path.join(EXAMPLE_DIR, "evaluation-images-idx3-ubyte.gz"),
        out=str(out), num_calibration_samples=100, num_eval_samples=300, latency_runs=5,
        progress=False)
    assert convert.run_job(job).exit_code == 0
    return out


def test_chromium_renders_the_bundled_example(bundled_report, tmp_path):
    assert shutil.which(CHROMIUM), "chromium missing: apt-get install -y chromium"
    page = bundled_report / "report.html"
    url = page.as_uri()
    dom = _chromium(tmp_path, "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert '<table id="modes">' in dom.stdout
    for mode in ("float16", "dynamic", "int8", "int16x8"):
        assert f'<svg class="layer-chart" data-mode="{mode}"' in dom.stdout, mode
    assert 'data-mode="float32"' not in dom.stdout  # the reference has no per-layer chart
    assert "<html lang=\"en\">" in dom.stdout  # no data-errors attribute: no script error
    assert _console_errors(dom.stderr) == []
    for width in WIDTHS:
        shot = tmp_path / f"report_{width}.png"
        result = _chromium(tmp_path, f"--screenshot={shot}", f"--window-size={width},1600", url)
        assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
        assert _console_errors(result.stderr) == []
        pixels = np.asarray(Image.open(io.BytesIO(shot.read_bytes())).convert("RGB"))
        assert pixels.shape[1] == width
        colours = np.unique(pixels.reshape(-1, 3), axis=0)
        assert len(colours) > 50  # text, tables and charts, not a blank page
        # The charts draw in colour (blue line, red worst-op marks), not only grey text.
        assert np.any((pixels[..., 2] > 180) & (pixels[..., 0] < 80))
        assert np.any((pixels[..., 0] > 180) & (pixels[..., 1] < 80) & (pixels[..., 2] < 80))


def test_the_browser_check_catches_a_script_error(bundled_report, tmp_path):
    broken = tmp_path / "broken.html"
    broken.write_text((bundled_report / "report.html").read_text().replace(
        "</main>", "</main><script>notDefined();</script>"))
    dom = _chromium(tmp_path, "--dump-dom", broken.as_uri())
    assert 'data-errors="Uncaught ReferenceError: notDefined is not defined;"' in dom.stdout
    assert _console_errors(dom.stderr)


def test_report_json_of_the_bundled_example_renders_the_same_page(bundled_report):
    """report.html is a function of report.json: rebuilding it from the file gives the page."""
    with open(bundled_report / "report.json") as f:
        saved = json.load(f)
    rebuilt = report_html.to_html(saved)
    written = (bundled_report / "report.html").read_text()
    strip = re.compile(r"-?\d+\.\d+|∞|inf")  # in-memory floats vs their JSON round trip
    assert strip.sub("N", rebuilt) == strip.sub("N", written)

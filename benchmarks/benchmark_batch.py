"""Batch benchmark (writes JSON; not a timed test).

Eight jobs (four small CNNs trained briefly on real Fashion-MNIST × two modes) run with
``--workers 1`` and ``--workers 2`` alternately (twice each, medians reported), then once
more unchanged (every job cached). Records wall-clock, the speed-ups and each worker's
peak memory.

  python -m benchmarks.benchmark_batch --out bench_batch      # about 5 minutes on 2 cores
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import time

from absl import app, flags, logging

from pipelines.common import define

_OUT = define("string", "out", None, "Output folder (default: bench_batch).")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Runs per worker count (medians are reported).")

EXAMPLE_ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pipelines")
EXAMPLE = os.path.join(EXAMPLE_ROOT, "example")
TARGETS = {"workers2_speedup_min": 1.7, "cached_speedup_min": 20.0}
WIDTHS = {"cnn_a": (8, 16, 16), "cnn_b": (16, 16, 32), "cnn_c": (16, 32, 32), "cnn_d": (32, 32, 64)}


def make_models(folder: str) -> list[str]:
    """Four small CNNs, each trained one epoch on the bundled 500 calibration images."""
    import numpy as np

    from benchmarks.fashion_mnist import build_cnn
    from tflq.data import read_idx
    from tflq.models import tf_keras

    x = read_idx(os.path.join(EXAMPLE, "calibration-images-idx3-ubyte.gz"))
    y = read_idx(os.path.join(EXAMPLE, "calibration-labels-idx1-ubyte.gz"))
    x = (x.astype(np.float32) / 255.0)[..., None]
    os.makedirs(folder, exist_ok=True)
    paths = []
    for name, widths in WIDTHS.items():
        tf_keras.utils.set_random_seed(0)
        model = build_cnn(tf_keras, widths, dense=32, name=name)
        model.compile("adam", tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x, y, epochs=1, batch_size=32, verbose=0)
        path = os.path.join(folder, f"{name}.keras")
        model.save(path)
        paths.append(path)
    return paths


def write_spec(path: str, models: list[str]) -> None:
    lines = ["[defaults]",
             f'data = "{os.path.join(EXAMPLE, "calibration-images-idx3-ubyte.gz")}"',
             f'eval_data = "{os.path.join(EXAMPLE, "evaluation-images-idx3-ubyte.gz")}"',
             "num_calibration_samples = 200", "latency_runs = 20", ""]
    for model in models:
        stem = os.path.splitext(os.path.basename(model))[0]
        for mode in ("int8", "dynamic"):
            lines += ["[[jobs]]", f'name = "{stem}_{mode}"', f'model = "{model}"',
                      f'modes = ["{mode}"]', ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def main(argv) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}", exitcode=2)
    logging.set_verbosity(logging.WARNING)
    from tflq import batch, runtime
    from tflq.fileio import write_atomic
    from tflq.report import to_json

    out = _OUT.value or "bench_batch"
    os.makedirs(out, exist_ok=True)
    models = make_models(os.path.join(out, "models"))
    spec_path = os.path.join(out, "jobs.toml")
    write_spec(spec_path, models)
    runs = {1: [], 2: []}
    peaks = []
    for _ in range(_REPEATS.value):
        for workers in (1, 2):
            folder = os.path.join(out, f"w{workers}")
            shutil.rmtree(folder, ignore_errors=True)
            spec = batch.load_spec(spec_path, folder)
            start = time.perf_counter()
            result = batch.run_batch(spec, folder, workers=workers)
            runs[workers].append(time.perf_counter() - start)
            if result.exit_code != 0:
                print(f"error: batch with {workers} worker(s) failed:\n"
                      + batch.format_summary(result), file=sys.stderr)
                return 1
            peaks += [o["peak_rss_mb"] for o in result.outcomes]
    folder = os.path.join(out, "w2")
    start = time.perf_counter()
    cached = batch.run_batch(batch.load_spec(spec_path, folder), folder, workers=2)
    cached_seconds = time.perf_counter() - start
    assert all(o["cached"] for o in cached.outcomes)
    w1, w2 = statistics.median(runs[1]), statistics.median(runs[2])
    summary = {
        "benchmark": "batch", "machine": runtime.machine_description(),
        "versions": batch.versions(), "jobs": len(cached.outcomes),
        "workers1_seconds": runs[1], "workers2_seconds": runs[2],
        "workers2_speedup": w1 / w2,
        "cached_rerun_seconds": cached_seconds, "cached_speedup": w2 / cached_seconds,
        "worker_peak_rss_mb": {"max": max(peaks), "median": statistics.median(peaks)},
        "targets": TARGETS,
        "checks": {
            "workers2_speedup": {"value": w1 / w2, "met": w1 / w2 >= TARGETS["workers2_speedup_min"]},
            "cached_speedup": {"value": w2 / cached_seconds,
                               "met": w2 / cached_seconds >= TARGETS["cached_speedup_min"]},
        },
    }
    path = os.path.join(out, "benchmark_batch.json")
    write_atomic(path, to_json(summary))
    print(json.dumps(summary["checks"], indent=2))
    print(f"workers=1 {w1:.1f} s, workers=2 {w2:.1f} s, cached {cached_seconds:.2f} s; "
          f"worker peak RSS {max(peaks):.0f} MB; wrote {path}")
    return 0


if __name__ == "__main__":
    app.run(main)

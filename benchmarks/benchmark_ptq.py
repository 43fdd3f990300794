"""PTQ benchmark on the full Fashion-MNIST (writes JSON; not a timed test).

1. A CNN trained on the full 60,000-image train set (cached in --out), every converter
   mode evaluated on all 10,000 test images: accuracy, size ratio, float ops, latency
   (modes measured side by side, interleaved).
2. Calibration time and peak memory at 100 and 1,000 calibration samples drawn from the
   train set, each in a fresh process, RSS sampled every 5 ms while calibrating.
3. MobileNetV2 at 224x224 (weights=None, BatchNorm statistics refreshed on random data so
   calibration is not degenerate): int8 vs float32 latency with 1 thread.

  python -m benchmarks.benchmark_ptq --out bench/        # about 10 minutes on 2 cores

Targets (from the core pipeline issue) are checked and recorded in the JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

from absl import app, flags, logging

from benchmarks.fashion_mnist import image_files
from pipelines.common import define

_OUT = define("string", "out", None, "Output folder for JSON, models and reports (default: bench_ptq).")
_DATA_DIR = define("string", "data_dir", "/usr/share/datasets/fashion-mnist",
                                "Fashion-MNIST IDX folder (apt-get install dataset-fashion-mnist).")
_EPOCHS = define("integer", "epochs", 10, "Training epochs for the benchmark CNN.")
_RETRAIN = define("bool", "retrain", False, "Retrain even if a cached model exists.")
_NUM_CALIBRATION_SAMPLES = define("integer", "num_calibration_samples", None,
                                  "Calibration samples for the mode comparison (default: 1000).")
_LATENCY_RUNS = define("integer", "latency_runs", None, "Timed runs per mode (default: 200).")
_MOBILENET_RUNS = flags.DEFINE_integer("mobilenet_runs", 30, "Timed MobileNetV2 runs per mode.")
_SKIP_MOBILENET = flags.DEFINE_bool("skip_mobilenet", False, "Skip the MobileNetV2 part.")

TARGETS = {
    "int8_accuracy_drop_pp_max": 0.3,
    "int8_size_ratio_max": 0.27,
    "int8_float_ops": 0,
    "calibration_peak_memory_growth_max": 0.10,
    "mobilenet_int8_speedup_min": 1.5,
}
BENCH_WIDTHS, BENCH_DENSE = (32, 64, 128), 256


def _train_or_load(out: str, data_dir: str, epochs: int, retrain: bool) -> tuple[str, dict]:
    from benchmarks.fashion_mnist import train_cnn

    path = os.path.join(out, "benchmark_cnn.keras")
    info_path = path + ".json"
    if os.path.exists(path) and os.path.exists(info_path) and not retrain:
        with open(info_path) as f:
            return path, json.load(f)
    start = time.perf_counter()
    model, accuracy, _ = train_cnn(data_dir, epochs, seed=0, widths=BENCH_WIDTHS,
                                   dense=BENCH_DENSE, name="benchmark_cnn")
    model.save(path)
    info = {"keras_test_accuracy": accuracy, "params": int(model.count_params()),
            "epochs": epochs, "train_seconds": time.perf_counter() - start,
            "widths": list(BENCH_WIDTHS), "dense": BENCH_DENSE}
    with open(info_path, "w") as f:
        json.dump(info, f, indent=2)
    return path, info


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("VmRSS not found in /proc/self/status")


class _PeakSampler(threading.Thread):
    """Samples this process's RSS every few milliseconds and keeps the maximum."""

    def __init__(self, interval: float = 0.005):
        super().__init__(daemon=True)
        self.interval, self.peak, self._stop_event = interval, _rss_mb(), threading.Event()

    def run(self):
        while not self._stop_event.is_set():
            self.peak = max(self.peak, _rss_mb())
            time.sleep(self.interval)

    def stop(self) -> float:
        self._stop_event.set()
        self.join()
        self.peak = max(self.peak, _rss_mb())
        return self.peak


def calibration_probe(model_path: str, images: str, num_samples: int) -> dict:
    """Runs in a fresh process: int8 conversion with N calibration samples.

    Returns the time and the peak RSS sampled while calibrating and converting (the
    process's lifetime peak, ru_maxrss, is dominated by loading TensorFlow and is kept too).
    """
    import resource
    import tempfile

    from tflq import data, models, sampling
    from tflq.ptq import convert

    model = models.load_model(model_path)
    source = data.open_data(images, model.inputs)
    indices = sampling.sample_indices(len(source), num_samples, seed=0)
    rss_before = _rss_mb()
    sampler = _PeakSampler()
    sampler.start()
    start = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory() as work:
            result = convert.convert_model(
                model, "int8", work,
                sampling.representative_dataset(source, model.inputs, indices))
    finally:
        peak = sampler.stop()
    seconds = time.perf_counter() - start
    return {"num_samples": len(indices), "calibrate_and_convert_seconds": seconds,
            "rss_before_convert_mb": rss_before, "peak_rss_during_convert_mb": peak,
            "process_max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "float_ops": len(result.float_ops)}


def _probe_in_subprocess(model_path: str, images: str, num_samples: int) -> dict:
    code = ("import json, sys; from benchmarks.benchmark_ptq import calibration_probe; "
            f"print('PROBE' + json.dumps(calibration_probe({model_path!r}, {images!r}, "
            f"{num_samples})))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            check=False)
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith("PROBE")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"calibration probe failed: {result.stderr[-2000:]}")
    return json.loads(lines[-1][5:])


def _mobilenet_latency(runs: int) -> dict:
    import tempfile

    import numpy as np

    from tflq import interpreter, models
    from tflq.models import tf_keras
    from tflq.ptq import convert

    tf_keras.utils.set_random_seed(0)
    model = tf_keras.applications.MobileNetV2(input_shape=(224, 224, 3), weights=None)
    rng = np.random.default_rng(0)
    for _ in range(4):  # refresh BatchNorm statistics: random init calibrates degenerately
        model(rng.uniform(-1, 1, (8, 224, 224, 3)).astype(np.float32), training=True)
    loaded = models.wrap_model(model, "mobilenet_v2")
    samples = rng.uniform(-1, 1, (16, 224, 224, 3)).astype(np.float32)
    name = loaded.input_names[0]

    def representative():
        for row in samples:
            yield {name: row[None]}

    with tempfile.TemporaryDirectory() as work:
        contents = {m: convert.convert_model(loaded, m, work, representative).content
                    for m in ("float32", "int8")}
    runners = {m: interpreter.TfliteModel(c, loaded.output_names, num_threads=1)
               for m, c in contents.items()}
    latency = interpreter.measure_latency(runners, {name: samples[:1]}, warmup=5, runs=runs,
                                          rounds=5)
    return {
        "input": list(model.input_shape[1:]), "threads": 1, "weights": None,
        "float32_ms": latency["float32"], "int8_ms": latency["int8"],
        "int8_speedup": latency["float32"]["median"] / latency["int8"]["median"],
        "float32_bytes": len(contents["float32"]), "int8_bytes": len(contents["int8"]),
    }


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}", exitcode=2)
    logging.set_verbosity(logging.WARNING)
    from tflq import ConvertJob, runtime
    from tflq.jobs import convert as convert_job

    out = _OUT.value or "bench_ptq"
    try:
        train_images, test_images = image_files(_DATA_DIR.value)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    os.makedirs(out, exist_ok=True)
    model_path, model_info = _train_or_load(out, _DATA_DIR.value, _EPOCHS.value, _RETRAIN.value)
    job = ConvertJob(model=model_path, data=train_images, eval_data=test_images,
                     out=os.path.join(out, "modes"),
                     num_calibration_samples=_NUM_CALIBRATION_SAMPLES.value or 1000,
                     latency_runs=_LATENCY_RUNS.value or 200, batch_size=500)
    result = convert_job.run_job(job)
    modes = {m["mode"]: m for m in result.report["modes"]}
    probes = [_probe_in_subprocess(model_path, train_images, n) for n in (100, 1000)]
    growth = probes[1]["peak_rss_during_convert_mb"] / probes[0]["peak_rss_during_convert_mb"] - 1
    mobilenet = None if _SKIP_MOBILENET.value else _mobilenet_latency(_MOBILENET_RUNS.value)
    int8 = modes["int8"]
    checks = {
        "int8_accuracy_drop_pp": [int8["accuracy_drop_pp"],
                                  int8["accuracy_drop_pp"] <= TARGETS["int8_accuracy_drop_pp_max"]],
        "int8_size_ratio": [int8["size_ratio"], int8["size_ratio"] <= TARGETS["int8_size_ratio_max"]],
        "int8_float_ops": [len(int8["float_ops"]), len(int8["float_ops"]) == 0],
        "calibration_peak_memory_growth": [
            growth, growth < TARGETS["calibration_peak_memory_growth_max"]],
    }
    if mobilenet is not None:
        checks["mobilenet_int8_speedup"] = [
            mobilenet["int8_speedup"],
            mobilenet["int8_speedup"] >= TARGETS["mobilenet_int8_speedup_min"]]
    summary = {
        "benchmark": "ptq",
        "machine": runtime.machine_description(),
        "versions": runtime.versions(),
        "model": {"path": model_path, **model_info},
        "evaluation_samples": result.report["data"]["evaluation"]["num_samples"],
        "calibration_samples": result.report["data"]["calibration"]["num_samples"],
        "float_accuracy": result.report["float"]["accuracy"],
        "modes": {
            name: {k: m[k] for k in ("accuracy", "accuracy_drop_pp", "top1_agreement", "size_bytes",
                                     "size_ratio", "float_ops", "sqnr_db", "latency_ms")}
            for name, m in modes.items()
        },
        "latency_ratio_int8_over_float32": (int8["latency_ms"]["median"]
                                            / modes["float32"]["latency_ms"]["median"]),
        "calibration_probes": probes,
        "calibration_peak_memory_growth": growth,
        "mobilenet_v2_224": mobilenet,
        "targets": TARGETS,
        "checks": {k: {"value": v, "met": bool(ok)} for k, (v, ok) in checks.items()},
    }
    path = os.path.join(out, "benchmark_ptq.json")
    from tflq.fileio import write_atomic
    from tflq.report import format_table, to_json

    write_atomic(path, to_json(summary))
    print(format_table(result.report))
    for key, check in summary["checks"].items():
        print(f"{key}: {check['value']:.4g} -> {'met' if check['met'] else 'NOT MET'}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    app.run(main)

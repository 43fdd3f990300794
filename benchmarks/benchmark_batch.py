"""Batch benchmark: many small models, warm workers vs a fresh process per job vs no batch
runner at all (writes JSON; not a timed test).

N distinct small CNNs (N = 12 and 48; six conv-width patterns × two head sizes, each
trained one epoch on the 500 bundled Fashion-MNIST calibration images with its own seed)
are converted to int8 and evaluated on 1,000 bundled evaluation images each, in these ways:

- ``inprocess``: the same ``run_job`` calls one after another in one fresh Python process
  (``benchmarks.batch_inprocess``; its wall time includes starting Python and imports);
- ``process_w1``/``process_w2``: ``run_batch`` with a fresh worker process per job;
- ``warm_w1``/``warm_w2``: ``run_batch`` on 1 or 2 warm workers.

Ways run interleaved (order rotated every repeat) so the machine's load hits them alike;
ratios are taken within a repeat. Then a batch with crash, hang and out-of-memory jobs
mixed in, on 2 warm workers, and a fully cached rerun. The load average is recorded
around every run: the 2 cores are shared.

  nice -n 5 python -m benchmarks.benchmark_batch --out bench_batch   # ~15 min on 2 cores
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time

from absl import app, flags, logging

from pipelines.common import define

_OUT = define("string", "out", None, "Output folder (default: bench_batch).")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Interleaved repeats for N=12.")
_JSON = define("string", "json", None, "Result JSON (default: benchmarks/results/"
                            "benchmark_batch.json).")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "pipelines", "example")
TARGETS = {"warm_w2_over_inprocess_max": 0.65, "rss_growth_4_to_48_max": 0.20}
WIDTHS = ((8, 8, 16), (8, 16, 16), (16, 16, 16), (8, 16, 32), (16, 16, 32), (16, 32, 32))
HEADS = (16, 32)
WAYS_12 = ("inprocess", "process_w1", "process_w2", "warm_w1", "warm_w2")
WAYS_48 = ("inprocess", "warm_w1", "warm_w2", "process_w2")  # process_w1 alone is ~4 min
FAULTS = {"crash": ("segfault", {}), "hang": ("hang", {"timeout": 10}),
          "oom": ("out_of_memory", {"max_memory_mb": 12000})}


def model_plan(n: int) -> list[tuple[str, tuple[int, int, int], int, int]]:
    """(name, conv widths, dense units, seed) of the n distinct small CNNs."""
    return [(f"cnn{i:02d}", WIDTHS[i % len(WIDTHS)], HEADS[(i // len(WIDTHS)) % len(HEADS)], i)
            for i in range(n)]


def make_models(folder: str, n: int) -> list[str]:
    """Trains (once; kept in ``folder``) the n small CNNs of :func:`model_plan`."""
    import numpy as np

    from benchmarks.fashion_mnist import build_cnn
    from tflq.data import read_idx
    from tflq.models import tf_keras

    x = read_idx(os.path.join(EXAMPLE, "calibration-images-idx3-ubyte.gz"))
    y = read_idx(os.path.join(EXAMPLE, "calibration-labels-idx1-ubyte.gz"))
    x = (x.astype(np.float32) / 255.0)[..., None]
    os.makedirs(folder, exist_ok=True)
    paths = []
    for name, widths, dense, seed in model_plan(n):
        path = os.path.join(folder, f"{name}.keras")
        if not os.path.exists(path):
            tf_keras.backend.clear_session()
            tf_keras.utils.set_random_seed(seed)
            model = build_cnn(tf_keras, widths, dense=dense, name=name)
            model.compile("adam", tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            model.fit(x, y, epochs=1, batch_size=32, verbose=0)
            model.save(path)
        paths.append(path)
    return paths


def write_spec(path: str, models: list[str], faults: bool = False) -> None:
    """int8 only, 200 calibration and 1,000 evaluation images per job; ``faults`` adds a
    segfault, a hang (10 s timeout) and an out-of-memory job."""
    lines = ["[defaults]",
             f'data = "{os.path.join(EXAMPLE, "calibration-images-idx3-ubyte.gz")}"',
             f'eval_data = "{os.path.join(EXAMPLE, "evaluation-images-idx3-ubyte.gz")}"',
             'modes = ["int8"]', "num_calibration_samples = 200", "num_eval_samples = 1000",
             "latency_runs = 10", "", "[workers]", "max_jobs_per_worker = 1000", ""]
    for model in models:
        stem = os.path.splitext(os.path.basename(model))[0]
        lines += ["[[jobs]]", f'name = "{stem}"', f'model = "{model}"', ""]
    if faults:
        for name, (factory, extra) in FAULTS.items():
            lines += ["[[jobs]]", f'name = "{name}"', f'model = "benchmarks.batch_faults:{factory}"']
            lines += [f"{k} = {v}" for k, v in extra.items()] + [""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def run_way(way: str, spec_path: str, folder: str) -> dict:
    """One timed run of a whole spec; raises RuntimeError when a job that should work failed."""
    from tflq import batch

    shutil.rmtree(folder, ignore_errors=True)
    record = {"way": way, "loadavg_before": os.getloadavg()}
    start = time.perf_counter()
    if way == "inprocess":
        done = subprocess.run([sys.executable, "-m", "benchmarks.batch_inprocess", spec_path, folder],
                              capture_output=True, text=True, cwd=ROOT)
        record["wall_seconds"] = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"in-process loop failed: {done.stderr[-2000:]}")
        record.update(json.loads(done.stdout.strip().splitlines()[-1]))
    else:
        isolation, workers = way.split("_w")
        spec = batch.load_spec(spec_path, folder)
        policy = batch.WorkerPolicy(isolation=isolation, max_jobs_per_worker=1000)
        result = batch.run_batch(spec, folder, workers=int(workers), policy=policy)
        record["wall_seconds"] = time.perf_counter() - start
        if result.exit_code != 0:
            raise RuntimeError(f"{way} failed:\n{batch.format_summary(result)}")
        record["job_seconds"] = [o["seconds"] for o in result.outcomes]
        record["workers"] = [o.get("worker") for o in result.outcomes]
    record["loadavg_after"] = os.getloadavg()
    print(f"  {way:11s} {record['wall_seconds']:6.1f} s  load {record['loadavg_before'][0]:.1f}"
          f" -> {record['loadavg_after'][0]:.1f}", flush=True)
    return record


def compare(out: str, models: list[str], ways: tuple[str, ...], repeats: int) -> list[list[dict]]:
    """Runs every way ``repeats`` times, interleaved, the order rotated each repeat."""
    spec_path = os.path.join(out, f"jobs{len(models)}.toml")
    write_spec(spec_path, models)
    rounds = []
    for r in range(repeats):
        order = ways[r % len(ways):] + ways[:r % len(ways)]
        print(f"N={len(models)} repeat {r + 1}/{repeats}", flush=True)
        rounds.append([])
        for way in order:
            rounds[-1].append(run_way(way, spec_path, os.path.join(out, f"n{len(models)}_{way}")))
            with open(os.path.join(out, f"runs_n{len(models)}.json"), "w") as f:
                json.dump(rounds, f)  # kept should a later run fail
    return rounds


def summarize(rounds: list[list[dict]]) -> dict:
    walls = {}
    for runs in rounds:
        for run in runs:
            walls.setdefault(run["way"], []).append(run["wall_seconds"])
    ratios = {}
    for runs in rounds:  # side by side: ratios within one repeat
        by_way = {run["way"]: run["wall_seconds"] for run in runs}
        for way, wall in by_way.items():
            ratios.setdefault(f"{way}_over_inprocess", []).append(wall / by_way["inprocess"])
    return {"wall_seconds": walls, "median_wall_seconds": {w: statistics.median(v) for w, v in walls.items()},
            "ratios": ratios, "median_ratios": {k: statistics.median(v) for k, v in ratios.items()}}


def worker_rss(run: dict) -> dict:
    """Resident memory (MB) of the one warm worker after each job, by job number."""
    by_number = {w["job_number"]: w["rss_mb"] for w in run["workers"] if w}
    return {str(k): by_number[k] for k in sorted(by_number)}


def run_faults(out: str, models: list[str]) -> dict:
    from tflq import batch

    spec_path = os.path.join(out, "jobs_faults.toml")
    write_spec(spec_path, models, faults=True)
    folder = os.path.join(out, "faults_warm_w2")
    shutil.rmtree(folder, ignore_errors=True)
    start = time.perf_counter()
    result = batch.run_batch(batch.load_spec(spec_path, folder), folder, workers=2)
    statuses = {o["name"]: o["status"] for o in result.outcomes}
    errors = {o["name"]: o["error"] for o in result.outcomes if o["name"] in FAULTS}
    good = [s for n, s in statuses.items() if n not in FAULTS]
    expected = {"crash": "crashed", "hang": "timeout", "oom": "failed"}
    return {"wall_seconds": time.perf_counter() - start, "statuses": statuses, "errors": errors,
            "exit_code": result.exit_code,
            "met": all(s == "ok" for s in good) and all(statuses[k] == v for k, v in expected.items())}


def main(argv) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}", exitcode=2)
    logging.set_verbosity(logging.WARNING)
    from tflq import batch, runtime
    from tflq.fileio import write_atomic
    from tflq.report import to_json

    out = os.path.abspath(_OUT.value or "bench_batch")
    os.makedirs(out, exist_ok=True)
    models = make_models(os.path.join(out, "models"), 48)
    load_start = os.getloadavg()
    small = compare(out, models[:12], WAYS_12, _REPEATS.value)
    large = compare(out, models, WAYS_48, 1)
    faults = run_faults(out, models[:12])
    folder = os.path.join(out, "n12_warm_w2")
    start = time.perf_counter()
    cached = batch.run_batch(batch.load_spec(os.path.join(out, "jobs12.toml"), folder), folder,
                             workers=2)
    cached_seconds = time.perf_counter() - start
    warm1 = next(r for r in large[0] if r["way"] == "warm_w1")
    rss = worker_rss(warm1)
    growth = rss["48"] / rss["4"] - 1
    s12, s48 = summarize(small), summarize(large)
    ratio = s12["median_ratios"]["warm_w2_over_inprocess"]
    summary = {
        "benchmark": "batch", "machine": runtime.machine_description(),
        "versions": batch.versions(), "cpu_count": os.cpu_count(),
        "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
        "jobs": "distinct small CNNs, int8 only, 200 calibration + 1,000 evaluation images each",
        "n12": s12, "n48": s48, "faults": faults,
        "cached_rerun_seconds": cached_seconds,
        "cached_all": all(o["cached"] for o in cached.outcomes),
        "warm_worker_rss_mb_by_job": rss, "targets": TARGETS,
        "checks": {
            "warm_w2_over_inprocess_n12": {"value": ratio,
                                           "met": ratio <= TARGETS["warm_w2_over_inprocess_max"]},
            "faults_fail_alone": {"value": faults["statuses"], "met": faults["met"]},
            "rss_growth_4_to_48": {"value": growth,
                                   "met": abs(growth) <= TARGETS["rss_growth_4_to_48_max"]},
        },
        "runs": {"n12": small, "n48": large},
    }
    path = _JSON.value or os.path.join(ROOT, "benchmarks", "results", "benchmark_batch.json")
    write_atomic(path, to_json(summary))
    print(json.dumps(summary["checks"], indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    app.run(main)

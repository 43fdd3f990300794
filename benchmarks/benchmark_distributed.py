r"""Distributed paths run for real on this machine; writes benchmarks/results/benchmark_distributed.json.

  PYTHONPATH=. python -m benchmarks.benchmark_distributed [--jobs 6] [--epochs 8]

1. **Ray batch across two nodes, one killed mid-run.** A Ray head and a second node
   (:class:`benchmarks.local_cluster.RayCluster`, one CPU each) and ``python -m
   pipelines.batch --backend ray --ray_address HOST:PORT --workers 2`` over ``--jobs`` tiny
   conversion jobs (each waits ``--job_sleep`` seconds in its model factory, so jobs are
   running when the node dies) plus one job that kills the Ray actor running it every time.
   While the second node runs its ``--kill_on_job``-th job, that node is killed whole (every
   process of its session, SIGKILL). Then the same command runs again: finished jobs come
   from the cache, only the rest run.
2. **Multi-worker QAT, one worker killed.** Two ``python -m pipelines.qat --distribution
   multi_worker`` processes from a TF_CONFIG on loopback ports picked at run time, on a tiny
   CNN and synthetic 8×8 images; worker 1 is killed (SIGKILL) once worker 0 has checkpointed
   ``--kill_after_epoch`` epochs; both are started again (new ports) and resume from the
   checkpoint; the .tflite is checked against the QAT model and the float model with the
   interpreter.

Figures: wall times, jobs per node, attempts and lost attempts, cached and rerun jobs,
kill times, the QAT epochs saved/resumed/trained, parity, and the machine.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np

from benchmarks.local_cluster import RAY_ENV, RayCluster, free_port
from benchmarks.tiny import tiny_cnn, tiny_data

__all__ = ["RESULT", "ray_spec", "run_ray_scenario", "run_qat_scenario", "main"]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")
RESULT = os.path.join(ROOT, "benchmarks", "results", "benchmark_distributed.json")
RUN_TIMEOUT = 1200.0  # seconds for one command on a loaded 2-core machine


def _env(**extra) -> dict:
    """This worktree's tflq and the test factories first on the path, Ray's private settings."""
    path = os.pathsep.join([ROOT, TESTS, os.environ.get("PYTHONPATH", "")])
    return {**os.environ, **RAY_ENV, "PYTHONPATH": path, "TF_USE_LEGACY_KERAS": "1", **extra}


# ---- 1. Ray batch, a node killed ----


def ray_spec(folder: str, jobs: int) -> str:
    """A spec of ``jobs`` slow tiny jobs and one job that kills its Ray actor every time."""
    x, y = tiny_data(60, seed=2)
    np.savez(os.path.join(folder, "calib.npz"), x=x[:30], y=y[:30])
    np.savez(os.path.join(folder, "eval.npz"), x=x[30:], y=y[30:])
    body = ['[defaults]', 'data = "calib.npz"', 'eval_data = "eval.npz"', 'modes = ["int8"]',
            "num_calibration_samples = 10", "latency_runs = 2", "timeout = 600", ""]
    for i in range(jobs):
        body += ["[[jobs]]", f'name = "job{i}"', 'model = "batch_factories:slow_tiny"', ""]
    body += ["[[jobs]]", 'name = "kills_its_actor"', 'model = "batch_factories:kill_host"', ""]
    path = os.path.join(folder, "jobs.toml")
    with open(path, "w") as f:
        f.write("\n".join(body))
    return path


def _markers(folder: str) -> list[dict]:
    found = []
    for path in glob.glob(os.path.join(folder, "*.json")):
        with open(path) as f:
            found.append({**json.load(f), "kind": os.path.basename(path).split("-")[0]})
    return sorted(found, key=lambda m: m["time"])


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _kill_when_busy(cluster: RayCluster, markers: str, node: str, started: float, found: dict,
                    on_job: int = 1):
    """Kills ``node`` once its ``on_job``-th job runs there (a job whose worker's parent is one
    of the node's processes); records when, which job workers ran there, and whether they
    outlived it."""
    while "error" not in found:
        on_node = [m for m in _markers(markers) if m["ppid"] in set(cluster.pids(node))]
        if len(on_node) >= on_job:
            time.sleep(1.0)  # well inside the job: it waits TFLQ_TEST_SLEEP seconds
            found["kill_seconds"] = time.perf_counter() - started
            found["kill_on_job"] = on_job
            found["workers_on_node"] = sorted({m["pid"] for m in on_node})
            found["processes_killed"] = cluster.kill_node(node)
            deadline = time.monotonic() + 10
            while any(_alive(p) for p in found["workers_on_node"]) and time.monotonic() < deadline:
                time.sleep(0.2)
            found["workers_alive_after_10s"] = [p for p in found["workers_on_node"] if _alive(p)]
            return
        time.sleep(0.2)


def _batch(spec: str, out: str, address: str, env: dict) -> tuple[int, float, str]:
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.batch", "--spec", spec, "--out", out, "--backend", "ray",
         "--ray_address", address, "--workers", "2", "--quiet"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    return result.returncode, time.perf_counter() - start, result.stdout + result.stderr


def _jobs_summary(manifest: dict, node_names: dict) -> dict:
    jobs = manifest["jobs"]
    per_node = {}
    for job in jobs:
        if not job.get("cached"):  # a job lost on every attempt finished on no node
            name = node_names.get(job.get("ray_node_id"), "lost (no node)")
            per_node[name] = per_node.get(name, 0) + 1
    return {
        "statuses": {j["name"]: j["status"] + (" (cached)" if j.get("cached") else "")
                     for j in jobs},
        "ran": sorted(j["name"] for j in jobs if not j.get("cached")),
        "cached": sorted(j["name"] for j in jobs if j.get("cached")),
        "finished_per_node": per_node,
        "attempts": {j["name"]: j.get("attempts") for j in jobs if not j.get("cached")},
        "lost_attempts": {j["name"]: j.get("lost_attempts") for j in jobs
                          if j.get("lost_attempts") and not j.get("cached")},
    }


def run_ray_scenario(folder: str, jobs: int = 6, job_sleep: float = 4.0, kill_on_job: int = 1) -> dict:
    """Runs scenario 1 in ``folder``, killing the second node when its ``kill_on_job``-th job
    starts; returns its figures (the manifests stay in ``folder``)."""
    spec = ray_spec(folder, jobs)
    markers = os.path.join(folder, "markers")
    os.makedirs(markers, exist_ok=True)
    env = _env(TFLQ_TEST_MARKERS=markers, TFLQ_TEST_SLEEP=str(job_sleep))
    out = os.path.join(folder, "out")
    figures = {"jobs": jobs + 1, "job_sleep_seconds": job_sleep, "workers": 2}
    with RayCluster(env=env) as cluster:
        node_names = {v: k for k, v in cluster.node_ids().items()}
        kill = {}
        started = time.perf_counter()
        killer = threading.Thread(target=_kill_when_busy,
                                  args=(cluster, markers, "node_b", started, kill, kill_on_job),
                                  daemon=True)
        killer.start()
        try:
            code, seconds, output = _batch(spec, out, cluster.address, env)
        finally:
            kill.setdefault("error", "batch ended")  # stops a killer still waiting
            killer.join(timeout=30)
        with open(os.path.join(out, "manifest.json")) as f:
            first = json.load(f)
        figures["first_run"] = {"exit_code": code, "wall_seconds": seconds,
                                **_jobs_summary(first, node_names), "output_tail": output[-1500:]}
        figures["node_kill"] = {k: v for k, v in kill.items() if k != "error"}
        code, seconds, output = _batch(spec, out, cluster.address, env)
        with open(os.path.join(out, "manifest.json")) as f:
            second = json.load(f)
        figures["rerun"] = {"exit_code": code, "wall_seconds": seconds,
                            **_jobs_summary(second, node_names), "output_tail": output[-1500:]}
    figures["markers"] = _markers(markers)
    return figures


# ---- 2. Multi-worker QAT, a worker killed ----

# QAT Keras outputs and int8 TFLite outputs agree within one output quantization step
# (tflq.jobs.qat.LSB_SLACK); the float model and the int8 model agree on top-1 for nearly
# every sample once the float model is trained (the QAT benchmark's parity target).
QAT_FLOAT_AGREEMENT_MIN = 0.95


def qat_files(folder: str, train: int = 2000, seed: int = 3) -> dict:
    """A tiny CNN trained to convergence on synthetic 8×8 images, and its data files."""
    from tflq.models import tf_keras

    x, y = tiny_data(train + 400, seed)
    paths = {name: os.path.join(folder, f"{name}.npz") for name in ("train", "eval")}
    np.savez(paths["train"], x=x[:train], y=y[:train])
    np.savez(paths["eval"], x=x[train:], y=y[train:])
    model = tiny_cnn(seed)
    model.compile(tf_keras.optimizers.Adam(1e-2),
                  tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x[:train], y[:train], epochs=10, batch_size=32, verbose=0)
    paths["model"] = os.path.join(folder, "tiny.keras")
    model.save(paths["model"])
    paths["float_accuracy"] = float(model.evaluate(x[train:], y[train:], verbose=0)[1])
    return paths


def _qat_workers(files: dict, out: str, epochs: int, logs: str, run: int) -> list:
    """Starts the two workers of one multi-worker QAT run (TF_CONFIG on fresh loopback ports)."""
    ports = [free_port(), free_port()]
    workers = []
    for index in range(2):
        config = {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                  "task": {"type": "worker", "index": index}}
        log = open(os.path.join(logs, f"run{run}-worker{index}.log"), "wb")
        workers.append(subprocess.Popen(
            [sys.executable, "-m", "pipelines.qat", "--model", files["model"], "--train_data",
             files["train"], "--eval_data", files["eval"], "--out", out, "--epochs", str(epochs),
             "--batch_size", "16", "--learning_rate", "1e-4", "--distribution", "multi_worker"],
            cwd=ROOT, env=_env(TF_CONFIG=json.dumps(config)), stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True))
        log.close()
    return workers


def _checkpointed_epoch(backup: str) -> int:
    """The epoch of the newest checkpoint the chief wrote (0: none yet)."""
    found = glob.glob(os.path.join(backup, "chief", "ckpt-*.index"))
    return max((int(os.path.basename(p)[5:-6]) for p in found), default=0)


def _wait_all(workers: list, timeout: float = RUN_TIMEOUT) -> list:
    deadline = time.monotonic() + timeout
    try:
        return [w.wait(timeout=max(1.0, deadline - time.monotonic())) for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()


def _parity(files: dict, out: str) -> dict:
    """The written .tflite through LiteRT's interpreter against the saved QAT model (in output
    steps) and the float model (top-1 agreement), on the evaluation images."""
    from ai_edge_litert.interpreter import Interpreter

    from tflq.models import tf_keras
    from tflq.quant import qat

    x = np.load(files["eval"])["x"]
    with qat.quantize_scope():
        student = tf_keras.models.load_model(os.path.join(out, "tiny_qat.h5"), compile=False)
    float_model = tf_keras.models.load_model(files["model"], compile=False)
    runner = Interpreter(model_path=os.path.join(out, "tiny_qat_int8.tflite")).get_signature_runner()
    (in_name, detail), = runner.get_input_details().items()
    (out_name, out_detail), = runner.get_output_details().items()
    scale, zero = detail["quantization"]
    out_scale, out_zero = out_detail["quantization"]
    codes = np.clip(np.round(x / scale + zero), -128, 127).astype(np.int8)
    deployed = np.concatenate([
        (runner(**{in_name: codes[i:i + 1]})[out_name].astype(np.float32) - out_zero) * out_scale
        for i in range(len(x))])
    qat_out = np.asarray(student(x, training=False))
    float_out = np.asarray(float_model(x, training=False))
    steps = np.abs(deployed - qat_out) / out_scale
    return {"samples": len(x), "output_step": float(out_scale),
            "max_diff_in_steps_vs_qat": float(steps.max()),
            "within_1_step_vs_qat": float(np.mean(steps <= 1.001)),
            "top1_agreement_vs_qat": float(np.mean(deployed.argmax(1) == qat_out.argmax(1))),
            "top1_agreement_vs_float": float(np.mean(deployed.argmax(1) == float_out.argmax(1)))}


def run_qat_scenario(folder: str, epochs: int = 8, kill_after_epoch: int = 3,
                     train: int = 2000) -> dict:
    """Runs scenario 2 in ``folder``; returns its figures."""
    files = qat_files(folder, train)
    out = os.path.join(folder, "out")
    backup = os.path.join(out, ".qat_backup")
    logs = os.path.join(folder, "logs")
    os.makedirs(logs, exist_ok=True)
    figures = {"epochs": epochs, "train_samples": train, "batch_size": 16,
               "float_accuracy": files["float_accuracy"]}
    start = time.perf_counter()
    workers = _qat_workers(files, out, epochs, logs, run=1)
    try:
        while _checkpointed_epoch(backup) < kill_after_epoch:
            if any(w.poll() is not None for w in workers):
                raise RuntimeError(f"a QAT worker ended before the kill; see {logs}")
            time.sleep(0.1)
        workers[1].kill()
        kill_time = time.perf_counter() - start
        codes = _wait_all(workers)
    finally:
        _wait_all(workers, timeout=1)
    with open(os.path.join(logs, "run1-worker0.log"), errors="replace") as f:
        lines = [ln for ln in f.read().splitlines() if ln.startswith("interrupted:")]
    saved = _checkpointed_epoch(backup)
    figures["first_run"] = {
        "kill_seconds": kill_time, "killed_worker": 1, "exit_codes": codes,
        "survivor_seconds_to_exit": time.perf_counter() - start - kill_time,
        "survivor_message": lines[-1] if lines else None, "checkpointed_epoch": saved,
        "left_in_out": sorted(os.listdir(out))}
    start = time.perf_counter()
    codes = _wait_all(_qat_workers(files, out, epochs, logs, run=2))
    with open(os.path.join(out, "report.json")) as f:
        report = json.load(f)
    figures["rerun"] = {
        "exit_codes": codes, "wall_seconds": time.perf_counter() - start,
        "epochs_trained": report["qat"]["epochs_trained"],
        "left_in_out": sorted(os.listdir(out)),
        "report_parity": report["qat"]["parity"]["within_1_lsb"],
        "report_notes": [n for n in report["modes"][0]["notes"] if n.startswith("resumed")]}
    figures["parity"] = _parity(files, out)
    return figures


def main(argv: list[str] | None = None) -> int:
    import tempfile

    from tflq.runtime import machine_description, versions

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=6)
    parser.add_argument("--job_sleep", type=float, default=4.0)
    parser.add_argument("--kill_on_job", type=int, default=2,
                        help="kill the second node when its N-th job starts")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--kill_after_epoch", type=int, default=3)
    parser.add_argument("--out", default=RESULT)
    args = parser.parse_args(argv)
    result = {"machine": machine_description(), "cpus": os.cpu_count(), "versions": versions(),
              "settings": {k: v for k, v in vars(args).items() if k != "out"}}
    import ray

    result["ray_version"] = ray.__version__
    with tempfile.TemporaryDirectory(prefix="tflq-dist-") as folder:
        os.makedirs(os.path.join(folder, "ray"))
        result["ray_batch"] = run_ray_scenario(os.path.join(folder, "ray"), args.jobs,
                                               args.job_sleep, args.kill_on_job)
        os.makedirs(os.path.join(folder, "qat"))
        result["multi_worker_qat"] = run_qat_scenario(os.path.join(folder, "qat"), args.epochs,
                                                      args.kill_after_epoch)
    from tflq import report
    from tflq.fileio import write_atomic

    write_atomic(args.out, report.to_json(result))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

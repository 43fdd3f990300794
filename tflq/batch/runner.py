"""Batch conversion: job specs, isolated workers, an incremental cache, backends.

A spec (TOML, or YAML) lists jobs with shared defaults. Jobs run isolated, each with a time
limit (and optionally a memory limit), so a crash, a hang or running out of memory fails
that job only: by default on warm workers (:mod:`tflq.batch.pool`, TensorFlow imported
once per worker), or with ``isolation="process"`` in a fresh ``tflq.batch.worker`` process
per job. Jobs start longest first (:mod:`tflq.batch.schedule`). Finished jobs leave a
cache record keyed by the model's bytes, a fingerprint of the data, the job's settings and
the versions of tflq, TensorFlow and LiteRT; an unchanged job is skipped and its artifacts
reused, which also makes an interrupted batch resume where it stopped. ``manifest.json``
records every job, with paths relative to the batch folder.

Importing this module does not import TensorFlow: a fully cached batch never loads it.

Spec example (paths are relative to the spec file)::

    [defaults]
    data = "calib.npz"
    eval_data = "eval.npz"
    modes = ["int8"]
    max_accuracy_drop = 1.0

    [output]
    layout = "{name}"          # folder per job under --out

    [workers]
    isolation = "warm"         # or "process"
    max_jobs_per_worker = 50

    [[jobs]]
    name = "cnn"
    model = "models/cnn.keras"

    [[jobs]]
    model = "models/mlp.h5"    # name defaults to the model's stem
    modes = ["dynamic", "int8"]
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import json
import os
import queue
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time

import tflq.batch.outcome as outcome
import tflq.batch.pool as pool
import tflq.batch.ray_backend as ray_backend
import tflq.batch.schedule as schedule
from tflq import report, runtime
from tflq.batch.outcome import STATUS_CRASHED, STATUS_FAILED, STATUS_GATE, STATUS_OK, STATUS_TIMEOUT
from tflq.batch.spec import BatchSpec, JobSpec
from tflq.factories import FACTORY_RE
from tflq.fileio import sha256_of, update_digest, write_atomic
from tflq.jobs.common import job_settings
from tflq.settings import settings_of

__all__ = ["STATUS_OK", "STATUS_GATE", "STATUS_FAILED", "STATUS_TIMEOUT", "STATUS_CRASHED",
    "BACKENDS", "versions", "cache_key", "execute_job", "BatchResult", "run_batch",
    "format_summary"]

BACKENDS = ("local", "ray")


# ---- cache ----


def _hash_path(digest, path: str) -> None:
    if os.path.exists(path):
        update_digest(digest, path)
    elif FACTORY_RE.match(path):
        digest.update(path.encode())
        module = path.split(":")[0]
        try:
            found = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            found = None
        if found is not None and found.origin and os.path.isfile(found.origin):
            update_digest(digest, found.origin)


def versions() -> dict:
    """Versions that invalidate the cache: tflq, TensorFlow, LiteRT, tfmot, numpy."""
    return runtime.versions()


def cache_key(spec: JobSpec) -> str:
    """sha256 over the model bytes, the data bytes, the job's settings and the versions."""
    digest = hashlib.sha256()
    if spec.kind != "convert":  # (convert jobs keep the keys they had before kinds existed)
        digest.update(f"\0kind\0{spec.kind}".encode())
    for label in [s.name for s in settings_of(type(spec.job)) if s.is_path]:
        value = getattr(spec.job, label)
        digest.update(f"\0{label}\0".encode())
        if value:
            _hash_path(digest, value)
    if spec.kind == "convert":
        settings = spec.job.settings()
        settings["gates"] = spec.job.gates.to_dict()
    else:
        settings = job_settings(spec.job)
    digest.update(json.dumps(settings, sort_keys=True).encode())
    digest.update(json.dumps(versions(), sort_keys=True).encode())
    return digest.hexdigest()


def _cache_path(out: str, name: str) -> str:
    return os.path.join(out, ".tflq-cache", f"{name}.json")


def _cached_outcome(out: str, spec: JobSpec, key: str) -> dict | None:
    try:
        with open(_cache_path(out, spec.name)) as f:
            record = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    if record.get("cache_key") != key:
        return None
    for artifact in record.get("artifacts", []):
        path = os.path.join(out, artifact["path"])  # relative to out (absolute in old records)
        if not os.path.isfile(path) or sha256_of(path) != artifact["sha256"]:
            return None
    return {**outcome.relative_outcome(record, out), "cached": True, "seconds": 0.0,
            "build_seconds": record.get("seconds")}


# ---- running one job in a fresh process ----


def _job_env(payload: dict) -> dict:
    return {**os.environ, **payload.get("env", {})}


def execute_job(payload: dict) -> dict:
    """Runs one job in a fresh ``python -m tflq.batch.worker`` process and describes the outcome.

    ``payload`` holds ``name``, ``out``, ``log``, ``timeout``, ``max_memory_mb``,
    ``threads``, ``env`` (variables for the worker, e.g. ``TF_USE_LEGACY_KERAS``), the job's
    ``kind`` and the job (its ``to_dict()``). Runs anywhere tflq is installed (the Ray backend ships
    it to cluster nodes).
    """
    start = time.perf_counter()
    os.makedirs(os.path.dirname(payload["log"]), exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tflq-job-") as work:
        job_file = os.path.join(work, "job.json")
        result_file = os.path.join(work, "result.json")
        with open(job_file, "w") as f:
            json.dump({**payload, "result": result_file}, f)
        memory = payload.get("max_memory_mb")

        def limit_memory():  # runs in the child before exec
            if memory:
                limit = int(memory) * 1024 * 1024
                resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

        status = error = None
        with open(payload["log"], "wb") as log:
            process = subprocess.Popen([sys.executable, "-m", "tflq.batch.worker", job_file],
                                       stdout=log, stderr=subprocess.STDOUT, env=_job_env(payload),
                                       preexec_fn=limit_memory, start_new_session=True)
            try:
                code = process.wait(timeout=payload["timeout"])
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                code = None
                status = STATUS_TIMEOUT
                error = f"timed out after {payload['timeout']:g} s and was killed"
        result = {}
        if os.path.exists(result_file):
            with open(result_file) as f:
                result = json.load(f)
    if code is not None:
        status, error = outcome.status_of_exit(code, result, payload["log"])
    return outcome.describe(payload, status, error, time.perf_counter() - start, result)


# ---- the batch ----


@dataclasses.dataclass(frozen=True)
class BatchResult:
    """Every job's outcome (the manifest records: paths relative to the batch folder)."""

    outcomes: tuple[dict, ...]
    manifest_path: str
    seconds: float

    @property
    def exit_code(self) -> int:
        """0 all good; 1 a job failed, hung or crashed; 3 a gate failed (and nothing else)."""
        statuses = {o["status"] for o in self.outcomes}
        if statuses - {STATUS_OK, STATUS_GATE}:
            return 1
        return runtime.EXIT_GATE if STATUS_GATE in statuses else 0


def _payload(spec: JobSpec, out: str, threads: int) -> dict:
    # The worker's tf.keras choice is fixed when it imports TensorFlow: a warm worker only
    # takes jobs asking for the choice it was started with (see tflq.batch.pool).
    legacy = os.environ.get("TF_USE_LEGACY_KERAS", "1")
    return {"name": spec.name, "out": spec.out, "log": os.path.join(out, "logs", f"{spec.name}.log"),
            "timeout": spec.timeout, "max_memory_mb": spec.max_memory_mb, "threads": threads,
            "env": {"TF_USE_LEGACY_KERAS": legacy}, "kind": spec.kind, "job": spec.job.to_dict()}


def _write_manifest(out: str, spec: BatchSpec, outcomes: dict, started: str, seconds: float,
                    backend: str, workers: int, policy: pool.WorkerPolicy) -> str:
    manifest = {
        "schema_version": 2, "paths": "relative to this manifest's folder",
        "spec": os.path.relpath(os.path.abspath(spec.path), os.path.abspath(out)),
        "started_utc": started, "seconds": seconds, "backend": backend, "workers": workers,
        "worker_policy": policy.to_dict(), "versions": versions(),
        "jobs": [outcomes[s.name] for s in spec.jobs if s.name in outcomes],
    }
    path = os.path.join(out, "manifest.json")
    write_atomic(path, report.to_json(manifest))
    return path


def run_batch(spec: BatchSpec, out: str, workers: int = 1, backend: str = "local",
              ray_address: str | None = None, force: bool = False, progress: bool = False,
              policy: pool.WorkerPolicy | None = None) -> BatchResult:
    """Runs every job of a checked spec, longest first; returns the outcomes and writes
    manifest.json.

    Args:
      spec: from :func:`load_spec`.
      out: the batch output folder.
      workers: jobs run at once (local workers or Ray actors/tasks).
      backend: ``local`` or ``ray``.
      ray_address: for Ray: ``auto``, ``HOST:PORT``, or None to start a local Ray.
      force: rebuild jobs whose cache record matches.
      progress: show a progress bar with an ETA on stderr.
      policy: isolation and worker recycling; None takes the spec's ``[workers]`` table.
    """
    import datetime

    if workers < 1:
        raise ValueError(f"workers must be at least 1. Received: workers={workers}")
    if backend not in BACKENDS:
        raise ValueError(f"Unknown backend {backend!r}. Available: {list(BACKENDS)}")
    policy = policy or spec.policy
    runtime.check_output_dir(out)
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    start = time.perf_counter()
    history = schedule.previous_seconds(out, [j.name for j in spec.jobs])
    os.makedirs(os.path.join(out, ".tflq-cache"), exist_ok=True)
    outcomes, todo, keys = {}, {}, {}
    for job in spec.jobs:
        keys[job.name] = cache_key(job)
        cached = None if force else _cached_outcome(out, job, keys[job.name])
        if cached is not None:
            outcomes[job.name] = cached
        else:
            todo[job.name] = job
    order, estimates = schedule.longest_first(list(todo), history)
    threads = max(1, (os.cpu_count() or 1) // max(1, min(workers, len(todo) or 1)))
    payloads = [_payload(todo[name], out, threads) for name in order]
    run = _run_local if backend == "local" else functools.partial(ray_backend.run_ray,
                                                                    execute=execute_job)
    bar = schedule.ProgressBar(progress, estimates)
    try:
        for finished in run(payloads, workers, policy, ray_address):
            name = finished["name"]
            finished = {**outcome.relative_outcome(finished, out), "cache_key": keys[name]}
            outcomes[name] = finished
            if finished["status"] in (STATUS_OK, STATUS_GATE):
                write_atomic(_cache_path(out, name), report.to_json(finished))
            bar.update(name)
            # Written after every job: an interrupted batch leaves an accurate manifest.
            _write_manifest(out, spec, outcomes, started, time.perf_counter() - start, backend,
                            workers, policy)
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    path = _write_manifest(out, spec, outcomes, started, seconds, backend, workers, policy)
    return BatchResult(outcomes=tuple(outcomes[j.name] for j in spec.jobs), manifest_path=path,
                       seconds=seconds)


def _run_local(payloads: list[dict], workers: int, policy: pool.WorkerPolicy, _address=None):
    """Yields outcomes as jobs finish; ``workers`` threads take jobs in the given order, each
    on its own warm worker (or a fresh process per job)."""
    if not payloads:
        return
    jobs, results, slots = queue.SimpleQueue(), queue.SimpleQueue(), []
    for payload in payloads:
        jobs.put(payload)

    def serve(slot):
        while True:
            try:
                payload = jobs.get_nowait()
            except queue.Empty:
                break
            try:
                results.put(slot.run(payload) if slot else execute_job(payload))
            except Exception as e:
                results.put(outcome.runner_error(payload, e))
        if slot:
            slot.close()

    for _ in range(min(workers, len(payloads))):
        slots.append(pool.WarmSlot(policy) if policy.isolation == "warm" else None)
        threading.Thread(target=serve, args=(slots[-1],), daemon=True).start()
    try:
        for _ in payloads:
            yield results.get()
    finally:  # interrupted: no worker outlives the batch
        for slot in slots:
            if slot:
                slot.kill()


def format_summary(result: BatchResult) -> str:
    """A table of every job: status, seconds, int8/first-mode accuracy, error."""
    lines = ["| job | status | seconds | modes | accuracy | Δ pp | error |", "|" + "---|" * 7]
    for o in result.outcomes:
        modes = o.get("metrics", {}).get("modes", {})
        first = next(iter(modes.values()), {})
        status = o["status"] + (" (cached)" if o.get("cached") else "")
        accuracy = first.get("accuracy")
        drop = first.get("accuracy_drop_pp")
        lines.append(
            f"| {o['name']} | {status} | {o['seconds']:.1f} | {','.join(modes) or '–'} | "
            f"{'–' if accuracy is None else f'{100 * accuracy:.2f}'} | "
            f"{'–' if drop is None else f'{drop:+.2f}'} | {(o.get('error') or '')[:120]} |")
    return "\n".join(lines)

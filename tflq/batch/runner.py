"""Batch conversion: job specs, isolated worker processes, an incremental cache, backends.

A spec (TOML, or YAML) lists jobs with shared defaults; every job runs ``tflq.batch.worker`` in
its own process with a time limit (and optionally a memory limit), so a crash, a hang or
running out of memory fails that job only. Finished jobs leave a cache record keyed by the
model's bytes, a fingerprint of the data, the job's settings and the versions of tflq,
TensorFlow and LiteRT; an unchanged job is skipped and its artifacts reused, which also
makes an interrupted batch resume where it stopped. ``manifest.json`` records every job.

Importing this module does not import TensorFlow: a fully cached batch never loads it.

Spec example (paths are relative to the spec file)::

    [defaults]
    data = "calib.npz"
    eval_data = "eval.npz"
    modes = ["int8"]
    max_accuracy_drop = 1.0

    [output]
    layout = "{name}"          # folder per job under --out

    [[jobs]]
    name = "cnn"
    model = "models/cnn.keras"

    [[jobs]]
    model = "models/mlp.h5"    # name defaults to the model's stem
    modes = ["dynamic", "int8"]
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import importlib.util
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

from tflq import report, runtime
from tflq.batch.spec import BatchSpec, JobSpec
from tflq.factories import FACTORY_RE
from tflq.fileio import sha256_of, update_digest

__all__ = ["STATUS_OK", "STATUS_GATE", "STATUS_FAILED", "STATUS_TIMEOUT", "STATUS_CRASHED",
    "BACKENDS", "versions", "cache_key", "execute_job", "BatchResult", "run_batch",
    "format_summary"]

STATUS_OK = "ok"
STATUS_GATE = "gate_failed"
STATUS_FAILED = "failed"
STATUS_TIMEOUT = "timeout"
STATUS_CRASHED = "crashed"
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
    for label in ("model", "data", "eval_data"):
        value = getattr(spec.job, label)
        digest.update(f"\0{label}\0".encode())
        if value:
            _hash_path(digest, value)
    settings = spec.job.settings()
    settings["gates"] = spec.job.gates.to_dict()
    digest.update(json.dumps(settings, sort_keys=True).encode())
    digest.update(json.dumps(versions(), sort_keys=True).encode())
    return digest.hexdigest()


def _cache_path(out: str, name: str) -> str:
    return os.path.join(out, ".tflq-cache", f"{name}.json")


def _artifacts(folder: str) -> list[dict]:
    found = []
    if os.path.isdir(folder):
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            if os.path.isfile(path) and not name.startswith("."):
                found.append({"path": path, "sha256": sha256_of(path),
                              "size_bytes": os.path.getsize(path)})
    return found


def _cached_outcome(out: str, spec: JobSpec, key: str) -> dict | None:
    try:
        with open(_cache_path(out, spec.name)) as f:
            record = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    if record.get("cache_key") != key:
        return None
    for artifact in record.get("artifacts", []):
        if not os.path.isfile(artifact["path"]) or sha256_of(artifact["path"]) != artifact["sha256"]:
            return None
    return {**record, "cached": True, "seconds": 0.0, "build_seconds": record.get("seconds")}


# ---- running one job ----


def _metrics(report_path: str) -> dict:
    try:
        with open(report_path) as f:
            rep = json.load(f)
    except (OSError, json.JSONDecodeError):
        return {}
    return {
        "float_accuracy": rep.get("float", {}).get("accuracy"),
        "modes": {m["mode"]: {k: m.get(k) for k in ("accuracy", "accuracy_drop_pp",
                                                   "top1_agreement", "size_bytes", "size_ratio")}
                  for m in rep.get("modes", [])},
        "gates_passed": rep.get("gates", {}).get("passed"),
    }


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def execute_job(payload: dict) -> dict:
    """Runs one job in a fresh ``python -m tflq.batch.worker`` process and describes the outcome.

    ``payload`` holds ``name``, ``out``, ``log``, ``timeout``, ``max_memory_mb``,
    ``threads`` and the job (``ConvertJob.to_dict()``). Runs anywhere tflq is installed (the
    Ray backend ships it to cluster nodes).
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

        status, error = STATUS_OK, None
        with open(payload["log"], "wb") as log:
            process = subprocess.Popen([sys.executable, "-m", "tflq.batch.worker", job_file],
                                       stdout=log, stderr=subprocess.STDOUT,
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
        if code < 0:
            status = STATUS_CRASHED
            hint = " (out of memory?)" if -code == signal.SIGKILL else ""
            error = f"worker killed by {_signal_name(code)}{hint}"
        elif code == runtime.EXIT_GATE:
            status, error = STATUS_GATE, "; ".join(result.get("gate_failures", []))
        elif code != 0:
            status = STATUS_FAILED
            error = result.get("error") or f"worker exited with code {code}; see {payload['log']}"
    report_path = os.path.join(payload["out"], "report.json")
    produced = status in (STATUS_OK, STATUS_GATE)
    return {
        "name": payload["name"], "status": status, "error": error, "cached": False,
        "seconds": time.perf_counter() - start, "log": payload["log"], "out": payload["out"],
        "artifacts": _artifacts(payload["out"]) if produced else [],
        "metrics": _metrics(report_path) if produced else {},
        "peak_rss_mb": result.get("peak_rss_mb"),
    }


# ---- the batch ----


@dataclasses.dataclass(frozen=True)
class BatchResult:
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
    return {"name": spec.name, "out": spec.out, "log": os.path.join(out, "logs", f"{spec.name}.log"),
            "timeout": spec.timeout, "max_memory_mb": spec.max_memory_mb, "threads": threads,
            "job": spec.job.to_dict()}


def _write_manifest(out: str, spec: BatchSpec, outcomes: dict, started: str, seconds: float,
                    backend: str, workers: int) -> str:
    from tflq.fileio import write_atomic

    manifest = {
        "schema_version": 1, "spec": os.path.abspath(spec.path), "started_utc": started,
        "seconds": seconds, "backend": backend, "workers": workers, "versions": versions(),
        "jobs": [outcomes[s.name] for s in spec.jobs if s.name in outcomes],
    }
    path = os.path.join(out, "manifest.json")
    write_atomic(path, report.to_json(manifest))
    return path


def run_batch(spec: BatchSpec, out: str, workers: int = 1, backend: str = "local",
              ray_address: str | None = None, force: bool = False,
              progress: Callable | None = None) -> BatchResult:
    """Runs every job of a checked spec; returns the outcomes and writes manifest.json.

    Args:
      spec: from :func:`load_spec`.
      out: the batch output folder.
      workers: jobs run at once (local processes or Ray tasks).
      backend: ``local`` or ``ray``.
      ray_address: for Ray: ``auto``, ``HOST:PORT``, or None to start a local Ray.
      force: rebuild jobs whose cache record matches.
      progress: wraps an iterator of finished outcomes (e.g. a tqdm factory).
    """
    import datetime

    if workers < 1:
        raise ValueError(f"workers must be at least 1. Received: workers={workers}")
    if backend not in BACKENDS:
        raise ValueError(f"Unknown backend {backend!r}. Available: {list(BACKENDS)}")
    runtime.check_output_dir(out)
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    start = time.perf_counter()
    os.makedirs(os.path.join(out, ".tflq-cache"), exist_ok=True)
    outcomes, todo, keys = {}, [], {}
    for job in spec.jobs:
        keys[job.name] = cache_key(job)
        cached = None if force else _cached_outcome(out, job, keys[job.name])
        if cached is not None:
            outcomes[job.name] = cached
        else:
            todo.append(job)
    threads = max(1, (os.cpu_count() or 1) // max(1, min(workers, len(todo) or 1)))
    payloads = [_payload(job, out, threads) for job in todo]
    finished = _run_local(payloads, workers) if backend == "local" else _run_ray(
        payloads, workers, ray_address)
    if progress is not None:
        finished = progress(finished, total=len(payloads))
    for outcome in finished:
        name = outcome["name"]
        outcome["cache_key"] = keys[name]
        outcomes[name] = outcome
        if outcome["status"] in (STATUS_OK, STATUS_GATE):
            from tflq.fileio import write_atomic

            write_atomic(_cache_path(out, name), report.to_json(outcome))
        # Written after every job: an interrupted batch leaves an accurate manifest.
        _write_manifest(out, spec, outcomes, started, time.perf_counter() - start, backend,
                        workers)
    seconds = time.perf_counter() - start
    path = _write_manifest(out, spec, outcomes, started, seconds, backend, workers)
    return BatchResult(outcomes=tuple(outcomes[j.name] for j in spec.jobs), manifest_path=path,
                       seconds=seconds)


def _run_local(payloads: list[dict], workers: int):
    if not payloads:
        return
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(execute_job, p) for p in payloads]
        for future in concurrent.futures.as_completed(futures):
            yield future.result()


def _run_ray(payloads: list[dict], workers: int, address: str | None):
    if not payloads:
        return
    try:
        import ray
    except ImportError as e:
        raise ValueError("The ray backend needs Ray: pip install 'ray[default]'.") from e
    started_here = not ray.is_initialized()
    if started_here:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            # A private Ray on this machine, bound to loopback only.
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
                     _node_ip_address="127.0.0.1")
    try:
        remote = ray.remote(num_cpus=1, max_retries=0)(execute_job)
        pending = [remote.remote(p) for p in payloads]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])
    finally:
        if started_here:
            ray.shutdown()


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

"""Warm workers: long-lived ``python -m tflq.batch.worker --serve`` processes.

A worker imports TensorFlow once and then takes jobs one after another over a JSON-lines
protocol on its stdin/stdout (see :mod:`tflq.batch.worker`). Isolation stays that of a
process per job: a worker that crashes (a signal), runs past the job's ``timeout`` or
grows past ``max_memory_mb`` resident memory is killed (its whole process group) and
replaced, and only the job it was running fails. Inside the worker the job's
``max_memory_mb`` is also its address-space limit (``RLIMIT_AS``), as for a fresh process,
so an allocation too large raises ``MemoryError`` in the job. A worker is also replaced
after ``max_jobs_per_worker`` jobs, when its resident memory after a job exceeds
``max_worker_rss_mb``, after a job that raised ``MemoryError`` or an unexpected error, and
when a job needs other threads or another ``TF_USE_LEGACY_KERAS`` choice.

:class:`WarmSlot` owns one worker at a time; the local backend runs one slot per thread,
the Ray backend one per actor (:class:`WorkerHost`). No TensorFlow import here.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import select
import signal
import subprocess
import sys
import time

import tflq.batch.outcome as outcome

__all__ = ["ISOLATIONS", "STARTUP_TIMEOUT", "WorkerPolicy", "rss_of", "WarmWorker", "WarmSlot",
    "WorkerHost", "ray_node_id"]

ISOLATIONS = ("warm", "process")
STARTUP_TIMEOUT = 600.0  # seconds for a worker to import TensorFlow (a loaded machine is slow)
POLL_SECONDS = 0.2  # how often the parent checks a running job's resident memory


@dataclasses.dataclass(frozen=True)
class WorkerPolicy:
    """How jobs are isolated and when a warm worker is replaced.

    Attributes:
      isolation: ``warm`` (long-lived workers) or ``process`` (a fresh process per job).
      max_jobs_per_worker: jobs a warm worker runs before it is replaced.
      max_worker_rss_mb: replace a warm worker whose resident memory after a job exceeds
        this (None: no bound).
    """

    isolation: str = "warm"
    max_jobs_per_worker: int = 50
    max_worker_rss_mb: int | None = None

    def __post_init__(self):
        if self.isolation not in ISOLATIONS:
            raise ValueError(f"Unknown isolation {self.isolation!r}. Available: {list(ISOLATIONS)}")
        if isinstance(self.max_jobs_per_worker, bool) or not isinstance(
                self.max_jobs_per_worker, int) or self.max_jobs_per_worker < 1:
            raise ValueError("max_jobs_per_worker must be a positive integer. Received: "
                             f"max_jobs_per_worker={self.max_jobs_per_worker!r}")
        bound = self.max_worker_rss_mb
        if bound is not None and (isinstance(bound, bool) or not isinstance(bound, int) or bound < 1):
            raise ValueError("max_worker_rss_mb must be a positive integer (MB). Received: "
                             f"max_worker_rss_mb={bound!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def rss_of(pid: int) -> float | None:
    """Resident memory of a process in MB (Linux ``/proc``), None where unknown."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class WarmWorker:
    """One ``tflq.batch.worker --serve`` process in its own process group."""

    def __init__(self, threads: int, env: dict, log_path: str):
        self.threads, self.env, self.log_path = threads, dict(env), log_path
        self.jobs_done = 0
        self._buffer = b""
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tflq.batch.worker", "--serve", "--threads", str(threads)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                env={**os.environ, **self.env}, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.process.pid

    def send(self, payload: dict) -> bool:
        """Sends one job; False when the worker is gone."""
        try:
            self.process.stdin.write((json.dumps(payload) + "\n").encode())
            self.process.stdin.flush()
            return True
        except OSError:  # BrokenPipeError: it died
            return False

    def receive(self, timeout: float, max_rss_mb: float | None = None):
        """Waits for the next answer line.

        Returns:
          ``("message", dict)``; ``("timeout", None)``; ``("exited", returncode)``; or
          ``("memory", rss_mb)`` when the worker's resident memory passed ``max_rss_mb``.
        """
        deadline = time.monotonic() + timeout
        fd = self.process.stdout.fileno()
        while True:
            if b"\n" in self._buffer:
                line, self._buffer = self._buffer.split(b"\n", 1)
                return "message", json.loads(line)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout", None
            readable, _, _ = select.select([fd], [], [], min(POLL_SECONDS, remaining))
            if readable:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    return "exited", self.process.wait()
                self._buffer += chunk
            if max_rss_mb:
                rss = rss_of(self.pid)
                if rss is not None and rss > max_rss_mb:
                    return "memory", rss

    def kill(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait()
        self._close_pipes()

    def close(self, grace: float = 10.0) -> None:
        """End of input: the worker exits by itself; killed if it has not after ``grace``."""
        try:
            self.process.stdin.close()
            self.process.wait(timeout=grace)
        except (OSError, subprocess.TimeoutExpired):
            self.kill()
        self._close_pipes()

    def _close_pipes(self) -> None:
        for pipe in (self.process.stdin, self.process.stdout):
            try:
                pipe.close()
            except OSError:
                pass


class WarmSlot:
    """Runs jobs one after another on one warm worker, replacing it when it fails or is due."""

    _ids = itertools.count()

    def __init__(self, policy: WorkerPolicy, startup_timeout: float = STARTUP_TIMEOUT):
        self.policy, self.startup_timeout = policy, startup_timeout
        self.worker: WarmWorker | None = None
        self.slot = next(self._ids)
        self.started = 0

    def _start(self, payload: dict) -> str | None:
        """Starts a worker for ``payload``'s threads and environment; the error or None."""
        self.started += 1
        log = os.path.join(os.path.dirname(payload["log"]), "workers",
                           f"worker-{os.getpid()}-{self.slot}-{self.started}.log")
        worker = WarmWorker(payload["threads"], payload.get("env", {}), log)
        kind, message = worker.receive(self.startup_timeout)
        if kind == "message" and message.get("ready"):
            self.worker = worker
            return None
        worker.kill()
        why = {"timeout": f"not ready after {self.startup_timeout:g} s",
               "exited": f"exit code {message}"}.get(kind, f"unexpected {message!r}")
        return f"warm worker failed to start ({why}); see {log}"

    def _recycle_reason(self, answer: dict) -> str | None:
        if answer.get("recycle"):
            return answer["recycle"]
        if self.worker.jobs_done >= self.policy.max_jobs_per_worker:
            return f"{self.worker.jobs_done} jobs done (max_jobs_per_worker)"
        bound, rss = self.policy.max_worker_rss_mb, answer.get("rss_mb")
        if bound and rss and rss > bound:
            return f"resident memory {rss:.0f} MB > max_worker_rss_mb={bound}"
        return None

    def run(self, payload: dict) -> dict:
        """Runs one job; returns its outcome (:func:`tflq.batch.outcome.describe`)."""
        worker = self.worker
        if worker and (worker.env != payload.get("env", {}) or worker.threads != payload["threads"]):
            self.close()
        startup = 0.0
        if self.worker is None:
            start = time.perf_counter()
            error = self._start(payload)
            startup = time.perf_counter() - start
            if error:
                return outcome.describe(payload, outcome.STATUS_FAILED, error, startup)
        worker = self.worker
        os.makedirs(os.path.dirname(payload["log"]), exist_ok=True)
        start = time.perf_counter()
        if worker.send(payload):
            kind, message = worker.receive(payload["timeout"], payload.get("max_memory_mb"))
        else:
            kind, message = "exited", worker.process.wait()
        seconds = time.perf_counter() - start
        info = {"pid": worker.pid, "job_number": worker.jobs_done + 1,
                "startup_seconds": startup}
        if kind == "message":
            worker.jobs_done += 1
            status, error = outcome.status_of_exit(message["exit_code"], message, payload["log"])
            info.update(rss_mb=message.get("rss_mb"), restore_seconds=message.get("restore_seconds"))
            reason = self._recycle_reason(message)
            if reason:
                info["recycled"] = reason
                self.close()
            return outcome.describe(payload, status, error, seconds, message, worker=info)
        worker.kill()
        self.worker = None
        info["recycled"] = kind
        if kind == "timeout":
            status, error = outcome.STATUS_TIMEOUT, (
                f"timed out after {payload['timeout']:g} s and was killed")
        elif kind == "memory":
            status, error = outcome.STATUS_FAILED, (
                f"out of memory: resident memory {message:.0f} MB exceeded max_memory_mb="
                f"{payload['max_memory_mb']}; the worker was killed")
        elif message < 0:
            status, error = outcome.status_of_exit(message, {}, payload["log"])
        else:
            status, error = outcome.STATUS_FAILED, (
                f"worker exited with code {message} before finishing; see {payload['log']}")
        return outcome.describe(payload, status, error, seconds, worker=info)

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
            self.worker = None

    def kill(self) -> None:
        if self.worker is not None:
            self.worker.kill()
            self.worker = None


def ray_node_id() -> str | None:
    """The Ray node this process runs on (inside a Ray worker), else None."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    return ray.get_runtime_context().get_node_id()


class WorkerHost:
    """A Ray actor body: one :class:`WarmSlot` that stays warm across the jobs it is given."""

    def __init__(self, policy: WorkerPolicy):
        self.slot = WarmSlot(policy)

    def run(self, payload: dict) -> dict:
        """Runs one job; its outcome also names the Ray node (``ray_node_id``)."""
        return {**self.slot.run(payload), "ray_node_id": ray_node_id()}

    def close(self) -> None:
        self.slot.close()

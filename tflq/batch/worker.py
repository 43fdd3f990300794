"""Batch job runner processes.

``python -m tflq.batch.worker job.json`` runs one job (fresh-process isolation): it reads
the payload written by :func:`tflq.batch.runner.execute_job`, runs the job and
writes ``{"exit_code", "error", "gate_failures", "files", "peak_rss_mb"}`` to the result
file. Exit code: the job's (0, 2 or 3), or 1 for an unexpected error or running out of
memory. Output goes to the job's log file.

``python -m tflq.batch.worker --serve [--threads N]`` is a warm worker
(:mod:`tflq.batch.pool`): it imports TensorFlow once, prints ``{"ready": ...}`` and then
reads one JSON payload per line on stdin, runs it with the job's output (C and Python)
redirected to the job's log and its memory limit as ``RLIMIT_AS``, and answers one JSON
line per job on its original stdout. Between jobs it puts back what a job may change: the
Keras sessions (layer-name counters, graphs), global custom objects, ``os.environ`` and
user modules imported by the job (a factory module registering custom objects is
imported afresh next time); every job starts from the same seeds. A job that raised
``MemoryError`` or an unexpected exception asks to be replaced (``recycle``). Objects from
start-up are frozen out of garbage collection (``gc.freeze``), so the collection after each
job only walks what the job created.

Both kinds watch their parent (:func:`watch_parent`): a worker whose parent died (a Ray actor
killed, its node lost, the batch process killed) kills itself and its process group instead
of finishing an orphaned job that a rerun elsewhere may be writing at the same time.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import resource
import signal
import sys
import sysconfig
import threading
import time
import traceback

__all__ = ["PARENT_POLL_SECONDS", "main", "run_payload", "serve", "watch_parent"]

PARENT_POLL_SECONDS = 0.5  # how often a worker checks that its parent is still alive


def watch_parent(poll: float = PARENT_POLL_SECONDS) -> threading.Thread:
    """Starts a daemon thread that kills this process (SIGKILL; its whole process group when
    it leads one) once its parent is gone: the parent process id changes when the parent
    dies and the process is re-parented.

    Workers run in their own session (``start_new_session``), so nothing else delivers the
    parent's death to them.
    """
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(poll)
        if os.getpgid(0) == os.getpid():  # its own group: the job's children go too
            os.killpg(os.getpid(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)

    thread = threading.Thread(target=watch, name="tflq-watch-parent", daemon=True)
    thread.start()
    return thread


def _peak_rss_mb() -> float:
    """Peak resident memory since :func:`_reset_peak` (VmHWM), or of the whole process."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_mb() -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _reset_peak() -> None:
    try:  # Linux >= 4.0: "5" resets VmHWM to the current RSS
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _seed_everything(seed: int) -> None:
    """The same starting point for every job: Python, numpy, TensorFlow (and Keras 3)."""
    from tflq.models import tf_keras

    tf_keras.utils.set_random_seed(seed)  # python random, numpy, tf.random
    if "keras" in sys.modules:
        sys.modules["keras"].utils.set_random_seed(seed)


def _job_kind(kind: str):
    """(job class, run function) of a payload's ``kind`` (those of :data:`tflq.batch.spec.JOB_KINDS`)."""
    if kind == "qat":
        from tflq.jobs import qat

        return qat.QATJob, qat.run_qat_job
    if kind == "compress":
        from tflq.jobs import compress

        return compress.CompressJob, compress.run_compress_job
    if kind != "convert":
        raise ValueError(f"Unknown job kind {kind!r}. Available: ['convert', 'qat', 'compress']")
    from tflq.jobs import convert

    return convert.ConvertJob, convert.run_job


def run_payload(payload: dict) -> dict:
    """Runs the job (convert, qat or compress: the payload's ``kind``) of one payload in this process; never raises.

    Returns:
      ``{"exit_code", "error", "gate_failures", "files", "recycle"}``; ``recycle`` says why
      this process should not take another job (out of memory, an unexpected error), or
      is None.
    """
    result = {"exit_code": 1, "error": None, "gate_failures": [], "files": [], "recycle": None}
    try:
        from tflq import runtime

        kind = payload.get("kind", "convert")
        job_class, run_job = _job_kind(kind)
        job = job_class.from_dict(payload["job"])
        _seed_everything(job.seed)
        print(f"tflq worker {os.getpid()}: {kind} job {payload['name']!r} -> {job.out}",
              flush=True)
        outcome = run_job(job)
        result.update(exit_code=outcome.exit_code, gate_failures=list(outcome.gate_failures),
                      files=list(outcome.files))
    except ValueError as e:
        result.update(exit_code=runtime.EXIT_BAD_INPUT, error=str(e).splitlines()[0])
    except MemoryError:
        result.update(exit_code=1, recycle="the job ran out of memory (MemoryError)",
                      error="out of memory (MemoryError); raise max_memory_mb or use a smaller "
                      "model or batch_size")
    except Exception as e:  # anything else: one line for the manifest, the trace in the log
        traceback.print_exc()
        first = str(e).splitlines()[0] if str(e) else ""
        result.update(exit_code=1, recycle=f"the job raised {type(e).__name__}",
                      error=f"{type(e).__name__}: {first}")
    return result


def main(argv: list[str]) -> int:
    watch_parent()
    if argv[1:2] == ["--serve"]:
        threads = int(argv[3]) if len(argv) == 4 and argv[2] == "--threads" else 0
        return serve(threads)
    if len(argv) != 2:
        print("usage: python -m tflq.batch.worker job.json\n"
              "       python -m tflq.batch.worker --serve [--threads N]", file=sys.stderr)
        return 2
    with open(argv[1]) as f:
        payload = json.load(f)
    _set_threads(int(payload.get("threads") or 0))
    result = run_payload(payload)
    result["peak_rss_mb"] = _peak_rss_mb()
    print(json.dumps(result), flush=True)
    with open(payload["result"], "w") as f:
        json.dump(result, f)
    return result["exit_code"]


def _set_threads(threads: int) -> None:
    if threads:
        from tflq.models import tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)


# ---- warm worker ----


def _kept_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {sys.prefix, sys.base_prefix, paths["stdlib"], paths["purelib"], paths["platlib"]}
    return tuple(os.path.realpath(r) + os.sep for r in roots)


class _State:
    """What a job may leave behind in this process, captured once and put back after each."""

    def __init__(self):
        from tflq.models import tf_keras

        self.environ = dict(os.environ)
        self.modules = set(sys.modules)
        self.tf_keras_objects = dict(tf_keras.utils.get_custom_objects())
        self.keras_objects = (dict(sys.modules["keras"].saving.get_custom_objects())
                              if "keras" in sys.modules else {})  # Keras 3 starts empty
        self.roots = _kept_roots()

    def _is_user_module(self, name: str) -> bool:
        if name == "tflq" or name.startswith(("tflq.", "__main__")):
            return False
        path = getattr(sys.modules.get(name), "__file__", None)
        return bool(path) and not os.path.realpath(path).startswith(self.roots)

    def restore(self) -> None:
        from tflq.models import tf_keras

        tf_keras.backend.clear_session()
        objects = tf_keras.utils.get_custom_objects()
        objects.clear()
        objects.update(self.tf_keras_objects)
        if "keras" in sys.modules:
            keras = sys.modules["keras"]
            keras.backend.clear_session(free_memory=False)  # one gc.collect() below
            objects = keras.saving.get_custom_objects()
            objects.clear()
            objects.update(self.keras_objects)
        for name in [m for m in set(sys.modules) - self.modules if self._is_user_module(m)]:
            del sys.modules[name]
        if os.environ != self.environ:
            os.environ.clear()
            os.environ.update(self.environ)
        gc.collect()


@contextlib.contextmanager
def _job_context(log_path: str, max_memory_mb: int | None):
    """Sends fds 1 and 2 to the job's log and caps the address space during the job."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
    with open(log_path, "wb") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    try:
        if max_memory_mb:
            limit = int(max_memory_mb) * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (min(limit, hard) if hard > 0 else limit, hard))
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def serve(threads: int = 0) -> int:
    """The warm worker's loop (see the module docstring); returns 0 at end of input."""
    protocol = os.fdopen(os.dup(1), "w")  # answers; fd 1 itself now goes to stderr (the log)
    os.dup2(2, 1)
    _set_threads(threads)
    # Everything a job needs, once: TensorFlow, tf_keras, Keras 3 (every model load asks
    # whether a model is a Keras 3 one), the converter, LiteRT.
    import keras  # noqa: F401

    import tflq.interpreter  # noqa: F401
    import tflq.jobs.compress  # noqa: F401
    import tflq.jobs.convert  # noqa: F401
    import tflq.jobs.qat  # noqa: F401
    import tflq.ptq.convert  # noqa: F401

    # The modules' objects live as long as the worker: kept out of every later collection,
    # which then costs a fraction of a second instead of seconds (measured in the benchmark).
    gc.collect()
    gc.freeze()
    state = _State()
    protocol.write(json.dumps({"ready": True, "pid": os.getpid(), "rss_mb": _rss_mb()}) + "\n")
    protocol.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        payload = json.loads(line)
        _reset_peak()
        with _job_context(payload["log"], payload.get("max_memory_mb")):
            result = run_payload(payload)
            result["peak_rss_mb"] = _peak_rss_mb()
        start = time.perf_counter()
        try:
            state.restore()
        except Exception as e:  # a job broke the process beyond repair: replace it
            result["recycle"] = f"restoring the worker's state failed: {type(e).__name__}: {e}"
        result["restore_seconds"] = time.perf_counter() - start
        result["rss_mb"] = _rss_mb()
        protocol.write(json.dumps(result) + "\n")
        protocol.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

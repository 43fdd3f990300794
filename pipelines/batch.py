r"""Convert many models at once from a job spec, each job in its own process.

  python -m pipelines.batch --spec jobs.toml --workers 2 --out batch_out
  tflq-batch --spec jobs.toml --backend ray --ray_address auto --out /shared/out

Installed as tflq-batch (same flags). Unchanged jobs are skipped (cache), an interrupted
batch resumes, --force rebuilds. Writes one folder per job, logs/<job>.log and
manifest.json, and prints a summary table.

Exit codes (the contract for nightly jobs and app builds): 0 every job succeeded; 1 a job
failed, hung or crashed (the others still ran), or an internal error (one "internal error:"
line, the traceback in <out>/error.log; finished jobs stay cached); 2 bad spec or flags
(nothing written, no job started); 3 a quality gate failed (and no job failed).
"""

from __future__ import annotations

import dataclasses
import sys

from absl import flags

from pipelines.common import check_no_arguments, define, guard, progress_setting, run_main
from tflq.jobs.convert import BACKEND_HELP

_SPEC = flags.DEFINE_string("spec", None, "Job spec (.toml, or .yaml/.yml).")
_OUT = define("string", "out", None, "Batch output folder (default: tflq_batch).")
_WORKERS = flags.DEFINE_integer("workers", 1, "Jobs run at once.")
_BACKEND = define("string", "backend", None, BACKEND_HELP)
_RAY_ADDRESS = flags.DEFINE_string(
    "ray_address", None, "Ray cluster: auto or HOST:PORT (default: start Ray on this machine).")
_FORCE = flags.DEFINE_bool("force", False, "Rebuild jobs even when their cache matches.")
_TIMEOUT = define("float", "timeout", None, "Seconds per job unless the spec sets timeout "
                  "(default: 3600).")
_QUIET = define("bool", "quiet", False, "No progress bar.")
_ISOLATION = flags.DEFINE_enum(
    "isolation", None, ["warm", "process"], "warm: long-lived isolated workers that import "
    "TensorFlow once; process: a fresh process per job (default: the spec's [workers], else warm).")
_MAX_JOBS_PER_WORKER = flags.DEFINE_integer(
    "max_jobs_per_worker", None, "Replace a warm worker after this many jobs (default: spec, else 50).")
_MAX_WORKER_RSS_MB = flags.DEFINE_integer(
    "max_worker_rss_mb", None, "Replace a warm worker whose resident memory after a job exceeds "
    "this many MB (default: spec, else no bound).")


def output_folder() -> str:
    return _OUT.value or "tflq_batch"


def main(argv) -> int:
    """Runs the command under the exit-code contract (see :func:`pipelines.common.guard`);
    an internal error keeps the jobs that finished (the batch's resumable cache)."""
    return guard(lambda: _batch(argv), output_folder(), keep_partial=True)


def _check_ray() -> None:
    """``--backend ray`` needs Ray installed: say so before anything is written."""
    try:
        import ray  # noqa: F401
    except ImportError as e:
        raise ValueError("--backend ray needs Ray, which is not installed here: "
                         "pip install 'tflq[ray]' (or use --backend local).") from e


def _batch(argv) -> int:
    check_no_arguments(argv)
    from tflq import batch, console

    out = output_folder()
    if not _SPEC.value:
        raise ValueError("--spec is required (a .toml or .yaml job spec).")
    if _WORKERS.value < 1:
        raise ValueError(f"--workers must be at least 1. Received: {_WORKERS.value}")
    if _TIMEOUT.value is not None and not 0 < _TIMEOUT.value < float("inf"):
        raise ValueError(f"--timeout must be a positive number of seconds. Received: {_TIMEOUT.value}")
    if (_BACKEND.value or "local") not in batch.BACKENDS:
        raise ValueError(f"Unknown --backend {_BACKEND.value!r} for pipelines.batch. "
                         f"Available: {list(batch.BACKENDS)}")
    if _BACKEND.value == "ray":
        _check_ray()
    from tflq.runtime import check_output_dir

    check_output_dir(out)
    spec = batch.load_spec(_SPEC.value, out, default_timeout=_TIMEOUT.value or
                           batch.DEFAULT_TIMEOUT)
    overrides = {"isolation": _ISOLATION.value, "max_jobs_per_worker": _MAX_JOBS_PER_WORKER.value,
                 "max_worker_rss_mb": _MAX_WORKER_RSS_MB.value}
    policy = dataclasses.replace(spec.policy, **{k: v for k, v in overrides.items()
                                                 if v is not None})

    result = batch.run_batch(spec, out, workers=_WORKERS.value, backend=_BACKEND.value or "local",
                             ray_address=_RAY_ADDRESS.value, force=_FORCE.value,
                             progress=console.wants_bars(progress_setting(_QUIET.value)),
                             policy=policy)
    print(batch.format_summary(result))
    print(f"\n{len(result.outcomes)} job(s) in {result.seconds:.1f} s; manifest: "
          f"{result.manifest_path}")
    bad = [o for o in result.outcomes if o["status"] != batch.STATUS_OK]
    for o in bad:
        print(f"{o['name']}: {o['status']}: {o['error']}", file=sys.stderr)
    return result.exit_code


def run() -> None:
    """The installed ``tflq-batch`` (and ``python -m pipelines.batch``)."""
    run_main(main, output_folder)


if __name__ == "__main__":
    run()

"""One batch job in its own process: ``python -m tflq.batch.worker job.json``.

Reads the payload written by :func:`tflq.batch.execute_job`, runs the conversion job, and
writes ``{"exit_code", "error", "gate_failures", "files", "peak_rss_mb"}`` to the result
file. Exit code: the job's (0, 2 or 3), or 1 for an unexpected error or running out of
memory. Output goes to the job's log file.
"""

from __future__ import annotations

import json
import resource
import sys
import traceback

__all__ = ["main"]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m tflq.batch.worker job.json", file=sys.stderr)
        return 2
    with open(argv[1]) as f:
        payload = json.load(f)
    result = {"exit_code": 1, "error": None, "gate_failures": [], "files": []}
    try:
        from tflq import runtime
        from tflq.jobs import convert as convert_job
        from tflq.models import tf

        threads = int(payload.get("threads") or 0)
        if threads:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        job = convert_job.ConvertJob.from_dict(payload["job"])
        print(f"tflq worker: job {payload['name']!r} -> {job.out}", flush=True)
        outcome = convert_job.run_job(job)
        result.update(exit_code=outcome.exit_code, gate_failures=list(outcome.gate_failures),
                      files=list(outcome.files))
    except ValueError as e:
        result.update(exit_code=runtime.EXIT_BAD_INPUT, error=str(e).splitlines()[0])
    except MemoryError:
        result.update(exit_code=1, error="out of memory (MemoryError); raise max_memory_mb or "
                      "use a smaller model or batch_size")
    except Exception as e:  # anything else: one line for the manifest, the trace in the log
        traceback.print_exc()
        result.update(exit_code=1, error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    result["peak_rss_mb"] = _peak_rss_mb()
    print(json.dumps(result), flush=True)
    with open(payload["result"], "w") as f:
        json.dump(result, f)
    return result["exit_code"]


if __name__ == "__main__":
    sys.exit(main(sys.argv))

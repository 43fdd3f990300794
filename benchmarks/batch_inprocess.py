"""The batch benchmark's reference: every job of a spec as a plain ``run_job`` call, one after
another, in this one Python process (no isolation, no cache). Prints one JSON line.

  python -m benchmarks.batch_inprocess jobs.toml out_folder
"""

from __future__ import annotations

import json
import sys
import time


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: python -m benchmarks.batch_inprocess jobs.toml out_folder", file=sys.stderr)
        return 2
    start = time.perf_counter()
    from tflq.batch import load_spec
    from tflq.jobs.convert import run_job

    spec = load_spec(argv[1], argv[2])
    imported = time.perf_counter() - start
    seconds, codes = [], []
    for job in spec.jobs:
        begin = time.perf_counter()
        codes.append(run_job(job.job).exit_code)
        seconds.append(time.perf_counter() - begin)
    print(json.dumps({"import_seconds": imported, "job_seconds": seconds, "exit_codes": codes}))
    return 0 if not any(codes) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))

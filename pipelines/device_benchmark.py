r"""Benchmark .tflite models on an Android device over adb, beside the desktop numbers.

  python -m pipelines.device_benchmark --report tflq_out/report.json \
      --benchmark_binary ~/bin/benchmark_model --threads 1,4 --delegates xnnpack,gpu
  tflq-device --model m_int8.tflite --benchmark_binary ~/bin/benchmark_model --out dev

You bring ``benchmark_model`` built for your phone's ABI; tflq never downloads it. With
``--report`` every model of a tflq report is benchmarked and the results are merged into
that report.json and report.md (desktop and device side by side); with ``--model`` the
results go to ``--out/device_results.json``. Installed as tflq-device (same flags).

Exit codes: 0 success; 1 internal error (traceback in <out>/error.log); 2 bad input or flags,
or a device problem (nothing written).
"""

from __future__ import annotations

import json
import os

from absl import flags

from pipelines.common import check_no_arguments, define, guard, run_main

_MODEL = define("string", "model", None, "Comma list of .tflite files to benchmark.")
_REPORT = define("string", "report", None, "A tflq report.json: benchmark all its models.")
_SERIAL = flags.DEFINE_string("serial", None, "Device serial (needed with several devices).")
_BENCHMARK_BINARY = flags.DEFINE_string(
    "benchmark_binary", None, "Your benchmark_model binary for the device's ABI.")
_THREADS = flags.DEFINE_string("threads", "1,4", "Comma list of thread counts.")
_DELEGATES = flags.DEFINE_string("delegates", "xnnpack",
                                 "Comma list of delegates: xnnpack, gpu, nnapi, cpu.")
_NUM_RUNS = flags.DEFINE_integer("num_runs", 50, "Timed runs per cell.")
_WARMUP_RUNS = flags.DEFINE_integer("warmup_runs", 1, "Warm-up runs per cell.")
_TASKSET = flags.DEFINE_string("taskset", None, "CPU mask to pin with taskset (e.g. f0).")
_OUT = define("string", "out", None, "Output folder (default: the report's folder, or "
                           "tflq_device).")
_ADB = flags.DEFINE_string("adb", "adb", "The adb executable.")
_TIMEOUT = define("float", "timeout", None, "Seconds allowed per adb command (default: 600).")


def _int_list(text: str, name: str) -> tuple[int, ...]:
    try:
        values = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError as e:
        raise ValueError(f"--{name} must be a comma list of integers. Received: {text!r}") from e
    return values


def _plan_and_report():
    from tflq import android

    if bool(_MODEL.value) == bool(_REPORT.value):
        raise ValueError("Pass exactly one of --model or --report.")
    report = None
    if _REPORT.value:
        try:
            with open(_REPORT.value) as f:
                report = json.load(f)
        except FileNotFoundError as e:
            raise ValueError(f"Report not found: {_REPORT.value!r}") from e
        except json.JSONDecodeError as e:
            raise ValueError(f"Report {_REPORT.value!r} is not valid JSON: {e}") from e
        if not isinstance(report, dict) or not isinstance(report.get("modes"), list) \
                or not report["modes"]:
            raise ValueError(f"Report {_REPORT.value!r} lists no models (no 'modes').")
        for i, m in enumerate(report["modes"]):
            if not isinstance(m, dict) or not isinstance(m.get("path"), str):
                raise ValueError(f"Report {_REPORT.value!r}: modes[{i}] has no 'path' (the "
                                 ".tflite file, relative to the report).")
        folder = os.path.dirname(os.path.abspath(_REPORT.value))
        models = tuple(os.path.join(folder, m["path"]) for m in report["modes"])
    else:
        models = tuple(m.strip() for m in _MODEL.value.split(",") if m.strip())
    plan = android.BenchmarkPlan(
        models=models, threads=_int_list(_THREADS.value, "threads"),
        delegates=tuple(d.strip() for d in _DELEGATES.value.split(",") if d.strip()),
        warmup_runs=_WARMUP_RUNS.value, num_runs=_NUM_RUNS.value, taskset=_TASKSET.value)
    return plan, report


def output_folder() -> str:
    return _OUT.value or (os.path.dirname(os.path.abspath(_REPORT.value)) if _REPORT.value
                          else "tflq_device")


def main(argv) -> int:
    """Runs the command under the exit-code contract (see :func:`pipelines.common.guard`)."""
    return guard(lambda: _benchmark(argv), output_folder())


def _benchmark(argv) -> int:
    check_no_arguments(argv)
    from tflq import android
    from tflq import report as report_lib
    from tflq.fileio import write_atomic
    from tflq.jobs.common import report_files
    from tflq.runtime import check_output_dir

    plan, report = _plan_and_report()  # DeviceError is a ValueError: exit 2
    android.check_binary(_BENCHMARK_BINARY.value)
    out = output_folder()
    check_output_dir(out)
    adb = android.Adb(_ADB.value, timeout=_TIMEOUT.value or 600.0)
    results = android.run_matrix(adb, _BENCHMARK_BINARY.value, plan, serial=_SERIAL.value)
    os.makedirs(out, exist_ok=True)
    write_atomic(os.path.join(out, "device_results.json"), report_lib.to_json(results))
    if report is not None:
        merged = android.merge_into_report(report, results)
        for name, content in report_files(merged, png=False):  # json, md and html
            write_atomic(os.path.join(out, name), content)
        print(report_lib.format_device_table(merged["device"]))
    else:
        for run in results["runs"]:
            r = run["result"]
            print(f"{run['model']} [{run['delegate']}, {run['threads']} thread(s)]: "
                  f"{r['inference_avg_ms']:.3f} ms avg, peak {r['peak_memory_mb']} MB")
    print(f"wrote results to {os.path.abspath(out)}")
    return 0


def run() -> None:
    """The installed ``tflq-device`` (and ``python -m pipelines.device_benchmark``)."""
    run_main(main, output_folder)


if __name__ == "__main__":
    run()

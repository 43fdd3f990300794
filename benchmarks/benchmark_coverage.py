"""QAT coverage benchmark (writes JSON; not a timed test).

The 15 keras.applications architectures of the measured tfmot baseline (weights=None,
128x128): each is wrapped with tflq's default_int8 scheme, fitted one step on random data,
converted to int8 with the ranges it learned, and its float ops counted. Target: 15/15
converted with 0 float ops; every failure is listed with its error. The baseline is
measured in the same run: tfmot's own ``quantize_model`` is applied to each architecture
first, and the JSON records whether it wrapped it (and its error when not).

  python -m benchmarks.benchmark_coverage --out bench_coverage     # about 35 minutes
"""

from __future__ import annotations

import os
import time
import traceback

from absl import app, flags, logging

from pipelines.common import define

_OUT = define("string", "out", None, "Output folder (default: bench_coverage).")
_ONLY = flags.DEFINE_string("only", None, "Comma list of architectures to run (default: all).")
_SIZE = flags.DEFINE_integer("size", 128, "Input height and width.")

ARCHITECTURES = (
    "MobileNet", "MobileNetV2", "MobileNetV3Small", "MobileNetV3Large", "ResNet50",
    "ResNet50V2", "InceptionV3", "Xception", "VGG16", "DenseNet121", "NASNetMobile",
    "EfficientNetB0", "EfficientNetV2B0", "RegNetX002", "ConvNeXtTiny",
)


def tfmot_wraps(model) -> tuple[bool, str | None]:
    """(wrapped, error): whether tfmot's own ``quantize_model`` accepts ``model``."""
    from tflq.quant.quantizers import tfmot

    try:
        tfmot.quantization.keras.quantize_model(model)
    except Exception as e:  # the baseline's failures are what it measures: record them
        return False, _first_line(e)
    return True, None


def _first_line(error: Exception) -> str:
    lines = [ln for ln in str(error).splitlines() if ln.strip()]
    return f"{type(error).__name__}: {(lines[0] if lines else '')[:300]}"


def run_one(name: str, size: int, workdir: str) -> dict:
    import numpy as np

    from tflq import tflite_inspect
    from tflq.models import tf_keras
    from tflq.ptq import convert
    from tflq.quant import qat

    result = {"architecture": name, "tfmot_wrapped": None, "tfmot_error": None, "wrapped": False,
              "converted": False, "float_ops": None, "error": None}
    start = time.perf_counter()
    try:
        tf_keras.utils.set_random_seed(0)
        builder = getattr(tf_keras.applications, name)
        kwargs = {"input_shape": (size, size, 3), "weights": None, "classes": 10}
        if name == "NASNetMobile" and size != 224:
            kwargs["include_top"] = True
        model = builder(**kwargs)
        rng = np.random.default_rng(0)
        x = rng.uniform(0, 255, (8, size, size, 3)).astype(np.float32)
        for _ in range(3):  # refresh BatchNorm statistics: random init calibrates degenerately
            model(x, training=True)
        tfmot_start = time.perf_counter()
        result["tfmot_wrapped"], result["tfmot_error"] = tfmot_wraps(model)
        result["tfmot_seconds"] = time.perf_counter() - tfmot_start
        q = qat.quantize_model(model, "default_int8")
        result["wrapped"] = True
        q.compile(tf_keras.optimizers.SGD(1e-4),
                  tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        q.fit(x, rng.integers(0, 10, 8), batch_size=8, epochs=1, verbose=0)
        content = convert.convert_qat(q, workdir)
        result["converted"] = True
        result["float_ops"] = tflite_inspect.find_float_ops(content)
        result["size_bytes"] = len(content)
    except Exception as e:  # a benchmark lists every failure with its error
        result["error"] = _first_line(e)
        result["trace_tail"] = traceback.format_exc().splitlines()[-3:]
    result["seconds"] = time.perf_counter() - start - result.get("tfmot_seconds", 0.0)  # tflq's
    return result


def main(argv) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}", exitcode=2)
    logging.set_verbosity(logging.ERROR)
    import subprocess
    import sys
    import tempfile

    from tflq import runtime
    from tflq.fileio import write_atomic
    from tflq.report import to_json

    out = _OUT.value or "bench_coverage"
    os.makedirs(out, exist_ok=True)
    names = [n.strip() for n in _ONLY.value.split(",")] if _ONLY.value else list(ARCHITECTURES)
    unknown = [n for n in names if n not in ARCHITECTURES]
    if unknown:
        print(f"error: unknown architecture(s) {unknown}. Available: {list(ARCHITECTURES)}",
              file=sys.stderr)
        return 2
    results = []
    for name in names:  # one process per architecture: a crash or OOM costs only that one
        with tempfile.TemporaryDirectory() as work:
            result_file = os.path.join(work, "r.json")
            code = ("import json, sys; from benchmarks.benchmark_coverage import run_one; "
                    f"json.dump(run_one({name!r}, {_SIZE.value}, {work!r}), "
                    f"open({result_file!r}, 'w'))")
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                  cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            if os.path.exists(result_file):
                import json

                result = json.load(open(result_file))
            else:
                result = {"architecture": name, "tfmot_wrapped": None, "wrapped": False,
                          "converted": False, "float_ops": None, "error": f"process exited {proc.returncode}: "
                          + (proc.stderr.strip().splitlines() or [""])[-1][:300]}
        ok = result["converted"] and not result["float_ops"]
        print(f"{name}: {'ok' if ok else 'FAILED'} "
              f"{result.get('error') or (str(len(result['float_ops'])) + ' float ops')}",
              flush=True)
        results.append(result)
    passed = [r for r in results if r["converted"] and not r["float_ops"]]
    summary = {
        "benchmark": "coverage", "machine": runtime.machine_description(),
        "versions": runtime.versions(), "input_size": _SIZE.value, "scheme": "default_int8",
        "fully_integer": len(passed), "total": len(results),
        "wrapped": sum(r["wrapped"] for r in results),
        "converted": sum(r["converted"] for r in results),
        "target": f"{len(results)}/{len(results)} wrapped, converted, 0 float ops",
        "tfmot_quantize_model_baseline_wrapped": sum(r["tfmot_wrapped"] is True for r in results),
        "results": results,
    }
    path = os.path.join(out, "benchmark_coverage.json")
    write_atomic(path, to_json(summary))
    print(f"{len(passed)}/{len(results)} fully integer; wrote {path}")
    return 0


if __name__ == "__main__":
    app.run(main)

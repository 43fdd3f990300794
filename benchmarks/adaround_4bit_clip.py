"""AdaRound 4-bit weights against the plain int8 converter on the hard-PTQ models (issue 12):
the same photos, crops, seed and scoring as :mod:`benchmarks.benchmark_hard_ptq`, only the
two methods, so the 4-bit grid's clipping can be measured without the whole benchmark.

  nice -n 5 python -m benchmarks.adaround_4bit_clip --models resnet8_cifar10 --json out.json
      [--bench_adaround_iterations 200]
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

from benchmarks import benchmark_hard_ptq, corpus, photo_crops

__all__ = ["FLAGS", "measure", "main"]

# The flags are benchmark_hard_ptq's (imported above): --models, --num_calibration,
# --num_eval, --bench_adaround_iterations and --json (required here).
FLAGS = flags.FLAGS


def measure(name: str, iterations: int, num_cal: int, num_eval: int) -> dict:
    """{method: metrics} for the plain converter and ``--adaround --adaround_bits 4``."""
    from tflq import models
    from tflq.interpreter import TfliteModel
    from tflq.options import ConvertOptions
    from tflq.ptq import convert

    photos = corpus.fetch_images()
    split = photo_crops.split_photos(photos, seed=benchmark_hard_ptq.SEED)
    entry = corpus.MODELS[name]
    model = models.load_model(corpus.fetch_model(name))
    input_name = model.input_names[0]
    size = entry["input_size"]
    scale = 1.0 if entry["scale"] == "raw" else 1.0 / 255.0
    seed = benchmark_hard_ptq.SEED
    cal_x = photo_crops.make_crops([photos[k] for k in split[0]], num_cal, size, seed) * scale
    eval_x = photo_crops.make_crops([photos[k] for k in split[1]], num_eval, size,
                                    seed + 1) * scale
    samples = [{input_name: cal_x[i:i + 1]} for i in range(len(cal_x))]
    reference = np.concatenate([model.predict({input_name: eval_x[i:i + 50]})[0]
                                for i in range(0, len(eval_x), 50)])
    results = {}
    methods = {"converter_per_channel": ConvertOptions(),
               "adaround_4bit": ConvertOptions(adaround=True, adaround_bits=4,
                                               adaround_iterations=iterations)}
    for method, settings in methods.items():
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as workdir:
            conversion = convert.convert_model(model, "int8", workdir, lambda: iter(samples),
                                               settings)
        seconds = time.perf_counter() - start
        runner = TfliteModel(conversion.content)
        test = np.concatenate([runner.run({input_name: eval_x[i:i + 50]})[0]
                               for i in range(0, len(eval_x), 50)])
        results[method] = {**benchmark_hard_ptq.output_metrics(reference, test),
                           "seconds": seconds, "notes": list(conversion.notes)}
        if "adaround" in conversion.details:
            results[method]["adaround_layers"] = conversion.details["adaround"]["layers"]
        print(f"{name} {method}: top1 {results[method]['top1_agreement']:.3f} "
              f"sqnr {results[method]['sqnr_db']:.1f} dB ({seconds:.0f} s)", flush=True)
    return results


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not FLAGS.json:
        print("error: --json is required", file=sys.stderr)
        return 2
    from tflq import runtime
    from tflq.fileio import write_atomic

    summary = {"machine": runtime.machine_description(), "iterations": FLAGS.bench_adaround_iterations,
               "calibration_samples": FLAGS.num_calibration, "evaluation_samples": FLAGS.num_eval,
               "seed": benchmark_hard_ptq.SEED, "models": {}}
    for name in FLAGS.models:
        summary["models"][name] = measure(name, FLAGS.bench_adaround_iterations, FLAGS.num_calibration,
                                          FLAGS.num_eval)
        write_atomic(FLAGS.json, json.dumps(summary, indent=1, default=str).encode())
    print(f"wrote {os.path.abspath(FLAGS.json)}")
    return 0


if __name__ == "__main__":
    app.run(main)

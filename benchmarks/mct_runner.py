"""Sony MCT 2.6.1 (default PTQ or GPTQ) → full-int8 .tflite, in MCT's own virtualenv.

Runs under TensorFlow 2.15 (MCT's Keras side is disabled on TensorFlow >= 2.16), so it
imports nothing from tflq. Reads the float .h5 and the calibration samples (an .npz with
one array ``x`` of shape (N, ...), the same samples tflq calibrates on), quantizes, exports
with ``mct.exporter.keras_export_model`` (TFLITE serialization, INT8 quantization format:
int8 kernels on the stock TFLite ops) and prints one JSON line: the .tflite path and seconds.

  ~/.cache/tflq-mct-venv/bin/python benchmarks/mct_runner.py --model m.h5 --calibration c.npz \\
      --method gptq --gptq_epochs 5 --out m_mct_gptq.tflite
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

__all__ = ["strip_optional", "main"]


def strip_optional(config):
    """Drops the ``optional`` key of InputLayer configs (newer tf_keras writes it; Keras 2.15
    rejects it), recursively through nested models. Returns the changed config."""
    if isinstance(config, dict):
        if config.get("class_name") == "InputLayer" and isinstance(config.get("config"), dict):
            config["config"].pop("optional", None)
        for value in config.values():
            strip_optional(value)
    elif isinstance(config, list):
        for value in config:
            strip_optional(value)
    return config


def _load(path: str, work: str):
    import h5py
    import tensorflow as tf

    copy = os.path.join(work, "model.h5")
    shutil.copyfile(path, copy)
    with h5py.File(copy, "r+") as f:
        config = f.attrs["model_config"]
        config = json.loads(config.decode() if isinstance(config, bytes) else config)
        f.attrs["model_config"] = json.dumps(strip_optional(config))
    return tf.keras.models.load_model(copy, compile=False)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="float Keras .h5")
    parser.add_argument("--calibration", required=True, help=".npz with array x (N, ...)")
    parser.add_argument("--method", choices=("ptq", "gptq"), required=True)
    parser.add_argument("--gptq_epochs", type=int, default=5)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--out", required=True, help="output .tflite")
    args = parser.parse_args(argv)

    import model_compression_toolkit as mct
    import numpy as np
    from model_compression_toolkit.exporter import KerasExportSerializationFormat, QuantizationFormat

    x = np.load(args.calibration)["x"].astype(np.float32)

    def representative():
        for start in range(0, len(x), args.batch_size):
            yield [x[start:start + args.batch_size]]

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        model = _load(args.model, work)
        if args.method == "ptq":
            quantized, _ = mct.ptq.keras_post_training_quantization(model, representative)
        else:
            # No Hessian weighting (about 30 minutes on 2 cores for a MobileNetV2); MCT 2.6.1
            # then also needs its Hessian-based sample attention off.
            config = mct.gptq.get_keras_gptq_config(n_epochs=args.gptq_epochs,
                                                    use_hessian_based_weights=False,
                                                    use_hessian_sample_attention=False)
            quantized, _ = mct.gptq.keras_gradient_post_training_quantization(
                model, representative, gptq_config=config)
        tmp = os.path.join(work, "out.tflite")
        mct.exporter.keras_export_model(model=quantized, save_model_path=tmp,
                                        serialization_format=KerasExportSerializationFormat.TFLITE,
                                        quantization_format=QuantizationFormat.INT8)
        shutil.move(tmp, args.out + ".tmp")
        os.replace(args.out + ".tmp", args.out)
    print(json.dumps({"tflite": args.out, "seconds": time.perf_counter() - start,
                      "calibration_samples": int(len(x)), "method": args.method,
                      "gptq_epochs": args.gptq_epochs if args.method == "gptq" else None,
                      "mct": mct.__version__}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

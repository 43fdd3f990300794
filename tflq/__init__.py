"""tflq: Keras models to deployable, quantized TensorFlow Lite models, with proof.

The front door takes a model and data in memory (or as paths) and returns a result that
holds every .tflite as bytes, the metrics and the report, and shows as the report in
Jupyter; nothing is written until ``.save(out)``:

>>> import numpy as np
>>> import tflq
>>> from tflq.models import tf_keras
>>> model = tf_keras.Sequential([tf_keras.Input((64,)), tf_keras.layers.Dense(16)])
>>> x = np.random.default_rng(0).normal(size=(96, 64)).astype("float32")
>>> y = np.argmax(model.predict(x, verbose=0), axis=-1)
>>> result = tflq.convert(model, (x, y), modes=("float32", "int8"),
...                       num_calibration_samples=48, latency_runs=2, progress=False)
>>> sorted(result.modes)
['float32', 'int8']
>>> result.report["data"]["calibration"]["source"]
'<numpy arrays (96 samples)>'
>>> int8 = result.modes["int8"]
>>> int8.tflite[4:8], int8.size_bytes < result.modes["float32"].size_bytes
(b'TFL3', True)
>>> result.best("top1_agreement", max_size=int8.size_bytes).mode
'int8'

``tflq.qat``, ``tflq.compress`` and ``tflq.preflight`` work the same way
(:mod:`tflq.api`).

Names are imported lazily: ``import tflq`` is cheap, and TensorFlow is loaded only when a
name that needs it is first used. Loading it sets ``TF_USE_LEGACY_KERAS=1`` (unless already
set) first, so that tfmot's tf_keras works; Keras 3 models are accepted too.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "convert": "tflq.api",
    "qat": "tflq.api",
    "compress": "tflq.api",
    "preflight": "tflq.api",
    "Result": "tflq.jobs.result",
    "ModeResult": "tflq.jobs.result",
    "ALL_MODES": "tflq.options",
    "ConvertOptions": "tflq.options",
    "Mode": "tflq.options",
    "parse_modes": "tflq.options",
    "DataOptions": "tflq.data",
    "open_data": "tflq.data",
    "sample_indices": "tflq.sampling",
    "convert_model": "tflq.ptq.convert",
    "find_float_ops": "tflq.tflite_inspect",
    "write_atomic": "tflq.fileio",
    "TfliteModel": "tflq.interpreter",
    "dequantize": "tflq.interpreter",
    "measure_latency": "tflq.interpreter",
    "quantize": "tflq.interpreter",
    "LoadedModel": "tflq.models",
    "load_model": "tflq.models",
    "wrap_model": "tflq.models",
    "accuracy": "tflq.metrics",
    "cosine_similarity": "tflq.metrics",
    "sqnr_db": "tflq.metrics",
    "top1_agreement": "tflq.metrics",
    "ConvertJob": "tflq.jobs.convert",
    "JobResult": "tflq.jobs.common",
    "run_job": "tflq.jobs.convert",
    "Gates": "tflq.report",
    "QATJob": "tflq.jobs.qat",
    "run_qat_job": "tflq.jobs.qat",
    "CompressJob": "tflq.jobs.compress",
    "run_compress_job": "tflq.jobs.compress",
    "PreflightJob": "tflq.jobs.preflight",
    "run_preflight_job": "tflq.jobs.preflight",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tflq' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)

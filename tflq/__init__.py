"""tflq: Keras models to deployable, quantized TensorFlow Lite models, with proof.

Names are imported lazily: ``import tflq`` is cheap, and TensorFlow is loaded only when a
name that needs it is first used. Loading it sets ``TF_USE_LEGACY_KERAS=1`` (unless already
set) first, so that tfmot's tf_keras works; Keras 3 models are accepted too.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "ALL_MODES": "tflq.options",
    "ConvertOptions": "tflq.options",
    "Mode": "tflq.options",
    "parse_modes": "tflq.options",
    "DataOptions": "tflq.calibration",
    "open_data": "tflq.calibration",
    "sample_indices": "tflq.calibration",
    "convert_model": "tflq.convert",
    "find_float_ops": "tflq.convert",
    "write_atomic": "tflq.convert",
    "TfliteModel": "tflq.interpreter",
    "dequantize": "tflq.interpreter",
    "measure_latency": "tflq.interpreter",
    "quantize": "tflq.interpreter",
    "LoadedModel": "tflq.keras_compat",
    "load_model": "tflq.keras_compat",
    "wrap_model": "tflq.keras_compat",
    "accuracy": "tflq.metrics",
    "cosine_similarity": "tflq.metrics",
    "sqnr_db": "tflq.metrics",
    "top1_agreement": "tflq.metrics",
    "ConvertJob": "tflq.pipeline",
    "JobResult": "tflq.pipeline",
    "run_job": "tflq.pipeline",
    "Gates": "tflq.report",
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

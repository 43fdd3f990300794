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

"""tflq: Keras models to deployable, quantized TensorFlow Lite models, with proof.

Importing tflq sets ``TF_USE_LEGACY_KERAS=1`` (unless already set) before TensorFlow is
imported, so that tfmot's tf_keras works; Keras 3 models are accepted too.
"""

from tflq.calibration import DataOptions, open_data, sample_indices
from tflq.convert import (
    ALL_MODES,
    ConvertOptions,
    Mode,
    convert_model,
    find_float_ops,
    parse_modes,
)
from tflq.interpreter import TfliteModel, dequantize, measure_latency, quantize
from tflq.keras_compat import LoadedModel, load_model, wrap_model
from tflq.metrics import accuracy, cosine_similarity, sqnr_db, top1_agreement
from tflq.pipeline import ConvertJob, JobResult, run_job
from tflq.report import Gates

__version__ = "0.1.0"

__all__ = [
    "ALL_MODES",
    "ConvertJob",
    "ConvertOptions",
    "DataOptions",
    "Gates",
    "JobResult",
    "LoadedModel",
    "Mode",
    "TfliteModel",
    "accuracy",
    "convert_model",
    "cosine_similarity",
    "dequantize",
    "find_float_ops",
    "load_model",
    "measure_latency",
    "open_data",
    "parse_modes",
    "quantize",
    "run_job",
    "sample_indices",
    "sqnr_db",
    "top1_agreement",
    "wrap_model",
]

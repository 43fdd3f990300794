"""The front door for notebooks and scripts: ``tflq.convert``, ``tflq.qat``,
``tflq.compress`` and ``tflq.preflight`` take a model and data as paths or in memory (Keras
model objects; numpy arrays, dicts, ``(x, y)``, ``tf.data.Dataset``, functions), run the same
job the command line runs (:mod:`tflq.jobs`), and return a :class:`tflq.jobs.result.Result`.
Nothing is written unless ``out`` is given or :meth:`~tflq.jobs.result.Result.save` is called.

Options are the job's own fields (e.g. ``num_calibration_samples``, ``latency_runs``), plus,
flattened, those of its nested settings: :class:`tflq.options.ConvertOptions` (e.g.
``per_tensor``, ``equalize``), :class:`tflq.data.DataOptions` (``normalize``) and
:class:`tflq.report.Gates` (``max_accuracy_drop``, ``min_agreement``, ``gate``: rules such
as ``"onset:f1>=0.95"``). ``output_tasks`` (e.g. ``{"onset": "multilabel"}``) sets the task
each output is measured as (:mod:`tflq.task_metrics`).
"""

from __future__ import annotations

import dataclasses

from tflq import report
from tflq.data import DataOptions
from tflq.jobs.compress import CompressJob, run_compress_job
from tflq.jobs.convert import ConvertJob, run_job
from tflq.jobs.preflight import PreflightJob, run_preflight_job
from tflq.jobs.qat import QATJob, run_qat_job
from tflq.jobs.result import Result
from tflq.options import ConvertOptions

__all__ = ["convert", "qat", "compress", "preflight", "build_job"]

# Nested settings a job may hold, and the option names that fill each (flattened).
_NESTED = {"convert_options": ConvertOptions, "data_options": DataOptions,
           "gates": report.Gates}


def build_job(job_class, **values):
    """A job of ``job_class`` from flat keyword options (see the module docstring).

    Raises:
      ValueError: an option that is neither a field of the job nor of its nested settings.
    """
    fields = {f.name for f in dataclasses.fields(job_class)}
    nested = {name: {} for name in _NESTED if name in fields}
    direct = {}
    for key, value in values.items():
        owner = next((n for n in nested if key in {f.name for f in dataclasses.fields(_NESTED[n])}),
                     None)
        if key in fields:
            direct[key] = value
        elif owner is not None:
            nested[owner][key] = value
        else:
            known = sorted(fields | {f.name for n in nested for f in dataclasses.fields(_NESTED[n])})
            raise ValueError(f"Unknown option {key!r} for {job_class.__name__}. Available: {known}")
    for name, settings in nested.items():
        if settings and name in direct:
            raise ValueError(f"Pass either {name}= or its options {sorted(settings)}, not both.")
        if settings:
            direct[name] = _NESTED[name](**settings)
    return job_class(**direct)


def convert(model, data, eval_data=None, modes=("int8",), *, out: str | None = None,
            **options) -> Result:
    """Converts ``model`` in every mode in ``modes`` and validates each .tflite against it.

    Args:
      model: a tf_keras or Keras 3 model object, or a path / ``module:function``.
      data: calibration data: numpy arrays, a dict of arrays by input name, an ``(x, y)``
        tuple, a ``tf.data.Dataset`` (batched or not), a function yielding samples, or a path.
      eval_data: evaluation data (same kinds); None evaluates on the samples of ``data`` not
        drawn for calibration.
      modes: any of ``float32``, ``float16``, ``dynamic``, ``int8``, ``int16x8``.
      out: also write what ``python -m pipelines.convert`` writes into this folder.
      **options: :class:`tflq.jobs.convert.ConvertJob` fields and their nested options.

    Returns:
      A :class:`tflq.jobs.result.Result`.

    Raises:
      ValueError: bad input of any kind (nothing written).

    Example:
      See the package docstring (:mod:`tflq`), whose example runs as a doctest.
    """
    job = build_job(ConvertJob, model=model, data=data, eval_data=eval_data,
                    modes=tuple(modes), out=out, **options)
    return Result(run_job(job), "convert")


def qat(model, train_data, eval_data, scheme: str = "default_int8", *, out: str | None = None,
        **options) -> Result:
    """Quantization-aware training, then the int8 .tflite validated against the float model.

    Args:
      model: a tf_keras or Keras 3 model object (Keras 3 is rebuilt as tf_keras and checked),
        or a path / ``module:function``.
      train_data: labelled training data (same kinds as :func:`convert`'s ``data``).
      eval_data: labelled evaluation data.
      scheme: weight scheme (:data:`tflq.quant.schemes.SCHEMES`, e.g. ``pow2``).
      out: also write what ``python -m pipelines.qat`` writes into this folder.
      **options: :class:`tflq.jobs.qat.QATJob` fields (``epochs``, ``learning_rate``, ...).

    Returns:
      A :class:`tflq.jobs.result.Result` with one ``int8`` mode and ``files`` holding the
      QAT Keras model (``<name>_qat.h5``).
    """
    job = build_job(QATJob, model=model, train_data=train_data, eval_data=eval_data,
                    scheme=scheme, out=out, **options)
    return Result(run_qat_job(job), "qat")


def compress(model, train_data, eval_data, *, out: str | None = None, **options) -> Result:
    """Pruning and/or clustering, then quantization (QAT or PTQ), validated and measured.

    Args:
      model, train_data, eval_data: as for :func:`qat`.
      out: also write what ``python -m pipelines.compress`` writes into this folder.
      **options: :class:`tflq.jobs.compress.CompressJob` fields (``sparsity``, ``clusters``,
        ``quantization``, ...).

    Returns:
      A :class:`tflq.jobs.result.Result` with one ``int8`` mode.
    """
    job = build_job(CompressJob, model=model, train_data=train_data, eval_data=eval_data,
                    out=out, **options)
    return Result(run_compress_job(job), "compress")


def preflight(model, data=None, eval_data=None, *, out: str | None = None,
              **options) -> Result:
    """What in ``model`` (and ``data``) will hurt int8 quantization, before converting.

    Returns:
      A :class:`tflq.jobs.result.Result` whose ``report["findings"]`` lists the advice and
      ``files`` holds preflight.json and preflight.md.
    """
    job = build_job(PreflightJob, model=model, data=data, eval_data=eval_data, out=out,
                    **options)
    return Result(run_preflight_job(job), "preflight")

"""The preflight job: what in a model will hurt int8 quantization, before converting
(:mod:`tflq.ptq.preflight` over the model and, when given, calibration and evaluation data)."""

from __future__ import annotations

import dataclasses

from tflq import inmemory, report, runtime, sampling
from tflq.jobs.common import JobResult, given, write_files
from tflq.settings import setting

__all__ = ["PreflightJob", "run_preflight_job"]


@dataclasses.dataclass(frozen=True)
class PreflightJob:
    """Everything one preflight run needs; checked on creation.

    Attributes:
      model: model path or ``module:function``, or a tf_keras / Keras 3 model object.
      data: calibration data, a path or in memory (:func:`tflq.data.open_data`; None: only
        the checks that need no data).
      eval_data: evaluation data to compare with the calibration data (needs ``data``).
      num_calibration_samples: calibration samples drawn with ``seed``.
      seed: sampling seed.
      out: folder for preflight.json and preflight.md (None: nothing written).
    """

    model: object = setting("Model to check (.keras/.h5/SavedModel/module:function).",
                            kind="str", is_path=True)
    data: object | None = setting(
        "Calibration data: .npz/.npy, IDX images file, image folder, or package.module:function. "
        "Required with --model.", None, kind="str", is_path=True)
    eval_data: object | None = setting("Labelled evaluation data.", None, kind="str",
                                       is_path=True)
    num_calibration_samples: int = setting(
        "Calibration samples drawn from --data with --seed (default: 500).", 500, flag_none=True)
    seed: int = setting("Seed for sampling and initialization.", 0)
    out: str | None = setting("Output folder for preflight.json/md (default: print only).", None,
                              kind="str")

    def __post_init__(self):
        if not given(self.model):
            raise ValueError("model is required (--model).")
        if given(self.eval_data) and not given(self.data):
            raise ValueError("--eval_data needs --data (the calibration data to compare with).")
        if not isinstance(self.num_calibration_samples, int) or self.num_calibration_samples < 1:
            raise ValueError(f"num_calibration_samples must be a positive integer. Received: "
                             f"num_calibration_samples={self.num_calibration_samples!r}")


def run_preflight_job(job: PreflightJob) -> JobResult:
    """Runs the checks; writes preflight.json and preflight.md to ``job.out`` when set.

    Returns:
      A :class:`tflq.jobs.common.JobResult` whose report holds ``findings`` (advice: the
      exit code is 0 with findings).

    Raises:
      ValueError: bad input; nothing written.
    """
    from tflq.models import load_model
    from tflq.ptq import preflight

    if job.out:
        runtime.check_output_dir(job.out)
    loaded = load_model(job.model)
    calib = (sampling.load_arrays(job.data, loaded.inputs, job.num_calibration_samples,
                                  job.seed)[0] if given(job.data) else None)
    evaluation = (sampling.load_arrays(job.eval_data, loaded.inputs)[0]
                  if given(job.eval_data) else None)
    full = {"model": loaded.source, "data": inmemory.describe(job.data),
            "eval_data": inmemory.describe(job.eval_data),
            **preflight.run(loaded, calib, evaluation)}
    table = report.format_findings(full["findings"])
    contents = {"preflight.json": report.to_json(full),
                "preflight.md": f"# tflq preflight: {loaded.source}\n\n{table}\n".encode()}
    files = write_files(job.out, contents) if job.out else []
    return JobResult(report=full, files=tuple(files), exit_code=runtime.EXIT_OK, gate_failures=(),
                     contents=contents)

"""The QAT job: load → wrap → train → convert → validate (float model, QAT Keras model,
.tflite) → report."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from tflq import metrics, report
from tflq.inmemory import describe
from tflq.jobs.common import (
    JobResult,
    add_layer_error,
    array_batches,
    base_report,
    check_samples,
    evaluate,
    finish,
    given,
    job_settings,
    load_training_data,
)
from tflq.layer_error import DEFAULT_SAMPLES
from tflq.runtime import check_output_dir

__all__ = ["DISTRIBUTIONS", "LSB_SLACK", "QATJob", "run_qat_job"]

DISTRIBUTIONS = ("default", "mirrored", "multi_worker")


# QAT Keras outputs and int8 TFLite outputs are compared in units of the output's
# quantization step, read from the interpreter; float rounding may add a hair on top.
LSB_SLACK = 1.001


@dataclasses.dataclass(frozen=True)
class QATJob:
    """Everything one QAT run needs; checked on creation.

    ``model``/``teacher`` may be Keras model objects and ``train_data``/``eval_data`` data
    held in memory (:func:`tflq.data.open_data`); ``out`` None writes nothing (the files are
    in the result's ``contents``; an interrupted run then cannot resume)."""

    model: object
    train_data: object
    eval_data: object
    out: str | None
    scheme: str = "default_int8"
    strategy: str = "gradient"
    teacher: str | None = None
    epochs: int = 2
    batch_size: int = 64
    learning_rate: float = 1e-4
    quant_error_weight: float = 0.0
    temperature: float = 4.0
    alpha: float = 0.5
    overrides: tuple = ()
    activation_ranges: str | None = None
    range_k: float = 3.0
    distribution: str = "default"
    num_train_samples: int | None = None
    seed: int = 0
    num_threads: int = 1
    latency_runs: int = 50
    verbose: int = 2
    gates: report.Gates = report.Gates()
    layer_error_samples: int = DEFAULT_SAMPLES  # training samples for per-layer error; 0: off

    def __post_init__(self):
        from tflq.quant import schemes
        from tflq.quant.qat import STRATEGIES

        schemes.get_scheme(self.scheme)
        if self.strategy not in STRATEGIES:
            raise ValueError(f"Unknown strategy {self.strategy!r}. Available: {list(STRATEGIES)}")
        if self.strategy == "distill" and not self.teacher:
            raise ValueError("The distill strategy needs a teacher (--teacher).")
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(f"Unknown distribution {self.distribution!r}. "
                             f"Available: {list(DISTRIBUTIONS)}")
        for name in ("epochs", "batch_size", "num_threads", "latency_runs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive. Received: {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0. Received: {self.learning_rate}")
        if isinstance(self.layer_error_samples, bool) or not isinstance(
                self.layer_error_samples, int) or self.layer_error_samples < 0:
            raise ValueError("layer_error_samples must be an integer >= 0 (0 turns per-layer error "
                             f"off). Received: layer_error_samples={self.layer_error_samples!r}")
        for override in self.overrides:
            schemes.Override.from_dict(dict(override))
        schemes.activation_quantizer(self.activation_ranges, self.range_k)


def _distribution(name: str):
    from tflq.models import tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def run_qat_job(job: QATJob, callbacks: Sequence = ()) -> JobResult:
    """Runs a QAT job and writes the QAT model, the int8 .tflite and the reports.

    Args:
      job: the settings.
      callbacks: extra Keras callbacks for ``fit`` (after the per-epoch checkpoint).

    Returns:
      A :class:`tflq.jobs.common.JobResult`; ``exit_code`` is 3 when a gate failed.

    Raises:
      ValueError: bad input, before anything is written. An interrupted run leaves its
        checkpoint in ``out/.qat_backup``; running the same job again resumes from the last
        finished epoch.
    """
    import os
    import shutil
    import tempfile

    from tflq.models import load_model, tf_keras
    from tflq.ptq import convert
    from tflq.quant import qat

    if job.out is not None:
        check_output_dir(job.out)
    out_existed = job.out is None or os.path.isdir(job.out)
    distribution = _distribution(job.distribution)
    with distribution.scope():  # every variable the trainer touches is created in the scope
        float_model = load_model(job.model)
        teacher_model = load_model(job.teacher) if given(job.teacher) else None
    x_train, y_train, x_eval, y_eval, feed = load_training_data(job, float_model)
    samples = check_samples(x_train, feed)
    with distribution.scope():  # Keras 3 models are rebuilt as tf_keras and checked
        source = float_model.to_tf_keras(samples)
        teacher = teacher_model.to_tf_keras(samples) if teacher_model is not None else None
    if teacher is not None:
        qat.check_teacher(teacher, source)
    tf_keras.utils.set_random_seed(job.seed)
    scratch = tempfile.mkdtemp(prefix="tflq-qat-")
    backup_dir = os.path.join(job.out if job.out is not None else scratch, ".qat_backup")
    try:
        with distribution.scope():
            student = qat.quantize_model(source, job.scheme, job.overrides,
                                         job.activation_ranges, job.range_k, samples=samples)
            trainer = qat.make_trainer(
                student, teacher if job.strategy == "distill" else None,
                job.quant_error_weight if job.strategy == "gradient" else 0.0,
                job.temperature, job.alpha)
            # statistics: ranges from moving averages of batch min/max, weights left as they are.
            rate = 0.0 if job.strategy == "statistics" else job.learning_rate
            trainer.compile(optimizer=tf_keras.optimizers.Adam(rate) if rate else
                            tf_keras.optimizers.SGD(0.0))
            trainer(feed({n: v[:1] for n, v in x_train.items()}))  # build: BackupAndRestore needs it
        # Checkpoint every epoch; an interrupted run resumes from the last one.
        history = trainer.fit(feed(x_train), y_train, epochs=job.epochs,
                              batch_size=job.batch_size, verbose=job.verbose,
                              callbacks=[tf_keras.callbacks.BackupAndRestore(backup_dir),
                                         tf_keras.callbacks.TerminateOnNaN(), *callbacks])
        # Training is over: from here on a failure (not an interruption: KeyboardInterrupt is
        # no Exception) drops the checkpoint, which could only resume a finished fit.
        try:
            losses = history.history.get("loss", [])
            if not all(np.isfinite(losses)):
                raise ValueError(f"QAT training diverged (loss {losses[-1]} in epoch "
                                 f"{len(losses)}); nothing was written. Lower --learning_rate "
                                 "or use --strategy statistics.")
            content = convert.convert_qat(student, scratch, integer_io=True)
            float32 = convert.convert_model(float_model, "float32", scratch).content
            h5_path = os.path.join(scratch, "qat.h5")
            student.save(h5_path)
            with open(h5_path, "rb") as f:
                qat_h5 = f.read()
        except Exception:
            _drop_backup(backup_dir, job.out, out_existed)
            raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    try:
        result = _validate_and_report(job, float_model, student, feed, x_train, y_train, x_eval,
                                      y_eval, content, float32, qat_h5, history)
    except Exception:
        _drop_backup(backup_dir, job.out, out_existed)
        raise
    shutil.rmtree(backup_dir, ignore_errors=True)
    return result


def _drop_backup(backup_dir: str, out: str, out_existed: bool) -> None:
    """Removes the training checkpoint, and ``out`` when the run created it and it is empty."""
    import os
    import shutil

    shutil.rmtree(backup_dir, ignore_errors=True)
    if not out_existed and os.path.isdir(out) and not os.listdir(out):
        os.rmdir(out)


def _validate_and_report(job, float_model, student, feed, x_train, y_train, x_eval, y_eval,
                         content, float32, qat_h5, history) -> JobResult:
    """Runs the float model, the QAT model and the int8 .tflite on the evaluation data, builds
    the report and writes everything."""
    from tflq import interpreter, tflite_inspect
    from tflq.quant import schemes

    runner = interpreter.TfliteModel(content, num_threads=job.num_threads)
    parity = _Parity(student, feed, runner.output_scale(runner.output_names[0]))
    float_result, compared, _ = evaluate(float_model, array_batches(x_eval, y_eval, job.batch_size),
                                         {"int8": runner}, observers=[parity])
    base = float_result["accuracy"]
    latency = interpreter.measure_latency(
        {"float32": interpreter.TfliteModel(float32, num_threads=job.num_threads),
         "int8": runner}, {n: v[:1] for n, v in x_eval.items()}, runs=job.latency_runs)
    chosen = schemes.get_scheme(job.scheme)
    notes = [f"QAT ({job.scheme}, {job.strategy}); ranges from training, no calibration"]
    if not chosen.exact:
        notes.append(f"{job.scheme} weights do not fit TFLite's int8 weight format: the converter "
                     "re-quantized them; the parity figures show what that cost")
    stem = float_model.stem
    row = report.mode_row("int8", f"{stem}_qat_int8.tflite", content, len(float32),
                          tflite_inspect.find_float_ops(content), compared["int8"].result(), base,
                          latency["int8"], None, notes)
    qat_result = parity.deployed.result()
    add_layer_error([row], float32, {"int8": content},
                    ({n: v[i:i + 1] for n, v in x_train.items()} for i in range(len(y_train))),
                    job.layer_error_samples)
    full = base_report(
        model=float_model, source=float_model.source, settings=job_settings(job),
        data={"calibration": {"source": describe(job.train_data), "num_samples": int(len(y_train))},
              "evaluation": {"source": describe(job.eval_data), "num_samples": int(len(y_eval)),
                             "has_labels": base is not None}},
        float_section={"accuracy": base, "float32_tflite_bytes": len(float32),
                       "latency_ms": latency["float32"]},
        modes=[row], gates=job.gates,
        qat={
            "scheme": job.scheme, "strategy": job.strategy, "deploys_exactly": chosen.exact,
            "keras_qat_accuracy": parity.keras.result()["accuracy"],
            "parity": {"top1_agreement": qat_result["top1_agreement"],
                       "within_1_lsb": parity.within / parity.total, "output_step": parity.step,
                       "sqnr_db": qat_result["sqnr_db"]},
            "weights": tflite_inspect.weight_requantization(student, content),
            "history": {k: [float(v) for v in vals] for k, vals in history.history.items()},
        })
    return finish(job.out, full, {row["path"]: content, f"{stem}_qat.h5": qat_h5})


class _Parity:
    """Observer of :func:`tflq.jobs.common.evaluate`: the QAT Keras model against the deployed
    int8 .tflite on the same batches (agreement, SQNR, share of outputs within one LSB)."""

    def __init__(self, student, feed, step: float):
        self.student, self.feed, self.step = student, feed, step
        self.deployed, self.keras = metrics.Comparison(), metrics.Comparison()
        self.within, self.total = 0, 0

    def __call__(self, batch, labels, reference, outputs):
        qat_out = [np.asarray(self.student(self.feed(batch), training=False), np.float32)]
        deployed = outputs["int8"]
        self.deployed.update(qat_out, deployed, labels)
        self.keras.update(qat_out, qat_out, labels)
        diff = np.abs(qat_out[0] - deployed[0])
        self.within += int(np.sum(diff <= self.step * LSB_SLACK))
        self.total += diff.size

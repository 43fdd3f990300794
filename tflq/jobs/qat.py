"""The QAT job: load → wrap → train → convert → validate (float model, QAT Keras model,
.tflite) → report."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from tflq import metrics, report
from tflq.inmemory import describe
from tflq.jobs import outputs
from tflq.jobs.common import (
    OUTPUT_LOSSES_HELP,
    OUTPUT_TASKS_HELP,
    JobResult,
    add_layer_error,
    base_report,
    check_samples,
    evaluate_trained,
    finish,
    given,
    job_from_dict,
    job_settings,
    job_to_dict,
    load_training_data,
    rebuild_notes,
    tflite_output_names,
    training_targets,
)
from tflq.layer_error import DEFAULT_SAMPLES
from tflq.runtime import check_output_dir
from tflq.settings import setting

__all__ = ["DISTRIBUTIONS", "STRATEGIES", "LSB_SLACK", "QATJob", "run_qat_job"]

DISTRIBUTIONS = ("default", "mirrored", "multi_worker")
STRATEGIES = ("gradient", "statistics", "distill")  # those of tflq.quant.qat, named here


# QAT Keras outputs and int8 TFLite outputs are compared in units of the output's
# quantization step, read from the interpreter; float rounding may add a hair on top.
LSB_SLACK = 1.001


@dataclasses.dataclass(frozen=True)
class QATJob:
    """Everything one QAT run needs; checked on creation.

    ``model``/``teacher`` may be Keras model objects and ``train_data``/``eval_data`` data
    held in memory (:func:`tflq.data.open_data`); ``out`` None writes nothing (the files are
    in the result's ``contents``; an interrupted run then cannot resume)."""

    model: object = setting("Float tf_keras model to train (.keras/.h5/SavedModel/"
                            "module:function).", kind="str", is_path=True)
    train_data: object = setting(
        "Training data (same kinds as pipelines.convert --data); labels per output as "
        "y_<output name> in an .npz; unlabelled with distillation.", kind="str", is_path=True)
    eval_data: object = setting("Evaluation data (labels optional).", kind="str", is_path=True)
    out: str | None = setting("Output folder (default: tflq_qat).", kind="str")
    scheme: str = setting("QAT weight scheme: default_int8, pow2, asymmetric, log_companding, "
                          "linear or lsq.", "default_int8")
    strategy: str = setting("gradient (STE, optional quantization-error loss), statistics "
                            "(moving-average ranges, weights frozen), distill (teacher).",
                            "gradient", choices=STRATEGIES)
    teacher: str | None = setting("Float teacher for --strategy=distill.", None, kind="str",
                                  is_path=True)
    # The commands train 10 epochs; a notebook's quick try (tflq.qat) 2.
    epochs: int = setting("Training epochs.", 2, cli_default=10)
    batch_size: int = setting("Batch size (default: 64).", 64, flag_none=True)
    learning_rate: float = setting("Adam learning rate.", 1e-4)
    quant_error_weight: float = setting("λ of the quantization-error loss (gradient strategy).",
                                        0.0)
    temperature: float = setting("Distillation temperature.", 4.0)
    alpha: float = setting("Weight of the label loss against distillation.", 0.5)
    overrides: tuple = setting("JSON list of per-layer overrides, e.g. "
                               '\'[{"match": "^conv2d$", "weight_bits": 8}]\'.', (),
                               kind="json", flag_none=True)
    activation_ranges: str | None = setting(
        "Activation ranges: moving averages of batch min/max (default: tfmot's quantizer; "
        "minmax: tflq's) or of mean ± k·σ (meanstd, clipped to min/max).", None,
        choices=("minmax", "meanstd"), none_as="default")
    range_k: float = setting("k for --activation_ranges=meanstd.", 3.0)
    distribution: str = setting("tf.distribute strategy (multi_worker reads TF_CONFIG).",
                                "default", choices=DISTRIBUTIONS)
    num_train_samples: int | None = setting("Train on at most this many samples (seeded draw).",
                                            None, kind="int")
    seed: int = setting("Seed for sampling and initialization.", 0)
    num_threads: int = setting("Interpreter threads.", 1)
    latency_runs: int = setting("Timed batch-1 runs per mode (default: 50).", 50, flag_none=True)
    verbose: int = 2
    gates: report.Gates = report.Gates()
    layer_error_samples: int = setting(
        "Calibration (QAT: training) samples for the per-layer error of every quantized mode "
        "(default: 16; 0 turns it off).", DEFAULT_SAMPLES, flag_none=True)
    # Loss per output name, "kl" (classification) or "mse" (regression); the rest is inferred
    # (tflq.quant.heads.infer_heads). A mapping, "name=kind,..." or (name, kind) pairs.
    output_losses: tuple = setting(OUTPUT_LOSSES_HELP, (), kind="losses", flag_none=True)
    # Task each named output is measured as (tflq.task_metrics.TASKS); the rest is inferred.
    output_tasks: tuple = setting(OUTPUT_TASKS_HELP, (), kind="losses", flag_none=True)

    def __post_init__(self):
        from tflq.quant import heads, schemes
        from tflq.quant.qat import STRATEGIES
        from tflq.task_metrics import normalize_output_tasks

        object.__setattr__(self, "output_losses", heads.normalize_output_losses(self.output_losses))
        object.__setattr__(self, "output_tasks", normalize_output_tasks(self.output_tasks))

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
            if not isinstance(override, schemes.Override):
                schemes.Override.from_dict(override)
        schemes.activation_quantizer(self.activation_ranges, self.range_k)

    def to_dict(self) -> dict:
        """A JSON-ready dict (paths only); :meth:`from_dict` rebuilds an equal job."""
        return job_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> QATJob:
        return job_from_dict(cls, data)


def _distribution(name: str):
    from tflq.models import tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def run_qat_job(job: QATJob, callbacks: Sequence = ()) -> JobResult:
    """Runs a QAT job and writes the QAT model, the int8 .tflite and the reports.

    Every output gets its loss (:class:`tflq.jobs.common.TrainingTargets`): labels per output
    (``y_<output name>`` in an ``.npz``; ``y`` for a single output) and/or the teacher. With the
    distill strategy and no labels, the teacher alone supplies the targets (α = 0).

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

    from tflq.models import load_model
    from tflq.ptq import deploy

    if job.out is not None:
        check_output_dir(job.out)
    out_existed = job.out is None or os.path.isdir(job.out)
    distribution = _distribution(job.distribution)
    backup_dir = os.path.join(job.out, ".qat_backup") if job.out is not None else None
    if not distribution.extended.should_checkpoint:
        # A non-chief worker of a multi-worker cluster: it trains with the others (sharing the
        # chief's checkpoint) and writes nothing; the chief writes the outputs.
        job = dataclasses.replace(job, out=None)
    with distribution.scope():  # every variable the trainer touches is created in the scope
        float_model = load_model(job.model)
        teacher_model = load_model(job.teacher) if given(job.teacher) else None
    outputs.check_names(float_model, job.output_tasks, job.gates)
    x_train, y_train, x_eval, y_eval, feed = load_training_data(job, float_model, labelled=False)
    samples = check_samples(x_train, feed)
    with distribution.scope():  # Keras 3 models are rebuilt as tf_keras and checked
        source = float_model.to_tf_keras(samples)
        teacher = teacher_model.to_tf_keras(samples) if teacher_model is not None else None
    targets = training_targets(job, source, float_model, y_train, y_eval)
    if targets.train is None and job.strategy != "distill":
        raise ValueError(f"Training data {describe(job.train_data)!r} has no labels; the "
                         f"{job.strategy} strategy trains on labels. Use --strategy distill with "
                         "--teacher (e.g. the float model itself) to learn from the teacher alone.")
    if teacher is not None:
        from tflq.quant import qat

        qat.check_teacher(teacher, source)
    notes = [f"QAT ({job.scheme}, {job.strategy}); {deploy.ranges_note(source)}",
             *rebuild_notes(float_model)]
    try:
        student, history, content, float32, qat_h5 = _train_and_convert(
            job, distribution, float_model, source, teacher, targets, feed, x_train, samples,
            backup_dir, notes, callbacks)
    except _Diverged as e:
        _drop_backup(backup_dir, job.out, out_existed)
        raise ValueError(str(e)) from None
    except _AfterFit as e:  # training finished: its checkpoint could only resume a done fit
        _drop_backup(backup_dir, job.out, out_existed)
        raise e.__cause__ from None
    try:
        result = _validate_and_report(job, float_model, source, student, feed, targets, x_train,
                                      x_eval, content, float32, qat_h5, history, notes)
    except Exception:
        _drop_backup(backup_dir, job.out, out_existed)
        raise
    if job.out is not None:  # the chief (or the only worker)
        _drop_backup(backup_dir, None, True)
    return result


class _Diverged(Exception):
    pass


class _AfterFit(Exception):
    """A failure after ``fit`` finished (its cause is the real error)."""


def _drop_backup(backup_dir: str | None, out: str | None, out_existed: bool) -> None:
    """Removes the training checkpoint, and ``out`` when the run created it and it is empty."""
    import os
    import shutil

    if backup_dir is not None:
        shutil.rmtree(backup_dir, ignore_errors=True)
    if out is not None and not out_existed and os.path.isdir(out) and not os.listdir(out):
        os.rmdir(out)


def _validate_and_report(job, float_model, source, student, feed, targets, x_train, x_eval,
                         content, float32, qat_h5, history, notes) -> JobResult:
    """Runs the float model, the QAT model and the int8 .tflite on the evaluation data, builds
    the report and writes everything."""
    from tflq import interpreter, tflite_inspect
    from tflq.ptq import deploy

    keras_names = list(source.output_names)
    runner = interpreter.TfliteModel(content, tflite_output_names(content, keras_names),
                                     num_threads=job.num_threads)
    steps = [runner.output_scale(n) for n in runner.output_names]
    parity = _Parity(student, feed, keras_names, targets, steps)
    per_output = outputs.start(float_model, job.output_tasks, job.gates, ["int8"],
                               targets.primary)
    float_result, compared, latency = evaluate_trained(job, float_model, runner, float32, x_eval,
                                                       targets, parity, [per_output])
    base = float_result["accuracy"]
    exact = deploy.deploys_exactly(job.scheme, student)
    if not exact:
        notes.append(f"{job.scheme} weights do not fit TFLite's int8 weight format: the converter "
                     "re-quantized them; the parity figures show what that cost")
    stem = float_model.stem
    row = report.mode_row("int8", f"{stem}_qat_int8.tflite", content, len(float32),
                          tflite_inspect.find_float_ops(content), compared["int8"].result(), base,
                          latency["int8"], None, notes)
    if len(keras_names) > 1:
        row["outputs"] = parity.float_vs_int8.result()
    num_train = len(next(iter(x_train.values())))
    add_layer_error([row], float32, {"int8": content},
                    ({n: v[i:i + 1] for n, v in x_train.items()} for i in range(num_train)),
                    job.layer_error_samples)
    full = base_report(
        model=float_model, source=float_model.source, settings=job_settings(job),
        data={"calibration": {"source": describe(job.train_data), "num_samples": num_train,
                              "has_labels": targets.train is not None},
              "evaluation": {"source": describe(job.eval_data),
                             "num_samples": len(next(iter(x_eval.values()))),
                             "has_labels": targets.eval is not None}},
        float_section={"accuracy": base, "float32_tflite_bytes": len(float32),
                       "latency_ms": latency["float32"]},
        modes=[row], gates=job.gates, output_tasks=per_output.section,
        warnings=outputs.complete([row], per_output, {"int8": content}, job.num_threads,
                                  latency["float32"]),
        qat=_qat_section(job, exact, parity, targets, student, content, history))
    return finish(job.out, full, {row["path"]: content, f"{stem}_qat.h5": qat_h5})


def _train_and_convert(job, distribution, float_model, source, teacher, targets, feed, x_train,
                       samples, backup_dir, notes, callbacks):
    """Wraps, trains (checkpoint every epoch) and converts; appends what prepare rewrote and
    what the training learned from to ``notes``. Returns (student, history, int8 .tflite,
    float32 .tflite, QAT .h5 bytes). A failure after ``fit`` is raised as :class:`_AfterFit`."""
    import os
    import shutil
    import tempfile

    from tflq.models import tf_keras
    from tflq.ptq import convert, deploy
    from tflq.quant import qat

    tf_keras.utils.set_random_seed(job.seed)
    scratch = tempfile.mkdtemp(prefix="tflq-qat-")
    keep = (backup_dir,) if backup_dir else ()
    backup_dir = backup_dir or os.path.join(scratch, ".qat_backup")  # in memory: no resume
    try:
        with distribution.scope():
            prepared, wrapped = [], []
            student = qat.quantize_model(source, job.scheme, job.overrides, job.activation_ranges,
                                         job.range_k, samples=samples, notes=prepared,
                                         lstm_ok=True, prepared=wrapped)
            notes.extend(f"prepare: {line}" for line in prepared)
            if not prepared:
                notes.append("prepare: no float rewrite needed (nothing to inline, split or fold)")
            distilling = job.strategy == "distill"
            labelled = targets.train is not None
            trainer = qat.make_trainer(
                student, teacher if distilling else None,
                job.quant_error_weight if job.strategy == "gradient" else 0.0,
                job.temperature, job.alpha, heads=targets.heads, labelled=labelled)
            if distilling and not labelled:
                notes.append("distilled from the teacher alone: the training data has no labels "
                             "(alpha = 0)")
            if len(targets.heads) > 1:
                notes.append("losses per output: " + ", ".join(
                    f"{h.name}={h.kind} ({h.reason})" for h in targets.heads))
            # statistics: ranges from moving averages of batch min/max, weights left as they are.
            rate = 0.0 if job.strategy == "statistics" else job.learning_rate
            trainer.compile(optimizer=tf_keras.optimizers.Adam(rate) if rate else
                            tf_keras.optimizers.SGD(0.0))
            trainer(feed({n: v[:1] for n, v in x_train.items()}))  # build: BackupAndRestore needs it
        # Checkpoint every epoch; an interrupted run resumes from the last one.
        history = _fit(job, trainer, feed(x_train), targets.fit_labels, backup_dir, keep,
                       callbacks)
        if history.epoch and history.epoch[0] > 0:
            notes.append(f"resumed from the checkpoint of epoch {history.epoch[0]} "
                         f"({backup_dir}): {len(history.epoch)} epoch(s) trained in this run")
        losses = history.history.get("loss", [])
        if not all(np.isfinite(losses)):
            raise _Diverged(f"QAT training diverged (loss {losses[-1]} in epoch {len(losses)}); "
                            "nothing was written. Lower --learning_rate or use --strategy "
                            "statistics.")
        try:  # not an interruption (KeyboardInterrupt is no Exception): the fit is done
            content = deploy.convert_student(student, wrapped[0], scratch, x_train,
                                             float_model.source, notes)
            float32 = convert.convert_model(float_model, "float32", scratch).content
            h5_path = os.path.join(scratch, "qat.h5")
            student.save(h5_path)
            with open(h5_path, "rb") as f:
                qat_h5 = f.read()
        except Exception as e:
            raise _AfterFit() from e
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return student, history, content, float32, qat_h5


# What TensorFlow's error says about the lost peer, most telling first (the first line of the
# error is a bare "Graph execution error:").
_UNHEALTHY = "The following tasks are unhealthy"
_PEER_LOST_WORDS = ("reset by peer", "Socket closed", "crashed", "heartbeat", "/job:")


def _peer_lost_summary(text: str) -> str:
    """The part of a collective-op error that names the lost worker, on one line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for i, line in enumerate(lines):
        if _UNHEALTHY in line:
            tasks = [ln for ln in lines[i + 1:i + 4] if ln.startswith("/job:")]
            return " ".join([line[line.index(_UNHEALTHY):], *tasks])[:200]
    for word in _PEER_LOST_WORDS:
        for line in lines:
            if word in line:
                return line[:200]
    return lines[0][:200] if lines else ""


def _fit(job, trainer, x, y, backup_dir, keep, callbacks):
    """``trainer.fit`` with a checkpoint every epoch (``BackupAndRestore``: a rerun resumes
    from the last finished epoch). A multi-worker run whose peer was lost raises
    :class:`tflq.runtime.Interrupted`, keeping ``keep`` (the checkpoint folder, which every
    worker shares) for the rerun."""
    from tflq.models import tf, tf_keras
    from tflq.runtime import Interrupted

    finished = []
    count = tf_keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: finished.append(epoch))
    try:
        return trainer.fit(x, y, epochs=job.epochs, batch_size=job.batch_size, verbose=job.verbose,
                           callbacks=[tf_keras.callbacks.BackupAndRestore(backup_dir),
                                      tf_keras.callbacks.TerminateOnNaN(), count, *callbacks])
    except (tf.errors.UnavailableError, tf.errors.AbortedError,
            tf.errors.DeadlineExceededError) as e:
        if job.distribution != "multi_worker":
            raise
        where = (f"the checkpoint of epoch {finished[-1] + 1} of {job.epochs} is in {keep[0]}"
                 if finished and keep else "no epoch finished in this run" if keep
                 else "nothing to resume from (no output folder)")
        raise Interrupted(f"QAT training lost a worker of the multi_worker cluster "
                          f"({type(e).__name__}: {_peer_lost_summary(str(e))}); {where}: run the same command on "
                          "every worker again to resume.", keep=keep) from e


def _qat_section(job, exact, parity, targets, student, content, history) -> dict:
    from tflq import tflite_inspect

    qat_result = parity.deployed.result()
    section = {
        "scheme": job.scheme, "strategy": job.strategy, "deploys_exactly": exact,
        "keras_qat_accuracy": parity.keras.result()["accuracy"],
        "parity": {"top1_agreement": qat_result["top1_agreement"],
                   "within_1_lsb": parity.outputs.within_share(),
                   "output_step": parity.outputs.steps[targets.primary],
                   "sqnr_db": qat_result["sqnr_db"],
                   "outputs": parity.outputs.result()},
        "outputs": targets.to_dict(),
        "weights": tflite_inspect.weight_requantization(student, content),
        "history": {k: [float(v) for v in vals] for k, vals in history.history.items()},
        "epochs_trained": [int(e) + 1 for e in history.epoch],  # fewer after a resume
    }
    if job.strategy == "distill":
        section["distillation"] = (
            {"alpha": job.alpha, "temperature": job.temperature} if targets.train is not None
            else {"alpha": 0, "temperature": job.temperature, "reason": "no labels"})
    return section


class _Parity:
    """Observer of :func:`tflq.jobs.common.evaluate`: the QAT Keras model against the deployed
    int8 .tflite on the same batches, overall (agreement on the primary output, SQNR) and per
    output by name (agreement of classification outputs, SQNR, share within one LSB); and the
    float model against the .tflite per output."""

    def __init__(self, student, feed, names, targets, steps):
        self.student, self.feed, self.targets = student, feed, targets
        classification = [h.kind == "kl" for h in targets.heads]
        self.deployed = metrics.Comparison(targets.primary)
        self.keras = metrics.Comparison(targets.primary)
        self.outputs = metrics.PerOutput(names, classification, steps, LSB_SLACK)
        self.float_vs_int8 = metrics.PerOutput(names, classification)
        self.position = 0

    def __call__(self, batch, labels, reference, outputs):
        from tflq.models import output_list

        qat_out = [np.asarray(o, np.float32)
                   for o in output_list(self.student(self.feed(batch), training=False))]
        n = len(qat_out[0])
        per_output = (None if self.targets.eval is None else
                      [y[self.position:self.position + n] for y in self.targets.eval])
        self.position += n
        deployed = outputs["int8"]
        self.deployed.update(qat_out, deployed, labels)
        self.keras.update(qat_out, qat_out, labels)
        self.outputs.update(qat_out, deployed, per_output)
        self.float_vs_int8.update(reference, deployed, per_output)

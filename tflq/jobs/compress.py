"""Quantization combined with pruning and clustering, with honest size accounting.

The chain (:func:`run_compress_job`):

1. **prune** (``sparsity`` > 0 or ``structure="2:4"``): tfmot's magnitude pruning with a
   constant or polynomial-decay schedule, or 2:4 structured sparsity (2 zeros in every 4
   consecutive input-channel weights), on the layers chosen by type and name pattern;
   fine-tuned for ``epochs``, then stripped;
2. **cluster** (``clusters`` ≥ 2): tfmot's weight clustering (k-means++ centroids, sparsity
   kept when the model was pruned), fine-tuned, stripped;
3. **quantize**: ``ptq`` — the plain TFLite converter with calibration data; ``qat`` — tflq's
   QAT (:func:`tflq.quant.qat.quantize_model`, any scheme) with the structure *preserved*: after
   every training step pruned weights are set back to 0 and every clustered weight to its
   layer-wide cluster mean, measured in units of the weight's BatchNorm folding scale
   (PQAT/CQAT);
4. **validate and report**: accuracy of the int8 .tflite against the float model, and the
   size accounting of :func:`weight_stats` — raw and gzip size, per-layer sparsity and
   unique int8 values read from the .tflite itself, 2:4 compliance, and the size with
   TFLite's sparse tensor encoding.

Models must output logits (as :func:`tflq.quant.qat.make_trainer` expects).
"""

from __future__ import annotations

import dataclasses
import re
import sys

import numpy as np

import tflq.quant.compress as quant_compress
from tflq import options, report, runtime
from tflq.inmemory import describe
from tflq.jobs import outputs
from tflq.jobs.common import (
    OUTPUT_LOSSES_HELP,
    OUTPUT_TASKS_HELP,
    JobResult,
    base_report,
    check_samples,
    evaluate_trained,
    finish,
    job_from_dict,
    job_settings,
    job_to_dict,
    load_training_data,
    rebuild_notes,
    tflite_output_names,
    training_targets,
)
from tflq.quant.compress import (
    COMPRESSIBLE,
    QUANTIZATIONS,
    SCHEDULES,
    STRUCTURED_TYPES,
    STRUCTURES,
    cluster,
    fine_tune,
    prune,
    select_layers,
)
from tflq.settings import setting
from tflq.tflite_inspect import gzip_size, weight_stats

__all__ = ["CompressJob", "sparse_encoded_size", "run_compress_job"]


@dataclasses.dataclass(frozen=True)
class CompressJob:
    """Everything one compression run needs; checked on creation.

    Attributes:
      sparsity: target fraction of zero weights in [0, 1) (0: no pruning; 2:4 means 0.5).
      schedule: ``constant`` or ``polynomial`` (0 → sparsity over the first 3/4 of training).
      structure: ``unstructured`` or ``2:4``.
      clusters: centroids per layer (0: no clustering; otherwise ≥ 2).
      layers: regular expression on layer names choosing what to prune/cluster (None: all
        layers of ``layer_types``).
      layer_types: layer class names to prune/cluster.
      quantization: ``qat`` (structure-preserving QAT) or ``ptq`` (the converter).
      scheme: QAT weight scheme (:data:`tflq.quant.schemes.SCHEMES`); ``ptq`` uses TFLite's int8.
      epochs: fine-tuning epochs of the prune and cluster stages.
      qat_epochs: QAT epochs (None: ``epochs``).
      distill: QAT learns from the original float model as teacher too
        (:func:`tflq.quant.qat.make_trainer`: α·CE + (1 − α)·T²·KL, α 0.5, T 4); without
        labels every stage learns from it alone (α 0).
      output_losses: loss per output name (``kl``/``mse``), see :mod:`tflq.quant.heads`.
      output_tasks: task each named output is measured as (:data:`tflq.task_metrics.TASKS`);
        the rest is inferred (:mod:`tflq.jobs.outputs`).
    """

    model: object = setting("Float tf_keras model (.keras/.h5/SavedModel/module:function); it "
                            "must output logits.", kind="str", is_path=True)
    train_data: object = setting(
        "Training data (same kinds as pipelines.convert --data); labels per output as "
        "y_<output name> in an .npz; unlabelled with distillation.", kind="str", is_path=True)
    eval_data: object = setting("Evaluation data (labels optional).", kind="str", is_path=True)
    out: str | None = setting("Output folder (default: tflq_compress).", kind="str")
    sparsity: float = setting("Target fraction of zero weights in [0, 1) (0: no pruning).", 0.0)
    schedule: str = setting("Pruning schedule: constant or polynomial (0 → --sparsity over the "
                            "first 3/4 of training).", "constant", choices=SCHEDULES,
                            flag_kind="string")
    structure: str = setting("unstructured, or 2:4 (two zeros in every four input-channel "
                             "weights; 50%).", "unstructured", choices=STRUCTURES,
                             flag_kind="string")
    clusters: int = setting("Weight clusters per layer (0: none; ≥ 2).", 0)
    layers: str | None = setting("Regular expression on layer names: which layers to "
                                 "prune/cluster (default: all of --layer_types).", None, kind="str")
    layer_types: tuple = setting("Layer types to prune/cluster.", ("Conv2D", "Dense"))
    quantization: str = setting("qat (structure-preserving QAT) or ptq (the TFLite converter "
                                "with calibration).", "qat", choices=QUANTIZATIONS,
                                flag_kind="string")
    scheme: str = setting("QAT weight scheme: default_int8, pow2, asymmetric, log_companding, "
                          "linear or lsq.", "default_int8")
    # The commands train 10 epochs; a notebook's quick try (tflq.compress) 2.
    epochs: int = setting("Training epochs.", 2, cli_default=10)
    qat_epochs: int | None = setting("QAT epochs (default: --epochs, which counts the prune and "
                                     "cluster stages).", None, kind="int")
    batch_size: int = setting("Batch size (default: 64).", 64, flag_none=True)
    learning_rate: float = setting("Adam learning rate.", 1e-4)
    qat_learning_rate: float | None = setting(
        "Adam learning rate of the QAT stage (default: --learning_rate).", None, kind="float")
    distill: bool = setting("QAT stage also learns from the original float model as teacher "
                            "(distillation).", False)
    num_train_samples: int | None = setting("Train on at most this many samples (seeded draw).",
                                            None, kind="int")
    num_calibration_samples: int = setting(
        "Calibration samples drawn from --data with --seed (default: 500).", 500, flag_none=True)
    seed: int = setting("Seed for sampling and initialization.", 0)
    num_threads: int = setting("Interpreter threads.", 1)
    latency_runs: int = setting("Timed batch-1 runs per mode (default: 50).", 50, flag_none=True)
    verbose: int = 2
    gates: report.Gates = report.Gates()
    output_losses: tuple = setting(OUTPUT_LOSSES_HELP, (), kind="losses", flag_none=True)
    output_tasks: tuple = setting(OUTPUT_TASKS_HELP, (), kind="losses", flag_none=True)

    def __post_init__(self):
        from tflq.quant import heads, schemes
        from tflq.task_metrics import normalize_output_tasks

        object.__setattr__(self, "output_losses", heads.normalize_output_losses(self.output_losses))
        object.__setattr__(self, "output_tasks", normalize_output_tasks(self.output_tasks))

        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1). Received: sparsity={self.sparsity}")
        if self.structure not in STRUCTURES:
            raise ValueError(f"Unknown structure {self.structure!r}. Available: {list(STRUCTURES)}")
        if self.structure == "2:4" and self.sparsity not in (0.0, 0.5):
            raise ValueError(f"2:4 structure means 50% sparsity; sparsity={self.sparsity} "
                             "contradicts it (leave it at 0 or 0.5).")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"Unknown schedule {self.schedule!r}. Available: {list(SCHEDULES)}")
        if self.clusters == 1 or self.clusters < 0:
            raise ValueError(f"clusters must be at least 2 (or 0 for no clustering). "
                             f"Received: clusters={self.clusters}")
        if self.clusters > 256:
            raise ValueError(f"clusters must be at most 256 (int8 holds 256 values). "
                             f"Received: clusters={self.clusters}")
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(f"Unknown quantization {self.quantization!r}. "
                             f"Available: {list(QUANTIZATIONS)}")
        schemes.get_scheme(self.scheme)
        unknown = [t for t in self.layer_types if t not in COMPRESSIBLE]
        if unknown or not self.layer_types:
            raise ValueError(f"layer_types {list(self.layer_types)}: each must be one of "
                             f"{list(COMPRESSIBLE)}.")
        if self.structure == "2:4":
            unsupported = [t for t in self.layer_types if t not in STRUCTURED_TYPES]
            if unsupported:
                raise ValueError(f"2:4 sparsity is supported for {list(STRUCTURED_TYPES)}, not "
                                 f"{unsupported}; drop them from layer_types.")
        if self.layers is not None:
            try:
                re.compile(self.layers)
            except re.error as e:
                raise ValueError(f"layers {self.layers!r} is not a valid regex: {e}") from e
        if self.qat_epochs is not None and self.qat_epochs < 1:
            raise ValueError(f"qat_epochs must be positive. Received: {self.qat_epochs}")
        for name in ("epochs", "batch_size", "num_threads", "latency_runs",
                     "num_calibration_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive. Received: {getattr(self, name)}")
        for name in ("learning_rate", "qat_learning_rate"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0. Received: {value}")

    @property
    def prunes(self) -> bool:
        return self.sparsity > 0 or self.structure == "2:4"

    @property
    def clusters_weights(self) -> bool:
        return self.clusters >= 2

    def to_dict(self) -> dict:
        """A JSON-ready dict (paths only); :meth:`from_dict` rebuilds an equal job."""
        return job_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> CompressJob:
        return job_from_dict(cls, data)


def sparse_encoded_size(make_converter) -> dict:
    """Converts again with TFLite's sparse tensor encoding (``EXPERIMENTAL_SPARSITY``) and
    says how many tensors it actually encoded; the encoding only pays for (block-)sparse
    weights of the ops that have sparse kernels."""
    from ai_edge_litert.interpreter import Interpreter

    from tflq.models import tf

    converter = make_converter()
    converter.optimizations = [tf.lite.Optimize.DEFAULT, tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    content = converter.convert()
    encoded = [t["name"] for t in Interpreter(model_content=content).get_tensor_details()
               if t.get("sparsity_parameters")]
    return {"size_bytes": len(content), "gzip_bytes": gzip_size(content),
            "sparse_tensors": len(encoded)}


def run_compress_job(job: CompressJob) -> JobResult:
    """Prunes and/or clusters, quantizes (QAT or PTQ), validates and writes the .tflite and
    report.json/md/png.

    Every output gets its loss (labels per output, ``y_<output name>``); without labels,
    ``distill`` trains every stage from the float model alone (α = 0).

    Returns:
      A :class:`tflq.jobs.common.JobResult`; ``exit_code`` is 3 when a gate failed.

    Raises:
      ValueError: bad input, before anything is written.
    """
    from tflq import interpreter, metrics, tflite_inspect
    from tflq.models import load_model

    if job.out is not None:
        runtime.check_output_dir(job.out)
    float_model = load_model(job.model)
    outputs.check_names(float_model, job.output_tasks, job.gates)
    x_train, y_train, x_eval, y_eval, feed = load_training_data(job, float_model, labelled=False)
    # A Keras 3 model is rebuilt as tf_keras (tfmot needs it), checked on training samples.
    samples = check_samples(x_train, feed)
    model = float_model.to_tf_keras(samples)
    targets = training_targets(job, model, float_model, y_train, y_eval)
    if targets.train is None and not job.distill:
        raise ValueError(f"Training data {describe(job.train_data)!r} has no labels; pass --distill "
                         "(distill=True) to learn from the float model as teacher alone.")
    chosen = {layer.name for layer in select_layers(model, job)}
    content, float32, sparse, stages, notes, histories = _compress(
        job, float_model, model, targets, chosen, feed, x_train, samples)
    stats = weight_stats(content)
    keras_names = list(model.output_names)
    runner = interpreter.TfliteModel(content, tflite_output_names(content, keras_names),
                                     num_threads=job.num_threads)
    per_output = metrics.PerOutput(keras_names, [h.kind == "kl" for h in targets.heads])
    seen = [0]

    def observe(batch, labels, reference, outputs):
        n = len(reference[0])
        per_labels = (None if targets.eval is None else
                      [y[seen[0]:seen[0] + n] for y in targets.eval])
        seen[0] += n
        per_output.update(reference, outputs["int8"], per_labels)

    tasks = outputs.start(float_model, job.output_tasks, job.gates, ["int8"], targets.primary)
    float_result, compared, latency = evaluate_trained(job, float_model, runner, float32, x_eval,
                                                       targets, observe, [tasks])
    base = float_result["accuracy"]
    weights = sum(row["weights"] for row in stats)
    zeros = sum(row["weights"] * row["sparsity"] for row in stats)
    stem = float_model.stem
    row = report.mode_row("int8", f"{stem}_compressed_int8.tflite", content, len(float32),
                          tflite_inspect.find_float_ops(content), compared["int8"].result(), base,
                          latency["int8"], None, [*stages, *notes])
    if len(keras_names) > 1:
        row["outputs"] = per_output.result()
    compression = {
        "stages": stages, "layers": sorted(chosen),
        "size_bytes": len(content), "gzip_bytes": gzip_size(content),
        "float32_gzip_bytes": gzip_size(float32),
        "weight_sparsity": zeros / weights if weights else 0.0,
        "sparse_encoding": sparse, "weights": stats, "history": histories,
        "outputs": targets.to_dict()}
    if job.distill:
        compression["distillation"] = (
            {"alpha": 0.5, "temperature": 4.0} if targets.train is not None
            else {"alpha": 0, "temperature": 4.0, "reason": "no labels"})
    full = base_report(
        model=float_model, source=float_model.source, settings=job_settings(job),
        data={"calibration": {"source": describe(job.train_data),
                              "num_samples": len(next(iter(x_train.values()))),
                              "has_labels": targets.train is not None},
              "evaluation": {"source": describe(job.eval_data),
                             "num_samples": len(next(iter(x_eval.values()))),
                             "has_labels": targets.eval is not None}},
        float_section={"accuracy": base, "float32_tflite_bytes": len(float32),
                       "latency_ms": latency["float32"]},
        modes=[row], gates=job.gates, compression=compression, output_tasks=tasks.section,
        warnings=outputs.complete([row], tasks, {"int8": content}, job.num_threads,
                                  latency["float32"]))
    return finish(job.out, full, {row["path"]: content})


def _on_stderr(line: str | None) -> list[str]:
    """``[line]``, also printed on stderr as a tflq note; ``[]`` for None."""
    if line is None:
        return []
    print(f"tflq: {line}", file=sys.stderr)
    return [line]


def _compress(job, float_model, model, targets, chosen, feed, x_train, samples):
    """The prune → cluster → quantize chain. Returns (int8 .tflite, float32 .tflite, its size
    with sparse encoding, stages, notes, training histories)."""
    import shutil
    import tempfile

    from tflq.models import tf_keras, wrap_model
    from tflq.ptq import convert, deploy
    from tflq.quant import qat

    names = float_model.input_names
    labels = targets.fit_labels
    # Without labels every stage learns from the float model alone (job.distill is required).
    stage_teacher = model if labels is None else None
    tf_keras.utils.set_random_seed(job.seed)
    histories, stages = {}, []
    notes = rebuild_notes(float_model) + _on_stderr(
        quant_compress.left_uncompressed(model, chosen, job))
    if labels is None:
        notes.append("no labels: every stage distilled from the float model alone (alpha = 0)")
    if len(targets.heads) > 1:
        notes.append("losses per output: " + ", ".join(
            f"{h.name}={h.kind} ({h.reason})" for h in targets.heads))
    if job.prunes:
        model, histories["prune"] = prune(model, feed(x_train), labels, job, chosen,
                                          stage_teacher, targets.heads)
        stages.append(f"prune {'2:4' if job.structure == '2:4' else f'{job.sparsity:.0%}'} "
                      f"({job.schedule})")
    if job.clusters_weights:
        model, histories["cluster"] = cluster(model, feed(x_train), labels, job, chosen,
                                              stage_teacher, targets.heads)
        stages.append(f"cluster k={job.clusters}")
    scratch = tempfile.mkdtemp(prefix="tflq-compress-")
    try:
        if job.quantization == "qat":
            prepared, wrapped = [], []
            student = qat.quantize_model(model, job.scheme, samples=samples, notes=prepared,
                                         lstm_ok=True, prepared=wrapped)
            notes.extend(f"prepare: {line}" for line in prepared)
            if not prepared:
                notes.append("prepare: no float rewrite needed (nothing to inline, split or fold)")
            reference = {layer.name: layer.get_weights()[0] for layer in model.layers
                         if layer.name in chosen and layer.get_weights()}
            keep = quant_compress.PreserveStructure(student, chosen if stages else set(), job.clusters_weights,
                                     reference)
            keep.apply()  # BatchNorm folding rescaled channels; start exactly on the structure
            teacher = model if (job.distill or labels is None) else None
            histories["qat"] = fine_tune(student, feed(x_train), labels, job, [keep],
                                         job.qat_learning_rate or job.learning_rate,
                                         job.qat_epochs or job.epochs, teacher, targets.heads)
            content = deploy.convert_student(student, wrapped[0], scratch, x_train,
                                             float_model.source, notes)

            def make_converter():
                if deploy.deploys_by_calibration(student):  # what convert_student calibrated
                    return deploy.CalibratedDeploy(student, wrapped[0], x_train,
                                                   float_model.source).converter(scratch)
                return wrap_model(student, "qat").make_converter(scratch)

            stages.append(f"QAT ({job.scheme}, structure preserved"
                          f"{', distilled from the float model' if job.distill else ''})")
        else:
            num_train = len(next(iter(x_train.values())))
            order = np.random.default_rng(job.seed).permutation(num_train)
            order = order[:job.num_calibration_samples]

            def representative():
                for i in order:
                    yield {n: x_train[n][i:i + 1] for n in names}

            loaded = wrap_model(model, float_model.source)
            content = convert.convert_model(loaded, "int8", scratch, representative).content

            def make_converter():
                converter = loaded.make_converter(scratch)
                convert.configure(converter, options.Mode.INT8,
                                  options.ConvertOptions(integer_io=True), representative)
                return converter

            stages.append("PTQ int8 (TFLite converter)")
        sparse = sparse_encoded_size(make_converter)
        float32 = convert.convert_model(float_model, "float32", scratch).content
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return content, float32, sparse, stages, notes, histories

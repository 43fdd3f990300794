"""What every job kind shares: the result type, progress bars, data preparation, the
streaming evaluation pass, the report skeleton, gates and atomic output writing."""

from __future__ import annotations

import dataclasses
import datetime
import os

from tflq import console, inmemory, metrics, report, runtime, sampling
from tflq.data import open_data
from tflq.fileio import write_atomic

__all__ = ["check_samples", "JobResult", "progress", "prepare_data", "evaluate", "array_batches",
           "load_training_data", "evaluate_trained", "base_report", "finish", "write_outputs",
           "report_files",
           "add_layer_error", "render_outputs", "write_files", "job_settings", "refuse_in_memory",
           "IN_MEMORY_FIELDS", "given", "tflite_output_names", "TrainingTargets",
           "training_targets", "rebuild_notes", "OUTPUT_LOSSES_HELP", "OUTPUT_TASKS_HELP",
           "job_to_dict", "job_from_dict"]

# Job fields that may hold an in-memory model or data instead of a path.
IN_MEMORY_FIELDS = ("model", "data", "eval_data", "train_data", "teacher")


@dataclasses.dataclass(frozen=True)
class JobResult:
    """What a run produced: the report, the files written (none when ``out`` is None), the
    exit code to use, and ``contents``: every output file by name, as bytes, in the order
    they are written (the same whether or not anything was written)."""

    report: dict
    files: tuple[str, ...]
    exit_code: int
    gate_failures: tuple[str, ...]
    contents: dict = dataclasses.field(default_factory=dict, repr=False)


def given(value) -> bool:
    """Whether an optional input was given: not None and not an empty path (arrays and
    Datasets have no truth value to test)."""
    return value is not None and not (isinstance(value, str) and not value)


# --output_losses of the training jobs (qat, compress): one text for both.
OUTPUT_LOSSES_HELP = (
    "Loss per model output, e.g. 'boxes=mse,classes=kl' (kl: classification, cross-entropy on "
    "labels and KL distillation; mse: regression). Outputs not named are inferred (softmax or "
    "class-named logits: kl; otherwise mse).")
# --output_tasks of every job (convert, qat, compress): one text for all.
OUTPUT_TASKS_HELP = (
    "Task each model output is measured as, e.g. 'contour=multilabel,onset=multilabel' "
    "(classification, multilabel, regression, detection, segmentation). Outputs not named are "
    "inferred from their shape and final activation; the report says how.")

def job_settings(job) -> dict:
    """``dataclasses.asdict(job)`` with in-memory inputs replaced by their descriptions
    (``<in-memory model>``, ``<numpy arrays (N samples)>``, ...)."""
    described = {name: inmemory.describe(getattr(job, name)) for name in IN_MEMORY_FIELDS
                 if inmemory.is_in_memory(getattr(job, name, None))}
    values = {f.name: getattr(job, f.name) for f in dataclasses.fields(job)}
    values.update(described)
    return {name: (value if name in described else
                   dataclasses.asdict(value) if dataclasses.is_dataclass(value) else
                   _plain(value)) for name, value in values.items()}


def _plain(value):
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def job_to_dict(job) -> dict:
    """A JSON-ready dict of a job holding paths only; :func:`job_from_dict` rebuilds it.

    Raises:
      ValueError: the job holds an in-memory model or data (not serializable).
    """
    refuse_in_memory(job, f"{type(job).__name__}.to_dict")
    return dataclasses.asdict(job)


def job_from_dict(job_class, data: dict):
    """The job :func:`job_to_dict` described: nested settings and tuples restored."""
    values = dict(data)
    for field in dataclasses.fields(job_class):
        if field.name not in values:
            continue
        if dataclasses.is_dataclass(field.default):
            values[field.name] = type(field.default)(**values[field.name])
        elif isinstance(field.default, tuple):
            values[field.name] = tuple(tuple(v) if isinstance(v, list) else v
                                       for v in values[field.name])
    return job_class(**values)

def refuse_in_memory(job, what: str) -> None:
    """Raises the error a job holding in-memory inputs gives when it must be serialized."""
    held = [name for name in IN_MEMORY_FIELDS if inmemory.is_in_memory(getattr(job, name, None))]
    if held:
        raise ValueError(
            f"{what}: {', '.join(f'{n}={inmemory.describe(getattr(job, n))}' for n in held)} "
            "is held in memory; only paths and 'module:function' specs can be serialized "
            "(batch specs, worker payloads). Save it to a file, or run the job in this process.")


def progress(enabled: bool | str, desc: str, total: int | None, unit: str = "sample"):
    """A function showing an iterable's progress (a bar on a terminal, one line per stage
    otherwise; see :func:`tflq.console.progress`), or None when ``enabled`` is false."""
    return console.progress(enabled, desc, total, unit)


def prepare_data(job, model):
    """Opens, samples and checks calibration and evaluation data (nothing written)."""
    specs = model.inputs
    calib = open_data(job.data, specs, job.data_options)
    calib_indices = sampling.sample_indices(len(calib), job.num_calibration_samples, job.seed)
    if given(job.eval_data):
        evaluation = open_data(job.eval_data, specs, job.data_options)
        eval_indices = list(range(len(evaluation)))
    else:
        evaluation = calib
        taken = set(calib_indices)
        eval_indices = [i for i in range(len(calib)) if i not in taken]
        if not eval_indices:
            raise ValueError(
                f"No evaluation data: all {len(calib)} samples of {calib.description!r} are used for "
                "calibration. Pass eval_data (--eval_data) or fewer calibration samples."
            )
    if job.num_eval_samples is not None:
        eval_indices = eval_indices[: job.num_eval_samples]
    eval_stats = sampling.scan(
        evaluation, specs, eval_indices,
        progress=progress(job.progress, "check eval data", len(eval_indices)))
    calib_stats = sampling.scan(
        calib, specs, calib_indices, reference=eval_stats,
        reference_name=f"the evaluation data {evaluation.description!r}",
        progress=progress(job.progress, "check calibration data", len(calib_indices)))
    return calib, calib_indices, evaluation, eval_indices, calib_stats, eval_stats


def evaluate(model, batches, runners: dict, progress_bar=None, observers=(), primary: int = 0):
    """One streaming pass: the float model and every runner on the same batches.

    Args:
      model: the float :class:`tflq.models.LoadedModel` (the reference).
      batches: iterable of ``({input name: array}, labels or None)``.
      runners: ``{key: object with run(batch) -> list of outputs}`` (e.g. .tflite models).
      progress_bar: wraps ``batches`` (see :func:`progress`), or None.
      observers: callables ``(batch, labels, reference, outputs)`` for job-specific
        comparisons; ``outputs`` maps each runner key to its outputs on the batch.
      primary: the output whose top-1 class counts (accuracy, agreement); ``labels`` are its
        class labels.

    Returns:
      ``(float result, {key: metrics.Comparison}, first batch)``; the float result's
      ``accuracy`` is None without labels.
    """
    comparisons = {key: metrics.Comparison(primary) for key in runners}
    labels_seen = metrics.Comparison(primary)  # float model vs labels (reference = itself)
    first_batch = None
    for batch, labels in (progress_bar(batches) if progress_bar else batches):
        if first_batch is None:
            first_batch = batch
        reference = model.predict(batch)
        labels_seen.update(reference, reference, labels)
        outputs = {key: runner.run(batch) for key, runner in runners.items()}
        for key, out in outputs.items():
            comparisons[key].update(reference, out, labels)
        for observe in observers:
            observe(batch, labels, reference, outputs)
    return labels_seen.result(), comparisons, first_batch


def array_batches(x: dict, y, batch_size: int):
    """``({name: array[i:i + batch_size]}, labels[i:i + batch_size] or None)`` over arrays."""
    total = len(next(iter(x.values())))
    for start in range(0, total, batch_size):
        yield ({n: v[start:start + batch_size] for n, v in x.items()},
               None if y is None else y[start:start + batch_size])


def evaluate_trained(job, float_model, runner, float32: bytes, x_eval: dict, targets, observer,
                     more_observers=()):
    """The evaluation of a training job (QAT, compress): the float model and the int8 .tflite
    on the evaluation data, with ``observer`` (and ``more_observers``) for the job's own
    comparisons, then latency of the float32 and int8 .tflite side by side. Returns (float
    result, comparisons, latency)."""
    from tflq import interpreter

    float_result, compared, _ = evaluate(
        float_model, array_batches(x_eval, targets.eval_class_labels, job.batch_size),
        {"int8": runner}, observers=[observer, *more_observers], primary=targets.primary)
    latency = interpreter.measure_latency(
        {"float32": interpreter.TfliteModel(float32, num_threads=job.num_threads),
         "int8": runner}, {n: v[:1] for n, v in x_eval.items()}, runs=job.latency_runs)
    return float_result, compared, latency


def load_training_data(job, model, labelled: bool = True):
    """Train and evaluation arrays of a training job (``train_data``, ``eval_data``,
    ``num_train_samples``, ``seed``) and ``feed``, which turns ``{name: array}`` into what the
    Keras model takes (one array, or a list in input order)."""
    names = model.input_names
    x_train, y_train = sampling.load_arrays(job.train_data, model.inputs, job.num_train_samples,
                                            job.seed, "Training data" if labelled else None)
    x_eval, y_eval = sampling.load_arrays(job.eval_data, model.inputs, None, job.seed,
                                          "Evaluation data" if labelled else None)

    def feed(x):
        return x[names[0]] if len(names) == 1 else [x[n] for n in names]

    return x_train, y_train, x_eval, y_eval, feed


def add_layer_error(mode_rows: list[dict], float_content: bytes, contents: dict[str, bytes],
                    samples, num_samples: int) -> dict | None:
    """Measures per-layer error (:mod:`tflq.layer_error`) of every non-float32 .tflite on the
    first ``num_samples`` of ``samples`` (batch-1 dicts) and puts it in its mode row
    (``layers`` and ``layer_error``). Returns ``{"samples", "seconds"}``, or None when
    ``num_samples`` is 0 (disabled)."""
    import itertools
    import time

    from tflq import layer_error

    if num_samples == 0:
        return None
    start = time.perf_counter()
    wanted = {row["mode"]: contents[row["mode"]] for row in mode_rows
              if row["mode"] != "float32" and row["mode"] in contents}
    measured = layer_error.measure(float_content, wanted,
                                   itertools.islice(samples, num_samples))
    for row in mode_rows:
        if row["mode"] in measured:
            found = measured[row["mode"]]
            row["layers"] = found.pop("layers")
            row["layer_error"] = found
            if found["note"]:
                row["notes"].append(found["note"])
    counts = [found["samples"] for found in measured.values()]
    return {"samples": counts[0] if counts else 0, "modes": sorted(measured),
            "seconds": time.perf_counter() - start}


def check_samples(x: dict, feed, count: int = 64, batch_size: int = 16) -> list:
    """Up to ``count`` inputs from ``x`` in batches, as the Keras model takes them: the data a
    graph rewrite or Keras 3 rebuild is checked on."""
    total = min(count, len(next(iter(x.values()))))
    return [feed({n: v[i:i + batch_size] for n, v in x.items()})
            for i in range(0, total, batch_size)]


def base_report(*, model, source: str, settings: dict, data: dict, float_section: dict,
                modes: list[dict], gates: report.Gates, **sections) -> dict:
    """The report every job kind writes: schema, time, versions, machine, model, settings,
    data, float model, mode rows, gates computed over the rows, then the job's own sections."""
    failures = gates.check(modes)
    return {
        "schema_version": report.SCHEMA_VERSION,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": runtime.versions(),
        "machine": runtime.machine_description(),
        "model": report.model_section(model, source),
        "settings": settings,
        "data": data,
        "float": float_section,
        "modes": modes,
        "gates": {**gates.to_dict(), "passed": not failures, "failures": failures},
        **sections,
    }


def finish(out: str | None, full_report: dict, files: dict[str, bytes]) -> JobResult:
    """Renders the artifacts and report.json/md/png/html (:func:`render_outputs`) and writes
    them atomically to ``out``, or nothing when ``out`` is None (the files are in the result's
    ``contents``); the exit code follows the gates."""
    contents = render_outputs(full_report, files)
    written = write_files(out, contents) if out is not None else []
    failures = tuple(full_report["gates"]["failures"])
    return JobResult(report=full_report, files=tuple(written),
                     exit_code=runtime.EXIT_GATE if failures else runtime.EXIT_OK,
                     gate_failures=failures, contents=contents)


def render_outputs(full_report: dict, files: dict[str, bytes]) -> dict[str, bytes]:
    """Every output file of a job by name: its artifacts, then the report files."""
    return {**files, **dict(report_files(full_report))}


def write_files(out: str, contents: dict[str, bytes]) -> list[str]:
    """Writes each ``name: bytes`` under ``out`` (created if needed), each atomically."""
    os.makedirs(out, exist_ok=True)
    written = []
    for name, content in contents.items():
        path = os.path.join(out, name)
        write_atomic(path, content)
        written.append(path)
    return written


def report_files(full_report: dict, png: bool = True) -> list[tuple[str, bytes]]:
    """``(name, bytes)`` of report.json, report.md, report.png (unless ``png`` is false) and
    report.html."""
    from tflq import report_html

    items = [("report.json", report.to_json(full_report)),
             ("report.md", report.to_markdown(full_report).encode())]
    if png:
        items.append(("report.png", report.to_png(full_report)))
    items.append(("report.html", report_html.to_html(full_report).encode()))
    return items


def write_outputs(out: str, full_report: dict, files: dict[str, bytes]) -> list[str]:
    """Writes each file, then report.json, report.md, report.png and report.html, each
    atomically."""
    return write_files(out, render_outputs(full_report, files))


def tflite_output_names(content: bytes, keras_names) -> list[str]:
    """The .tflite signature names of a Keras model's outputs, in the Keras model's output
    order (signatures list outputs by name; a QAT model's outputs are named ``quant_<layer>``).

    Raises:
      RuntimeError: an output cannot be found (a bug: the .tflite came from that model).
    """
    from tflq.interpreter import TfliteModel

    available = TfliteModel(content).output_names
    if len(keras_names) == 1 and len(available) == 1:
        return list(available)
    found = []
    for i, name in enumerate(keras_names):
        match = [n for n in (name, f"quant_{name}", f"output_{i}") if n in available]
        if not match:
            raise RuntimeError(f"internal error: output {name!r} is not among the .tflite's "
                               f"outputs {available}.")
        found.append(match[0])
    return found


@dataclasses.dataclass
class TrainingTargets:
    """What a training job learns from, per output (see :mod:`tflq.quant.heads`).

    Attributes:
      heads: one :class:`tflq.quant.heads.Head` per output.
      train: training labels per output, or None (no labels: a teacher supplies the targets).
      eval: evaluation labels per output, or None.
      primary: the output whose top-1 class the mode rows count.
    """

    heads: list
    train: list | None
    eval: list | None
    primary: int

    @property
    def fit_labels(self):
        """``y`` for ``fit``: None, one array (one output) or a list in output order."""
        if self.train is None:
            return None
        return self.train[0] if len(self.train) == 1 else list(self.train)

    @property
    def eval_class_labels(self):
        """Class labels of the primary output on the evaluation data, or None."""
        if self.eval is None or self.heads[self.primary].kind != "kl":
            return None
        return self.eval[self.primary]

    def to_dict(self) -> dict:
        return {h.name: {"loss": h.kind, "softmax": h.softmax, "reason": h.reason,
                         "labels": self.train is not None} for h in self.heads}


def training_targets(job, keras_model, loaded, y_train, y_eval) -> TrainingTargets:
    """Matches labels to the outputs of ``keras_model`` (tf_keras, the model being trained;
    ``loaded`` is its :class:`tflq.models.LoadedModel`) and chooses each output's loss
    (``job.output_losses`` overrides the inference)."""
    from tflq.quant import heads

    names = list(keras_model.output_names)
    train = heads.match_labels(y_train, names, job.train_data, loaded.output_names)
    evaluation = heads.match_labels(y_eval, names, job.eval_data, loaded.output_names)
    found = heads.infer_heads(keras_model, dict(job.output_losses), train)
    return TrainingTargets(found, train, evaluation, heads.primary_head(found))


def rebuild_notes(model) -> list[str]:
    """The mode-row note on a Keras 3 model's tf_keras rebuild or a SavedModel's Keras graph
    (what was inlined or kept, which config keys tf_keras does not know were dropped, how
    closely the outputs matched); [] otherwise."""
    found = model.rebuild_notes
    if not found:
        return []
    line = (f"{found['what']}, outputs checked on {found['checked_samples']} "
            f"training samples (max error {found['max_relative_error']:.2g} of range)")
    if found.get("inlined"):
        line += f"; nested models inlined: {', '.join(map(str, found['inlined']))}"
    if found.get("dropped_config_keys"):
        line += f"; config keys tf_keras lacks, dropped: {found['dropped_config_keys']}"
    return [line]

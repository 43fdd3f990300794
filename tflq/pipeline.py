"""The conversion job: load → calibrate → convert every mode → validate → report → gates.

Importing this module does not import TensorFlow (only running a job does), so job specs
can be built and checked cheaply, e.g. by the batch runner.

Everything is checked and computed in memory before the first byte is written, so a bad
input leaves the output folder exactly as it was. Outputs are then written one file at a
time, each atomically.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import shutil
import tempfile
import time
from importlib import metadata

from tflq import calibration, metrics, options, report

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_GATE = 3


@dataclasses.dataclass(frozen=True)
class ConvertJob:
    """Everything one conversion run needs; checked on creation.

    Attributes:
      model: model path or ``module:function``.
      data: calibration data (see :func:`tflq.calibration.open_data`).
      eval_data: evaluation data; None evaluates on the samples of ``data`` not drawn for
        calibration.
      modes: converter modes, in order.
      out: output folder.
      num_calibration_samples: how many calibration samples to draw (with ``seed``).
      num_eval_samples: cap on evaluation samples (None: all).
      seed: sampling seed.
      num_threads: interpreter threads for validation and latency.
      batch_size: evaluation batch size.
      latency_runs: timed batch-1 runs per mode after warm-up.
      convert_options: converter settings.
      data_options: normalization/resizing of image data.
      gates: quality gates.
      progress: show progress bars on stderr.
      recipes: LiteRT Quantizer recipes (:data:`tflq.litert_backend.RECIPES`) applied to
        the float32 .tflite, reported beside the converter modes as ``litert:<recipe>``.
    """

    model: str
    data: str
    out: str
    eval_data: str | None = None
    modes: tuple[str, ...] = options.ALL_MODES
    num_calibration_samples: int = 500
    num_eval_samples: int | None = None
    seed: int = 0
    num_threads: int = 1
    batch_size: int = 256
    latency_runs: int = 50
    convert_options: options.ConvertOptions = options.ConvertOptions()
    data_options: calibration.DataOptions = calibration.DataOptions()
    gates: report.Gates = report.Gates()
    progress: bool = True
    recipes: tuple[str, ...] = ()

    def __post_init__(self):
        options.parse_modes(list(self.modes))
        from tflq import litert_backend

        for recipe in self.recipes:
            litert_backend.check_recipe(recipe)
        if len(set(self.recipes)) != len(self.recipes):
            raise ValueError(f"recipes lists a recipe twice: {list(self.recipes)}")
        for name in ("num_calibration_samples", "num_threads", "batch_size", "latency_runs"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer. Received: {name}={value!r}")
        if self.num_eval_samples is not None and self.num_eval_samples < 1:
            raise ValueError(
                f"num_eval_samples must be positive. Received: num_eval_samples={self.num_eval_samples}"
            )
        if not self.out:
            raise ValueError("out must name an output folder. Received: out=''")

    def to_dict(self) -> dict:
        """A JSON-ready dict; :meth:`from_dict` rebuilds an equal job."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ConvertJob:
        data = dict(data)
        data["modes"] = tuple(data["modes"])
        data["recipes"] = tuple(data.get("recipes", ()))
        data["convert_options"] = options.ConvertOptions(**data["convert_options"])
        image_size = data["data_options"].get("image_size")
        data["data_options"] = calibration.DataOptions(
            normalize=data["data_options"]["normalize"],
            image_size=tuple(image_size) if image_size else None)
        data["gates"] = report.Gates(**data["gates"])
        return cls(**data)

    def settings(self) -> dict:
        return {
            "modes": list(self.modes),
            "litert_recipes": list(self.recipes),
            "num_calibration_samples": self.num_calibration_samples,
            "num_eval_samples": self.num_eval_samples,
            "seed": self.seed,
            "num_threads": self.num_threads,
            "batch_size": self.batch_size,
            "latency_runs": self.latency_runs,
            **self.convert_options.to_dict(),
            "normalize": self.data_options.normalize,
            "image_size": list(self.data_options.image_size) if self.data_options.image_size else None,
        }


@dataclasses.dataclass(frozen=True)
class JobResult:
    """What a run produced: the report, the files written, and the exit code to use."""

    report: dict
    files: tuple[str, ...]
    exit_code: int
    gate_failures: tuple[str, ...]


def check_output_dir(out: str) -> None:
    """Refuses an output folder that cannot be created or written, before any work.

    Raises:
      ValueError: ``out`` is a file, sits under a file, or its nearest existing folder is
        not writable.
    """
    path = os.path.abspath(out)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"Output path {out!r} exists and is not a folder.")
    ancestor = path
    while not os.path.exists(ancestor):
        parent = os.path.dirname(ancestor)
        if parent == ancestor:
            break
        ancestor = parent
    if not os.path.isdir(ancestor):
        raise ValueError(f"Output folder {out!r} cannot be created: {ancestor!r} is not a folder.")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"Output folder {out!r} is not writable ({ancestor!r} is read-only).")


def versions() -> dict:
    def version_of(dist):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    return {
        "tflq": version_of("tflq") or "dev",
        "tensorflow": version_of("tensorflow"),
        "litert": version_of("ai-edge-litert"),
        "tensorflow_model_optimization": version_of("tensorflow-model-optimization"),
        "numpy": version_of("numpy"),
    }


def machine_description() -> str:
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU(s), Python {platform.python_version()}"


def _progress(enabled: bool, desc: str, total: int | None, unit: str = "sample"):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return lambda items: tqdm(items, desc=desc, total=total, unit=unit, leave=False)


def _prepare_data(job: ConvertJob, model):
    """Opens, samples and checks calibration and evaluation data (nothing written)."""
    specs = model.inputs
    calib = calibration.open_data(job.data, specs, job.data_options)
    calib_indices = calibration.sample_indices(len(calib), job.num_calibration_samples, job.seed)
    if job.eval_data:
        evaluation = calibration.open_data(job.eval_data, specs, job.data_options)
        eval_indices = list(range(len(evaluation)))
    else:
        evaluation = calib
        taken = set(calib_indices)
        eval_indices = [i for i in range(len(calib)) if i not in taken]
        if not eval_indices:
            raise ValueError(
                f"No evaluation data: all {len(calib)} samples of {job.data!r} are used for "
                "calibration. Pass eval_data (--eval_data) or fewer calibration samples."
            )
    if job.num_eval_samples is not None:
        eval_indices = eval_indices[: job.num_eval_samples]
    eval_stats = calibration.scan(
        evaluation, specs, eval_indices,
        progress=_progress(job.progress, "check eval data", len(eval_indices)))
    calib_stats = calibration.scan(
        calib, specs, calib_indices, reference=eval_stats,
        reference_name=f"the evaluation data {evaluation.description!r}",
        progress=_progress(job.progress, "check calibration data", len(calib_indices)))
    return calib, calib_indices, evaluation, eval_indices, calib_stats, eval_stats


@dataclasses.dataclass(frozen=True)
class _RecipeMode:
    """A LiteRT recipe in the place of a converter :class:`tflq.options.Mode`."""

    value: str
    needs_calibration: bool = False


def run_job(job: ConvertJob) -> JobResult:
    """Runs one conversion job end to end and writes its outputs.

    Returns:
      A :class:`JobResult`; ``exit_code`` is 3 when a gate failed (outputs still written).

    Raises:
      ValueError: bad input of any kind; nothing has been written.
    """
    from tflq import convert as converter
    from tflq import interpreter, preflight
    from tflq.keras_compat import load_model

    modes = options.parse_modes(list(job.modes))
    check_output_dir(job.out)
    model = load_model(job.model)
    calib, calib_indices, evaluation, eval_indices, calib_stats, eval_stats = _prepare_data(
        job, model)
    scratch = tempfile.mkdtemp(prefix="tflq-")
    try:
        representative = calibration.representative_dataset(calib, model.inputs, calib_indices)
        conversions = {}
        wanted = list(modes) if options.Mode.FLOAT32 in modes else [options.Mode.FLOAT32, *modes]
        bar = _progress(job.progress, "convert", len(wanted), unit="mode")
        for mode in (bar(wanted) if bar else wanted):
            conversions[mode] = converter.convert_model(
                model, mode, scratch,
                representative=representative if mode.needs_calibration else None,
                options=job.convert_options)
        float_content = conversions[options.Mode.FLOAT32].content
        for recipe in job.recipes:  # LiteRT Quantizer on the float .tflite
            from tflq import litert_backend

            start = time.perf_counter()
            content = litert_backend.quantize(float_content, recipe, representative)
            mode = _RecipeMode(f"litert:{recipe}")
            conversions[mode] = converter.Conversion(
                mode=mode, content=content, float_ops=tuple(converter.find_float_ops(content)),
                seconds=time.perf_counter() - start)
            modes = [*modes, mode]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    selective = None
    if job.convert_options.selective:
        selective = _selective(job, model, conversions, representative, evaluation,
                               eval_indices)
    float_size = len(conversions[options.Mode.FLOAT32].content)
    runners = {
        mode: interpreter.TfliteModel(conversions[mode].content, model.output_names,
                                      num_threads=job.num_threads)
        for mode in modes
    }
    float_cmp, comparisons, first_batch = _evaluate(job, model, evaluation, eval_indices, runners)
    latency = interpreter.measure_latency(
        {m.value: r for m, r in runners.items()}, first_batch, runs=job.latency_runs)
    float_result = float_cmp
    stem = model.stem
    mode_rows = []
    for mode in modes:
        conv = conversions[mode]
        notes = [report.MODE_NOTES[mode.value]] if mode.value in report.MODE_NOTES else []
        if mode.value == "int8" and job.convert_options.equalize:
            notes.append("cross-layer equalization and bias correction before quantizing")
        if mode.value == "int8" and job.convert_options.range_estimator:
            notes.append(f"activation ranges: {job.convert_options.range_estimator} estimator "
                         "(tflq.ranges), converted through tflq's QAT graph")
        if mode.value == "int8" and selective is not None:
            notes.append(f"selective: {len(selective['kept_float'])} most sensitive op(s) kept "
                         f"in float ({'budget met' if selective['met'] else 'budget NOT met'})")
        if mode.value.startswith("litert:"):
            from tflq.litert_backend import RECIPES

            notes = [f"LiteRT Quantizer recipe: {RECIPES[mode.value[len('litert:'):]][1]}"]
        mode_rows.append(report.mode_row(
            mode.value, f"{stem}_{mode.value.replace(':', '_')}.tflite", conv.content,
            float_size, conv.float_ops, comparisons[mode].result(), float_result["accuracy"],
            latency[mode.value], conv.seconds, notes))
    failures = job.gates.check(mode_rows)
    full_report = {
        "schema_version": report.SCHEMA_VERSION,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "machine": machine_description(),
        "model": report.model_section(model, job.model),
        "settings": job.settings(),
        "data": {
            "calibration": {"source": job.data, "num_samples": len(calib_indices),
                            "range": calib_stats.to_dict()},
            "evaluation": {"source": job.eval_data or f"{job.data} (samples not calibrated on)",
                           "num_samples": len(eval_indices),
                           "has_labels": float_result["accuracy"] is not None,
                           "range": eval_stats.to_dict()},
        },
        "float": {"accuracy": float_result["accuracy"], "float32_tflite_bytes": float_size},
        "modes": mode_rows,
        "gates": {**job.gates.to_dict(), "passed": not failures, "failures": failures},
        "preflight": [f.to_dict() for f in preflight.static_findings(model)],
    }
    if selective is not None:
        full_report["selective"] = {k: v for k, v in selective.items() if k != "content"}
    files = _write_outputs(job.out, full_report, {
        row["path"]: conv.content for row, conv in zip(
            mode_rows, (conversions[m] for m in modes), strict=True)})
    return JobResult(report=full_report, files=tuple(files),
                     exit_code=EXIT_GATE if failures else EXIT_OK,
                     gate_failures=tuple(failures))


def _selective(job, model, conversions, representative, evaluation, eval_indices) -> dict:
    """Replaces the int8 conversion with the selectively quantized model (see
    :mod:`tflq.selective`); returns the search record."""
    import dataclasses as dc

    from tflq import convert as converter
    from tflq import interpreter, selective

    if options.Mode.INT8 not in conversions:
        raise ValueError("--selective needs the int8 mode.")
    budget = job.gates.max_accuracy_drop
    if budget is None:
        raise ValueError("--selective needs --max_accuracy_drop (the accuracy budget).")
    scratch = tempfile.mkdtemp(prefix="tflq-selective-")
    try:
        conv = model.make_converter(scratch)
        converter._configure(conv, options.Mode.INT8,
                             dc.replace(job.convert_options, allow_float_ops=True,
                                        selective=False), representative)
        names = model.input_names

        def debug_samples():
            for i, sample in enumerate(representative()):
                if i >= 64:
                    break
                yield [sample[n] for n in names]

        debugger, ranked = selective.sensitivities(conv, debug_samples)

        def drop_of(content: bytes) -> float:
            runner = interpreter.TfliteModel(content, model.output_names,
                                             num_threads=job.num_threads)
            quiet = dc.replace(job, progress=False)
            float_result, comparisons, _ = _evaluate(quiet, model, evaluation, eval_indices,
                                                     {"candidate": runner})
            accuracy = comparisons["candidate"].result()["accuracy"]
            if accuracy is None or float_result["accuracy"] is None:
                raise ValueError("--selective needs labelled evaluation data.")
            return 100.0 * (float_result["accuracy"] - accuracy)

        found = selective.search(debugger, ranked, drop_of, budget)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    content = found["content"]
    # What keeping ops in float costs: size and latency against the all-int8 model.
    first = next(calibration.iter_batches(evaluation, model.inputs, 1, eval_indices[:1]))[0]
    all_int8 = found.pop("all_int8_content")
    latency = interpreter.measure_latency(
        {"all_int8": interpreter.TfliteModel(all_int8, model.output_names,
                                             num_threads=job.num_threads),
         "selective": interpreter.TfliteModel(content, model.output_names,
                                              num_threads=job.num_threads)},
        first, runs=job.latency_runs)
    found["cost"] = {"all_int8_bytes": len(all_int8), "selective_bytes": len(content),
                     "all_int8_latency_ms": latency["all_int8"]["median"],
                     "selective_latency_ms": latency["selective"]["median"]}
    conversions[options.Mode.INT8] = converter.Conversion(
        mode=options.Mode.INT8, content=content,
        float_ops=tuple(converter.find_float_ops(content)),
        seconds=conversions[options.Mode.INT8].seconds)
    found["ranked"] = [dc.asdict(s) for s in ranked]
    return found


def _evaluate(job, model, evaluation, eval_indices, runners):
    """One streaming pass: float model and every .tflite on the same batches."""
    comparisons = {mode: metrics.Comparison() for mode in runners}
    labels_seen = metrics.Comparison()  # float model vs labels (reference = itself)
    first_batch = None
    batches = calibration.iter_batches(evaluation, model.inputs, job.batch_size, eval_indices)
    total = -(-len(eval_indices) // job.batch_size)
    bar = _progress(job.progress, "validate", total, unit="batch")
    for batch, labels in (bar(batches) if bar else batches):
        if first_batch is None:
            first_batch = batch
        reference = model.predict(batch)
        labels_seen.update(reference, reference, labels)
        for mode, runner in runners.items():
            comparisons[mode].update(reference, runner.run(batch), labels)
    return labels_seen.result(), comparisons, first_batch


def _write_outputs(out: str, full_report: dict, models: dict[str, bytes]) -> list[str]:
    from tflq.fileio import write_atomic

    os.makedirs(out, exist_ok=True)
    written = []
    items = list(models.items()) + [
        ("report.json", report.to_json(full_report)),
        ("report.md", report.to_markdown(full_report).encode()),
        ("report.png", report.to_png(full_report)),
    ]
    for name, content in items:
        path = os.path.join(out, name)
        write_atomic(path, content)
        written.append(path)
    return written

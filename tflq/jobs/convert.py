"""The conversion job: load → calibrate → convert every mode → validate → report → gates.

Importing this module does not import TensorFlow (only running a job does), so job specs
can be built and checked cheaply, e.g. by the batch runner.

Everything is checked and computed in memory before the first byte is written, so a bad
input leaves the output folder exactly as it was. Outputs are then written one file at a
time, each atomically.
"""

from __future__ import annotations

import dataclasses
import itertools
import shutil
import sys
import tempfile
import time

import tflq.jobs.convert_selective as convert_selective
from tflq import options, report, sampling
from tflq.data import DataOptions
from tflq.jobs.common import (
    OUTPUT_TASKS_HELP,
    JobResult,
    add_layer_error,
    base_report,
    evaluate,
    finish,
    given,
    prepare_data,
    progress,
    refuse_in_memory,
)
from tflq.layer_error import DEFAULT_SAMPLES
from tflq.runtime import check_output_dir
from tflq.settings import setting
from tflq.task_metrics import normalize_output_tasks

__all__ = ["ConvertJob", "run_job", "below_converter_warnings", "WARN_BELOW_CONVERTER_PP",
           "BASELINE", "BACKENDS", "BACKEND_HELP", "DEFAULT_RECIPES"]

# Who quantizes (the --backend of pipelines.convert; the flag is shared with pipelines.batch,
# where it means where jobs run, hence one help text for both).
BACKENDS = ("converter", "litert", "both")
BACKEND_HELP = ("pipelines.batch: where jobs run, local or ray (default local). "
                "pipelines.convert: who quantizes, converter, litert (LiteRT Quantizer "
                "--recipes) or both side by side (default converter).")
DEFAULT_RECIPES = ("static_wi8_ai8", "dynamic_wi8_afp32", "weight_only_wi8_afp32")


@dataclasses.dataclass(frozen=True)
class ConvertJob:
    """Everything one conversion run needs; checked on creation.

    Attributes:
      model: model path or ``module:function``, or a tf_keras / Keras 3 model object.
      data: calibration data (see :func:`tflq.data.open_data`: a path, ``module:function``,
        or arrays, a dict, an ``(x, y)`` tuple, a ``tf.data.Dataset`` or a function).
      eval_data: evaluation data; None evaluates on the samples of ``data`` not drawn for
        calibration.
      modes: converter modes, in order.
      out: output folder; None writes nothing (the files are in the result's ``contents``).
      num_calibration_samples: how many calibration samples to draw (with ``seed``).
      num_eval_samples: cap on evaluation samples (None: all).
      seed: sampling seed.
      num_threads: interpreter threads for validation and latency.
      batch_size: evaluation batch size.
      latency_runs: timed batch-1 runs per mode after warm-up.
      convert_options: converter settings.
      data_options: normalization/resizing of image data.
      gates: quality gates.
      progress: show progress on stderr: True (bars on a terminal, one line per stage
        otherwise), ``"bars"``, ``"lines"`` or False.
      recipes: LiteRT Quantizer recipes (:data:`tflq.ptq.litert_backend.RECIPES`) applied to
        the float32 .tflite, reported beside the converter modes as ``litert:<recipe>``.
      layer_error_samples: calibration samples for the per-layer error of every mode but
        float32 (:mod:`tflq.layer_error`); 0 turns it off.
      output_tasks: the task each named output is measured as (``{name: task}``, a string
        ``"name=task,..."`` or pairs; :data:`tflq.task_metrics.TASKS`); the others are
        inferred from their shape and final activation (:mod:`tflq.jobs.outputs`).
      backend: who quantizes, as ``--backend``: ``converter`` (no recipes), ``litert`` (the
        float32 reference and ``recipes``, default :data:`DEFAULT_RECIPES`) or ``both``; None
        takes ``modes`` and ``recipes`` as given.

    Each user-facing field is a :func:`tflq.settings.setting`: its flag and spec key.
    """

    model: object = setting(
        "Model: .keras (Keras 3 or tf_keras), .h5, SavedModel folder, or package.module:function. "
        "Default: the bundled Fashion-MNIST CNN.", kind="str", is_path=True)
    data: object = setting(
        "Calibration data: .npz/.npy, IDX images file, image folder, or package.module:function. "
        "Required with --model.", kind="str", is_path=True)
    out: str | None = setting("Output folder for .tflite files and reports (default: tflq_out).",
                              kind="str")
    eval_data: object | None = setting(
        "Evaluation data (same kinds as --data). Default: the samples of --data not drawn for "
        "calibration (the bundled evaluation slice for the example).", None, kind="str",
        is_path=True)
    modes: tuple[str, ...] = setting(
        "Comma list of converter modes: " + ", ".join(options.ALL_MODES) + ".", options.ALL_MODES,
        flag_kind="string")
    num_calibration_samples: int = setting(
        "Calibration samples drawn from --data with --seed (default: 500).", 500, flag_none=True)
    num_eval_samples: int | None = setting(
        "Evaluate on at most this many samples (default: all).", None, kind="int")
    seed: int = setting("Seed for drawing calibration samples.", 0)
    num_threads: int = setting("Interpreter threads.", 1)
    batch_size: int = setting("Evaluation batch size (default: 256).", 256, flag_none=True)
    latency_runs: int = setting("Timed batch-1 runs per mode (default: 50).", 50, flag_none=True)
    convert_options: options.ConvertOptions = options.ConvertOptions()
    data_options: DataOptions = DataOptions()
    gates: report.Gates = report.Gates()
    progress: bool | str = True
    recipes: tuple[str, ...] = setting(
        "Comma list of LiteRT Quantizer recipes for --backend litert/both (default: "
        f"{','.join(DEFAULT_RECIPES)}; also static_wi8_ai16, dynamic_wi4_afp32, "
        "weight_only_wi4_afp32).", (), flag_kind="string", flag_none=True)
    layer_error_samples: int = setting(
        "Calibration (QAT: training) samples for the per-layer error of every quantized mode "
        "(default: 16; 0 turns it off).", DEFAULT_SAMPLES, flag_none=True)
    # None (the API): as modes and recipes say; commands and specs: converter unless told.
    backend: str | None = setting(BACKEND_HELP, None, choices=BACKENDS, flag_kind="string",
                                  flag_none=True, cli_default="converter")
    output_tasks: tuple = setting(OUTPUT_TASKS_HELP, (), kind="losses", flag_none=True)

    def __post_init__(self):
        self._resolve_backend()
        object.__setattr__(self, "output_tasks", normalize_output_tasks(self.output_tasks))
        object.__setattr__(self, "modes", tuple(m.value for m in options.parse_modes(
            self.modes if isinstance(self.modes, str) else list(self.modes))))
        object.__setattr__(self, "recipes", tuple(self.recipes))
        from tflq.ptq import litert_backend

        for recipe in self.recipes:
            litert_backend.check_recipe(recipe)
        if len(set(self.recipes)) != len(self.recipes):
            raise ValueError(f"recipes lists a recipe twice: {list(self.recipes)}")
        for name in ("num_calibration_samples", "num_threads", "batch_size", "latency_runs"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer. Received: {name}={value!r}")
        if (not isinstance(self.layer_error_samples, int) or isinstance(self.layer_error_samples, bool)
                or self.layer_error_samples < 0):
            raise ValueError("layer_error_samples must be an integer >= 0 (0 turns per-layer error "
                             f"off). Received: layer_error_samples={self.layer_error_samples!r}")
        if self.num_eval_samples is not None and self.num_eval_samples < 1:
            raise ValueError(
                f"num_eval_samples must be positive. Received: num_eval_samples={self.num_eval_samples}"
            )
        if self.out is not None and not self.out:
            raise ValueError("out must name an output folder (or be None: write nothing). "
                             "Received: out=''")

    def _resolve_backend(self) -> None:
        """``backend`` sets ``modes``/``recipes`` the way the command line does: ``litert`` keeps
        only the float32 reference, ``litert``/``both`` default to :data:`DEFAULT_RECIPES`."""
        if self.backend is None:
            return
        if self.backend not in BACKENDS:
            raise ValueError(f"Unknown --backend {self.backend!r} for pipelines.convert. "
                             f"Available: {list(BACKENDS)}")
        if self.backend == "converter" and self.recipes:
            raise ValueError("--recipes needs --backend litert or --backend both.")
        if self.backend != "converter" and not self.recipes:
            object.__setattr__(self, "recipes", DEFAULT_RECIPES)
        if self.backend == "litert":
            if tuple(self.modes) not in (options.ALL_MODES, ("float32",)):
                raise ValueError("--modes picks converter modes; with --backend litert use "
                                 "--recipes (or --backend both for converter and LiteRT side by "
                                 "side).")
            object.__setattr__(self, "modes", ("float32",))

    def to_dict(self) -> dict:
        """A JSON-ready dict; :meth:`from_dict` rebuilds an equal job.

        Raises:
          ValueError: the job holds an in-memory model or data (not serializable).
        """
        refuse_in_memory(self, "ConvertJob.to_dict")
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ConvertJob:
        data = dict(data)
        data["modes"] = tuple(data["modes"])
        data["recipes"] = tuple(data.get("recipes", ()))
        data["convert_options"] = options.ConvertOptions(**data["convert_options"])
        image_size = data["data_options"].get("image_size")
        data["data_options"] = DataOptions(
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
            "layer_error_samples": self.layer_error_samples,
            "output_tasks": dict(self.output_tasks),
            **self.convert_options.to_dict(),
            "normalize": self.data_options.normalize,
            "image_size": list(self.data_options.image_size) if self.data_options.image_size else None,
        }


@dataclasses.dataclass(frozen=True)
class _RecipeMode:
    """A LiteRT recipe in the place of a converter :class:`tflq.options.Mode`."""

    value: str
    needs_calibration: bool = False


# A quantized mode more than this far below the plain converter's top-1 agreement on the
# same data gets a warning (report and stderr): tflq's methods must earn their place.
WARN_BELOW_CONVERTER_PP = 2.0
BASELINE = "int8 (plain converter)"  # the runner key of the plain converter's int8


def run_job(job: ConvertJob) -> JobResult:
    """Runs one conversion job end to end and writes its outputs (none when ``job.out`` is
    None: the result's ``contents`` holds them).

    Returns:
      A :class:`JobResult`; ``exit_code`` is 3 when a gate failed (outputs still written).

    Raises:
      ValueError: bad input of any kind; nothing has been written.
    """
    from tflq import interpreter
    from tflq.jobs import outputs
    from tflq.models import load_model
    from tflq.ptq import preflight

    modes = options.parse_modes(list(job.modes))
    if job.out is not None:
        check_output_dir(job.out)
    model = load_model(job.model)
    observer = outputs.start(model, job.output_tasks, job.gates,
                             [m.value for m in modes] + [f"litert:{r}" for r in job.recipes])
    calib, calib_indices, evaluation, eval_indices, calib_stats, eval_stats = prepare_data(
        job, model)
    representative = sampling.representative_dataset(calib, model.inputs, calib_indices)
    route = model.prepare_conversion(list(itertools.islice(representative(), 64)))
    if model.flavor == "keras3":
        print(f"tflq: {route}", file=sys.stderr)
    conversions, modes, baseline = _convert_all(job, model, modes, representative)
    selective = None
    if job.convert_options.selective:
        selective = convert_selective.run_selective(job, model, conversions, representative, calib,
                                                     calib_indices, observer.headline)
    runners = {mode: interpreter.TfliteModel(conversions[mode].content, model.output_names,
                                             num_threads=job.num_threads) for mode in modes}
    if baseline is not None:
        runners[BASELINE] = interpreter.TfliteModel(baseline, model.output_names,
                                                    num_threads=job.num_threads)
    float_result, comparisons, first_batch = _evaluate(job, model, evaluation, eval_indices,
                                                       runners, observer)
    runners.pop(BASELINE, None)
    latency = interpreter.measure_latency(
        {m.value: r for m, r in runners.items()}, first_batch, runs=job.latency_runs)
    mode_rows = _mode_rows(job, model, modes, conversions, comparisons, float_result, latency,
                           selective)
    float_size = len(conversions[options.Mode.FLOAT32].content)
    slow = outputs.complete(mode_rows, observer, {m.value: conversions[m].content for m in modes},
                            job.num_threads)
    measured = add_layer_error(mode_rows, conversions[options.Mode.FLOAT32].content,
                               {m.value: conversions[m].content for m in modes},
                               representative(), job.layer_error_samples)
    full_report = base_report(
        model=model, source=model.source, settings=job.settings(),
        data={
            "calibration": {"source": calib.description, "num_samples": len(calib_indices),
                            "range": calib_stats.to_dict()},
            "evaluation": {"source": evaluation.description if given(job.eval_data)
                           else f"{calib.description} (samples not calibrated on)",
                           "num_samples": len(eval_indices),
                           "has_labels": float_result["accuracy"] is not None,
                           "range": eval_stats.to_dict()},
        },
        float_section={"accuracy": float_result["accuracy"], "float32_tflite_bytes": float_size},
        modes=mode_rows, gates=job.gates,
        preflight=[f.to_dict() for f in preflight.static_findings(model)],
        warnings=below_converter_warnings(mode_rows, comparisons) + slow,
        output_tasks=observer.section)
    if baseline is not None:
        full_report["plain_converter_int8"] = {
            k: v for k, v in comparisons[BASELINE].result().items() if k != "accuracy"}
    if measured is not None:
        measured["conversion_seconds"] = sum(conversions[m].seconds or 0.0 for m in conversions)
        full_report["layer_error"] = measured
    if selective is not None:
        full_report["selective"] = {k: v for k, v in selective.items() if k != "content"}
    return finish(job.out, full_report, {
        row["path"]: conv.content for row, conv in zip(
            mode_rows, (conversions[m] for m in modes), strict=True)})


def _convert_all(job: ConvertJob, model, modes: list, representative):
    """Every converter mode (float32 always, for sizes), LiteRT recipes, and, when int8 uses
    a tflq method, the plain converter's int8 as the baseline to compare it with.

    Returns ``(conversions, modes with recipes appended, baseline bytes or None)``."""
    from tflq import tflite_inspect
    from tflq.ptq import auto
    from tflq.ptq import convert as converter

    settings = job.convert_options
    tflq_method = (settings.equalize or settings.range_estimator or settings.auto
                   or settings.adaround)
    scratch = tempfile.mkdtemp(prefix="tflq-")
    try:
        conversions = {}
        wanted = list(modes) if options.Mode.FLOAT32 in modes else [options.Mode.FLOAT32, *modes]
        bar = progress(job.progress, "convert", len(wanted), unit="mode")
        for mode in (bar(wanted) if bar else wanted):
            if mode == options.Mode.INT8 and settings.auto:
                conversions[mode], _ = auto.search(
                    model, list(representative()), settings, scratch, num_threads=job.num_threads,
                    progress=progress(job.progress, "auto", len(auto.CANDIDATES), "candidate"))
                continue
            conversions[mode] = converter.convert_model(
                model, mode, scratch,
                representative=representative if mode.needs_calibration else None,
                options=settings, progress=lambda *stage: progress(job.progress, *stage))
        baseline = None
        if options.Mode.INT8 in modes and (tflq_method or settings.selective or job.recipes):
            plain = dataclasses.replace(settings, range_estimator=None, equalize=False,
                                        selective=False, auto=False, adaround=False,
                                        adaround_bits=8, equalize_relu6="bounded")
            try:
                baseline = converter.convert_model(model, options.Mode.INT8, scratch,
                                                   representative, plain).content
            except ValueError as e:  # tflq's method converted what the plain converter refuses
                if options.Mode.INT8 not in conversions:
                    raise
                note = f"the plain converter refuses this model, so nothing to compare with: {e}"
                print(f"tflq: {note}", file=sys.stderr)
                done = conversions[options.Mode.INT8]
                conversions[options.Mode.INT8] = dataclasses.replace(done, notes=(*done.notes, note))
        float_content = conversions[options.Mode.FLOAT32].content
        for recipe in job.recipes:  # LiteRT Quantizer on the float .tflite
            from tflq.ptq import litert_backend

            start = time.perf_counter()
            content = litert_backend.quantize(float_content, recipe, representative)
            mode = _RecipeMode(f"litert:{recipe}")
            conversions[mode] = converter.Conversion(
                mode=mode, content=content,
                float_ops=tuple(tflite_inspect.find_float_ops(content)),
                seconds=time.perf_counter() - start)
            modes = [*modes, mode]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if baseline is None and options.Mode.INT8 in conversions and job.recipes:
        baseline = conversions[options.Mode.INT8].content
    return conversions, modes, baseline


def _mode_rows(job, model, modes, conversions, comparisons, float_result, latency, selective):
    from tflq.ptq.litert_backend import RECIPES

    float_size = len(conversions[options.Mode.FLOAT32].content)
    rows = []
    for mode in modes:
        conv = conversions[mode]
        notes = [report.MODE_NOTES[mode.value]] if mode.value in report.MODE_NOTES else []
        notes += list(conv.notes)
        if mode.value == "int8" and job.convert_options.range_estimator:
            notes.append(f"activation ranges: {job.convert_options.range_estimator} estimator "
                         "(tflq.ptq.ranges), converted through tflq's QAT graph")
        if mode.value == "int8" and selective is not None:
            notes.append(f"selective: {len(selective['kept_float'])} most sensitive op(s) kept "
                         f"in float ({'budget met' if selective['met'] else 'budget NOT met'})")
        if mode.value.startswith("litert:"):
            notes = [f"LiteRT Quantizer recipe: {RECIPES[mode.value[len('litert:'):]][1]}"]
        row = report.mode_row(
            mode.value, f"{model.stem}_{mode.value.replace(':', '_')}.tflite", conv.content,
            float_size, conv.float_ops, comparisons[mode].result(), float_result["accuracy"],
            latency[mode.value], conv.seconds, notes)
        if conv.details:
            row["methods"] = conv.details
        rows.append(row)
    return rows


def below_converter_warnings(mode_rows: list[dict], comparisons: dict) -> list[str]:
    """One line per int8-family mode (tflq's int8 methods, LiteRT's static int8 recipe)
    whose top-1 agreement with the float model is more than
    :data:`WARN_BELOW_CONVERTER_PP` below the plain converter's int8 on the same data."""
    if BASELINE not in comparisons:
        return []
    plain = comparisons[BASELINE].result()["top1_agreement"]
    found = []
    for row in mode_rows:
        if row["mode"] not in ("int8", "litert:static_wi8_ai8"):
            continue
        gap = 100.0 * (plain - row["top1_agreement"])
        if gap > WARN_BELOW_CONVERTER_PP:
            found.append(f"{row['mode']}: top-1 agreement {100 * row['top1_agreement']:.2f}% is "
                         f"{gap:.2f} pp below the plain converter's int8 ({100 * plain:.2f}%) "
                         "on the same evaluation data")
    return found


def _evaluate(job: ConvertJob, model, evaluation, eval_indices, runners, observer):
    """:func:`tflq.jobs.common.evaluate` over the job's samples and batches, with the
    per-output ``observer`` (the headline columns count its headline output)."""
    batches = sampling.iter_batches(evaluation, model.inputs, job.batch_size, eval_indices)
    bar = progress(job.progress, "validate", -(-len(eval_indices) // job.batch_size), "batch")
    return evaluate(model, batches, runners, bar, [observer], observer.headline)

"""Batch specs (TOML or YAML): parsed and checked before any job starts; errors name the
file and line. Importing this module does not import TensorFlow."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence

from tflq import options, report
from tflq.batch.pool import WorkerPolicy
from tflq.data import DataOptions
from tflq.factories import FACTORY_RE
from tflq.jobs import convert as convert_job

__all__ = ["DEFAULT_TIMEOUT", "SETTING_TYPES", "JOB_ONLY_KEYS", "TOP_KEYS", "OUTPUT_KEYS",
    "WORKER_KEYS", "JobSpec", "BatchSpec", "load_spec"]

DEFAULT_TIMEOUT = 3600.0


_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


# Settings a job (or [defaults]) may hold, with the JSON types accepted.
SETTING_TYPES: dict[str, tuple[type, ...]] = {
    "model": (str,), "data": (str,), "eval_data": (str,), "modes": (list, str),
    "num_calibration_samples": (int,), "num_eval_samples": (int,), "seed": (int,),
    "num_threads": (int,), "batch_size": (int,), "latency_runs": (int,),
    "integer_io": (bool,), "per_tensor": (bool,), "allow_float_ops": (bool,),
    "normalize": (str,), "image_size": (list,), "max_accuracy_drop": (int, float),
    "min_agreement": (int, float), "timeout": (int, float), "max_memory_mb": (int,),
    "output_tasks": (str, dict), "gate": (list, str),
}


JOB_ONLY_KEYS = ("name", "out")


TOP_KEYS = ("defaults", "jobs", "output", "workers")


OUTPUT_KEYS = ("layout",)


# The [workers] table: how jobs are isolated (see tflq.batch.pool.WorkerPolicy).
WORKER_KEYS: dict[str, tuple[type, ...]] = {
    "isolation": (str,), "max_jobs_per_worker": (int,), "max_worker_rss_mb": (int,),
}


@dataclasses.dataclass(frozen=True)
class JobSpec:
    """One job of a batch: its name, output folder (relative to the batch's), settings."""

    name: str
    out: str
    job: convert_job.ConvertJob
    timeout: float
    max_memory_mb: int | None
    line: int | None


@dataclasses.dataclass(frozen=True)
class BatchSpec:
    """A checked spec: its file, its jobs and the ``[workers]`` policy."""

    path: str
    jobs: tuple[JobSpec, ...]
    policy: WorkerPolicy = WorkerPolicy()


def _line_of(text_lines: Sequence[str], key: str, start: int = 0) -> int | None:
    pattern = re.compile(rf"^\s*-?\s*[\"']?{re.escape(key)}[\"']?\s*[=:]")
    for i in range(start, len(text_lines)):
        if pattern.match(text_lines[i]):
            return i + 1
    return None


def _job_lines(text_lines: Sequence[str], yaml_format: bool) -> list[int]:
    """Line numbers where each job entry starts (1-based)."""
    if not yaml_format:
        return [i + 1 for i, ln in enumerate(text_lines) if ln.strip() == "[[jobs]]"]
    starts, inside = [], False
    for i, ln in enumerate(text_lines):
        if re.match(r"^jobs\s*:", ln):
            inside = True
        elif inside and re.match(r"^\S", ln):
            inside = False
        elif inside and re.match(r"^\s*-\s", ln):
            starts.append(i + 1)
    return starts


def _parse(path: str) -> tuple[dict, list[str], bool]:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError as e:
        raise ValueError(f"Spec file not found: {path!r}") from e
    text = raw.decode("utf-8", errors="replace")
    lines = text.splitlines()
    yaml_format = path.lower().endswith((".yaml", ".yml"))
    if yaml_format:
        try:
            import yaml
        except ImportError as e:
            raise ValueError("YAML specs need PyYAML (pip install pyyaml); or use TOML.") from e
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"line {mark.line + 1}: " if mark is not None else ""
            raise ValueError(f"{path}: {where}malformed YAML: {getattr(e, 'problem', e)}") from e
    else:
        import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            match = re.search(r"\(at line (\d+), column (\d+)\)", str(e))
            where = f"line {match.group(1)}: " if match else ""
            message = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(e))
            raise ValueError(f"{path}: {where}malformed TOML: {message}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a table of [defaults], [output] and [[jobs]].")
    return data, lines, yaml_format


def _check_keys(path, lines, table: dict, allowed: Sequence[str], where: str, start: int = 0):
    for key in table:
        if key not in allowed:
            line = _line_of(lines, key, start)
            at = f"line {line}: " if line else ""
            raise ValueError(f"{path}: {at}unknown key {key!r} in {where}. "
                             f"Known: {sorted(allowed)}")


def _check_types(path, lines, table: dict, where: str, start: int = 0, types=None):
    for key, value in table.items():
        accepted = (types or SETTING_TYPES).get(key)
        if accepted is None:
            continue
        if isinstance(value, bool) and bool not in accepted:
            ok = False
        else:
            ok = isinstance(value, accepted)
        if not ok:
            line = _line_of(lines, key, start)
            at = f"line {line}: " if line else ""
            names = " or ".join(t.__name__ for t in accepted)
            raise ValueError(f"{path}: {at}{where}.{key} must be {names}. Received: {value!r}")


def _resolve_path(base: str, value: str) -> str:
    if FACTORY_RE.match(value) and not os.path.exists(os.path.join(base, value)):
        return value
    return os.path.normpath(os.path.join(base, os.path.expanduser(value)))


def _convert_job(settings: dict, out: str) -> convert_job.ConvertJob:
    modes = settings.get("modes", list(options.ALL_MODES))
    modes = options.parse_modes(modes if isinstance(modes, (list, str)) else [])
    kwargs = {k: settings[k] for k in ("num_calibration_samples", "num_eval_samples", "seed",
                                       "num_threads", "batch_size", "latency_runs")
              if k in settings}
    image_size = settings.get("image_size")
    return convert_job.ConvertJob(
        model=settings["model"], data=settings["data"], eval_data=settings.get("eval_data"),
        out=out, modes=tuple(m.value for m in modes), progress=False,
        convert_options=options.ConvertOptions(
            integer_io=settings.get("integer_io", False),
            per_channel=not settings.get("per_tensor", False),
            allow_float_ops=settings.get("allow_float_ops", False)),
        data_options=DataOptions(
            normalize=settings.get("normalize", "0_1"),
            image_size=tuple(image_size) if image_size else None),
        gates=report.Gates(max_accuracy_drop=settings.get("max_accuracy_drop"),
                           min_agreement=settings.get("min_agreement"),
                           gate=settings.get("gate", ())),
        output_tasks=settings.get("output_tasks"), **kwargs)


def load_spec(path: str, out: str, default_timeout: float = DEFAULT_TIMEOUT) -> BatchSpec:
    """Reads and checks a batch spec completely, before any job starts.

    Args:
      path: the ``.toml`` (or ``.yaml``/``.yml``) spec.
      out: the batch output folder; job outputs are resolved under it.
      default_timeout: seconds per job unless the spec sets ``timeout``.

    Raises:
      ValueError: malformed file (naming file and line), unknown keys, wrong types, no
        jobs, duplicate names or outputs, a missing model or data file, bad settings.
    """
    data, lines, yaml_format = _parse(path)
    base = os.path.dirname(os.path.abspath(path))
    _check_keys(path, lines, data, TOP_KEYS, "the spec")
    defaults = data.get("defaults", {}) or {}
    output = data.get("output", {}) or {}
    pool = data.get("workers", {}) or {}
    jobs = data.get("jobs", []) or []
    if not all(isinstance(t, dict) for t in (defaults, output, pool)):
        raise ValueError(f"{path}: [defaults], [output] and [workers] must be tables.")
    if not isinstance(jobs, list) or not jobs:
        raise ValueError(f"{path}: no jobs: add at least one [[jobs]] entry with a model.")
    _check_keys(path, lines, defaults, tuple(SETTING_TYPES), "[defaults]")
    _check_types(path, lines, defaults, "defaults")
    _check_keys(path, lines, output, OUTPUT_KEYS, "[output]")
    policy = _policy(path, lines, pool)
    layout = output.get("layout", "{name}")
    starts = _job_lines(lines, yaml_format)
    specs, names, outs = [], {}, {}
    for i, entry in enumerate(jobs):
        start = starts[i] - 1 if i < len(starts) else 0
        line = starts[i] if i < len(starts) else None
        at = f"line {line}: " if line else ""
        where = f"jobs[{i}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: {at}{where} must be a table.")
        _check_keys(path, lines, entry, tuple(SETTING_TYPES) + JOB_ONLY_KEYS, where, start)
        _check_types(path, lines, entry, where, start)
        settings = {**defaults, **entry}
        for required in ("model", "data"):
            if not settings.get(required):
                raise ValueError(f"{path}: {at}{where} has no {required!r} (set it in the job "
                                 "or in [defaults]).")
        for key in ("model", "data", "eval_data"):
            if settings.get(key):
                settings[key] = _resolve_path(base, settings[key])
                value = settings[key]
                if not FACTORY_RE.match(value) and not os.path.exists(value):
                    raise ValueError(f"{path}: {at}{where}: {key} not found: {value!r}")
        model = settings["model"]
        name = entry.get("name") or (model.split(":")[-1] if FACTORY_RE.match(model)
                                     else os.path.splitext(os.path.basename(model.rstrip("/")))[0])
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ValueError(f"{path}: {at}{where}: job name {name!r} may hold only letters, "
                             "digits, '.', '_' and '-'.")
        if name in names:
            raise ValueError(f"{path}: {at}{where}: two jobs are named {name!r} "
                             f"(the other is jobs[{names[name]}]); give each a unique name.")
        names[name] = i
        try:
            relative = entry.get("out") or layout.format(name=name)
        except (KeyError, IndexError) as e:
            raise ValueError(f"{path}: [output] layout {layout!r} may use only {{name}}.") from e
        job_out = os.path.normpath(os.path.join(out, relative))
        if job_out in outs:
            raise ValueError(f"{path}: {at}{where}: jobs {outs[job_out]!r} and {name!r} write "
                             f"to the same output {job_out!r}.")
        if os.path.commonpath([os.path.abspath(job_out), os.path.abspath(out)]) != os.path.abspath(out):
            raise ValueError(f"{path}: {at}{where}: output {relative!r} leaves the batch folder.")
        outs[job_out] = name
        try:
            job = _convert_job(settings, job_out)
        except ValueError as e:
            raise ValueError(f"{path}: {at}{where} ({name}): {e}") from e
        timeout = float(settings.get("timeout", default_timeout))
        memory = settings.get("max_memory_mb")
        if timeout <= 0 or (memory is not None and memory < 1):
            raise ValueError(f"{path}: {at}{where}: timeout and max_memory_mb must be positive.")
        specs.append(JobSpec(name=name, out=job_out, job=job, timeout=timeout,
                             max_memory_mb=memory, line=line))
    return BatchSpec(path=path, jobs=tuple(specs), policy=policy)


def _policy(path: str, lines: Sequence[str], table: dict) -> WorkerPolicy:
    start = next((i for i, ln in enumerate(lines) if ln.strip() in ("[workers]", "workers:")), 0)
    _check_keys(path, lines, table, tuple(WORKER_KEYS), "[workers]", start)
    _check_types(path, lines, table, "workers", start, types=WORKER_KEYS)
    try:
        return WorkerPolicy(**table)
    except ValueError as e:
        key = next((k for k in table if k in str(e)), None)
        line = _line_of(lines, key, start) if key else None
        raise ValueError(f"{path}: {f'line {line}: ' if line else ''}[workers]: {e}") from e



"""Batch specs (TOML or YAML): parsed and checked before any job starts; errors name the
file, line, job and key. Importing this module does not import TensorFlow.

A job's keys are the settings of its kind's job dataclass (:data:`JOB_KINDS`; the same names,
defaults and allowed values as the command's flags, see :mod:`tflq.settings`), plus
:data:`JOB_ONLY_KEYS` and the batch's own :data:`BATCH_KEYS`. ``[defaults]`` holds keys of
any kind; each job takes those its kind has."""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Sequence

from tflq import settings
from tflq.batch.pool import WorkerPolicy
from tflq.factories import FACTORY_RE
from tflq.jobs.compress import CompressJob
from tflq.jobs.convert import ConvertJob
from tflq.jobs.qat import QATJob

__all__ = ["DEFAULT_TIMEOUT", "JOB_KINDS", "BATCH_KEYS", "JOB_ONLY_KEYS", "JOB_ONLY_TYPES",
    "TOP_KEYS", "OUTPUT_KEYS", "OUTPUT_TYPES", "WORKER_KEYS", "spec_settings", "JobSpec",
    "BatchSpec", "load_spec"]

DEFAULT_TIMEOUT = 3600.0


_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


# What ``kind = "..."`` runs (default convert): the job dataclass whose settings are its keys.
JOB_KINDS = {"convert": ConvertJob, "qat": QATJob, "compress": CompressJob}


# Keys of the batch itself that a job (or [defaults]) may hold, with the types accepted.
BATCH_KEYS: dict[str, tuple[type, ...]] = {"timeout": (int, float), "max_memory_mb": (int,)}


JOB_ONLY_KEYS = ("name", "out", "kind")
JOB_ONLY_TYPES: dict[str, tuple[type, ...]] = {"name": (str,), "out": (str,), "kind": (str,)}
OUTPUT_TYPES: dict[str, tuple[type, ...]] = {"layout": (str,)}


TOP_KEYS = ("defaults", "jobs", "output", "workers")


OUTPUT_KEYS = ("layout",)


# The [workers] table: how jobs are isolated (see tflq.batch.pool.WorkerPolicy).
WORKER_KEYS: dict[str, tuple[type, ...]] = {
    "isolation": (str,), "max_jobs_per_worker": (int,), "max_worker_rss_mb": (int,),
}


def spec_settings(kind: str) -> dict[str, settings.Setting]:
    """The settings a job of ``kind`` takes as spec keys (``out`` is a job-only key: it is
    relative to the batch folder)."""
    return {s.name: s for s in settings.settings_of(JOB_KINDS[kind])
            if s.spec and s.name != "out"}


@dataclasses.dataclass(frozen=True)
class JobSpec:
    """One job of a batch: its name, output folder (relative to the batch's), kind, settings."""

    name: str
    out: str
    job: ConvertJob | QATJob | CompressJob
    timeout: float
    max_memory_mb: int | None
    line: int | None
    kind: str = "convert"


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
        accepted = types.get(key)
        if accepted is None:
            continue
        if not isinstance(value, accepted) or (isinstance(value, bool) and bool not in accepted):
            line = _line_of(lines, key, start)
            at = f"line {line}: " if line else ""
            names = " or ".join(t.__name__ for t in accepted)
            raise ValueError(f"{path}: {at}{where}.{key} must be {names}. Received: {value!r}")


def _resolve_path(base: str, value: str) -> str:
    if FACTORY_RE.match(value) and not os.path.exists(os.path.join(base, value)):
        return value
    return os.path.normpath(os.path.join(base, os.path.expanduser(value)))


@dataclasses.dataclass
class _Reader:
    """One spec file being checked: where things are, for errors that name the line."""

    path: str
    lines: Sequence[str]
    base: str
    defaults: dict

    def at(self, key: str | None, start: int) -> str:
        line = _line_of(self.lines, key, start) if key else None
        return f"line {line}: " if line else ""

    def settings(self, kind: str, entry: dict, where: str, start: int, at_job: str) -> dict:
        """The job's values: its kind's keys from [defaults], then its own, each checked."""
        known = spec_settings(kind)
        values = {}
        for source, table, first in (("[defaults]", self.defaults, 0), (where, entry, start)):
            for key, value in table.items():
                if key in JOB_ONLY_KEYS or key in BATCH_KEYS or (
                        source == "[defaults]" and key not in known):
                    continue
                if key not in known:
                    raise ValueError(
                        f"{self.path}: {self.at(key, first)}unknown key {key!r} in {where} (a "
                        f"{kind} job). Known: {sorted([*known, *JOB_ONLY_KEYS, *BATCH_KEYS])}")
                label = where if source == where else "defaults"
                try:
                    values[key] = settings.check_value(known[key], value, label)
                except ValueError as e:
                    raise ValueError(f"{self.path}: {self.at(key, first)}{e} ({where} is a {kind} "
                                     "job)") from e
        for key, item in known.items():
            if item.is_path and values.get(key):
                values[key] = _resolve_path(self.base, values[key])
                if not FACTORY_RE.match(values[key]) and not os.path.exists(values[key]):
                    raise ValueError(f"{self.path}: {at_job}{where}: {key} not "
                                     f"found: {values[key]!r}")
        return values


def _job_kind(reader: _Reader, entry: dict, where: str, start: int) -> str:
    kind = entry.get("kind", reader.defaults.get("kind", "convert"))
    if kind not in JOB_KINDS:
        raise ValueError(f"{reader.path}: {reader.at('kind', start)}{where}.kind must be one of "
                         f"{list(JOB_KINDS)}. Received: {kind!r}")
    return kind


def load_spec(path: str, out: str, default_timeout: float = DEFAULT_TIMEOUT) -> BatchSpec:
    """Reads and checks a batch spec completely, before any job starts.

    Args:
      path: the ``.toml`` (or ``.yaml``/``.yml``) spec.
      out: the batch output folder; job outputs are resolved under it.
      default_timeout: seconds per job unless the spec sets ``timeout``.

    Raises:
      ValueError: malformed file (naming file and line), unknown keys, wrong types or values
        (naming the job and key), no jobs, duplicate names or outputs, a missing model or data
        file, bad settings.
    """
    data, lines, yaml_format = _parse(path)
    _check_keys(path, lines, data, TOP_KEYS, "the spec")
    defaults = data.get("defaults", {}) or {}
    output = data.get("output", {}) or {}
    pool = data.get("workers", {}) or {}
    jobs = data.get("jobs", []) or []
    if not all(isinstance(t, dict) for t in (defaults, output, pool)):
        raise ValueError(f"{path}: [defaults], [output] and [workers] must be tables.")
    if not isinstance(jobs, list) or not jobs:
        raise ValueError(f"{path}: no jobs: add at least one [[jobs]] entry with a model.")
    every_key = {k for kind in JOB_KINDS for k in spec_settings(kind)}
    _check_keys(path, lines, defaults, sorted(every_key | set(BATCH_KEYS) | {"kind"}),
                "[defaults]")
    _check_types(path, lines, defaults, "defaults", types={**BATCH_KEYS, "kind": (str,)})
    _check_keys(path, lines, output, OUTPUT_KEYS, "[output]")
    _check_types(path, lines, output, "output", types=OUTPUT_TYPES)
    policy = _policy(path, lines, pool)
    reader = _Reader(path, lines, os.path.dirname(os.path.abspath(path)), defaults)
    starts = _job_lines(lines, yaml_format)
    specs, names, outs = [], {}, {}
    for i, entry in enumerate(jobs):
        start = starts[i] - 1 if i < len(starts) else 0
        line = starts[i] if i < len(starts) else None
        specs.append(_job_spec(reader, entry, i, start, line, out, output.get("layout", "{name}"),
                               names, outs, default_timeout))
    _check_defaults_used(reader, {s.kind for s in specs})
    return BatchSpec(path=path, jobs=tuple(specs), policy=policy)


def _check_defaults_used(reader: _Reader, kinds: set[str]) -> None:
    """A [defaults] key no job's kind has would silently do nothing: refused."""
    used = {k for kind in kinds for k in spec_settings(kind)} | set(BATCH_KEYS) | {"kind"}
    for key in reader.defaults:
        if key not in used:
            raise ValueError(f"{reader.path}: {reader.at(key, 0)}[defaults].{key} applies to no "
                             f"job of this spec (its kinds: {sorted(kinds)}).")


def _job_spec(reader: _Reader, entry, i: int, start: int, line: int | None, out: str, layout: str,
              names: dict, outs: dict, default_timeout: float) -> JobSpec:
    path, at, where = reader.path, f"line {line}: " if line else "", f"jobs[{i}]"
    if not isinstance(entry, dict):
        raise ValueError(f"{path}: {at}{where} must be a table.")
    _check_types(path, reader.lines, entry, where, start, types={**BATCH_KEYS, **JOB_ONLY_TYPES})
    kind = _job_kind(reader, entry, where, start)
    values = reader.settings(kind, entry, where, start, at)
    for item in spec_settings(kind).values():
        if item.required and not values.get(item.name):
            raise ValueError(f"{path}: {at}{where} has no {item.name!r} (a {kind} job needs it; "
                             "set it in the job or in [defaults]).")
    model = values["model"]
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
    except (KeyError, IndexError, AttributeError, ValueError, TypeError) as e:
        raise ValueError(f"{path}: [output] layout {layout!r} may use only {{name}}.") from e
    job_out = os.path.normpath(os.path.join(out, relative))
    if job_out in outs:
        raise ValueError(f"{path}: {at}{where}: jobs {outs[job_out]!r} and {name!r} write "
                         f"to the same output {job_out!r}.")
    if os.path.commonpath([os.path.abspath(job_out), os.path.abspath(out)]) != os.path.abspath(out):
        raise ValueError(f"{path}: {at}{where}: output {relative!r} leaves the batch folder.")
    outs[job_out] = name
    quiet = {"progress": False} if kind == "convert" else {}
    try:
        job = settings.build(JOB_KINDS[kind], values, out=job_out, **quiet)
    except ValueError as e:
        raise ValueError(f"{path}: {at}{where} ({name}): {e}") from e
    batch = {**{k: v for k, v in reader.defaults.items() if k in BATCH_KEYS},
             **{k: v for k, v in entry.items() if k in BATCH_KEYS}}
    timeout = float(batch.get("timeout", default_timeout))
    memory = batch.get("max_memory_mb")
    if not 0 < timeout < math.inf or (memory is not None and memory < 1):
        raise ValueError(f"{path}: {at}{where}: timeout and max_memory_mb must be positive "
                         f"(and finite). Received: timeout={timeout}, max_memory_mb={memory}")
    return JobSpec(name=name, out=job_out, job=job, timeout=timeout, max_memory_mb=memory,
                   line=line, kind=kind)


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



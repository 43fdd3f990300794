"""Job settings, defined once: each is a field of its job dataclass (or of a settings
dataclass the job nests, e.g. :class:`tflq.options.ConvertOptions`) made by :func:`setting`,
which records its help text, kind, allowed values and how users write it.

From those fields come both front ends: the absl flags of ``pipelines.convert/qat/compress/
preflight`` (:func:`pipelines.common.define_settings`, since ``tflq`` never imports absl) and
the keys of a batch spec (:mod:`tflq.batch.spec`). A flag and a spec key are the same name with
the same default and meaning; :func:`build` turns the values a user wrote into a job.

Adding a setting is one field, e.g. in :class:`tflq.jobs.convert.ConvertJob`::

    output_tasks: tuple = setting("Task per model output, e.g. 'boxes=regression'.", (),
                                  kind="losses", flag_none=True)

and the job's ``__post_init__`` checks its value as usual. No TensorFlow import here.
"""

from __future__ import annotations

import dataclasses
import json

__all__ = ["KINDS", "Setting", "setting", "settings_of", "from_flag", "check_value", "build",
           "default_text"]

# Value kinds: what users write (a flag's text, a spec's TOML/YAML value) and what the job gets.
# "losses" is any per-output mapping (output_losses, output_tasks): a table or "name=value,...".
KINDS = ("bool", "int", "float", "str", "enum", "list", "size", "json", "losses")
# The absl flag kind of each value kind (a "list" may instead be a comma string flag, or a
# repeatable "multi_string" flag: --gate a --gate b).
_FLAG_KINDS = {"bool": "bool", "int": "integer", "float": "float", "str": "string",
               "enum": "enum", "list": "list", "size": "string", "json": "string",
               "losses": "string"}
# What a spec value of each kind must be, as said in errors.
_EXPECTED = {"bool": "bool", "int": "int", "float": "int or float", "str": "str",
             "list": "list or str (a list of strings, or one comma-separated string)",
             "size": "list [height, width] of two positive ints", "json": "list of tables",
             "losses": "str or table (output = value, or 'name=value,...')"}
_MISSING = dataclasses.MISSING


@dataclasses.dataclass(frozen=True)
class Setting:
    """One user-facing setting of a job (see :func:`setting`).

    Attributes:
      name: the flag name and spec key.
      path: attribute path in the job, e.g. ``("convert_options", "per_channel")``.
      kind: one of :data:`KINDS`.
      default: the default as users write it (``per_tensor`` False for ``per_channel`` True);
        :data:`dataclasses.MISSING` for a required setting.
      help: the help text (the flag's; the spec table's).
      choices: allowed values of an ``enum`` (as users write them), else None.
      flag_kind: the absl kind (``bool``, ``integer``, ``float``, ``string``, ``enum``, ``list``,
        ``multi_string``: a repeatable flag holding a list).
      flag_default: the flag's default: :attr:`default`, or None where the command fills the
        default in (flags several commands share with different defaults say it in their help).
      negate: the flag/key is the negation of the field (``per_tensor`` → ``per_channel``).
      none_as: the word standing for a None field (``activation_ranges = "default"``).
      is_path: names a file, folder or ``module:function`` (relative to a spec file).
      cli, spec: whether the setting is a flag, a spec key.
    """

    name: str
    path: tuple[str, ...]
    kind: str
    default: object
    help: str
    choices: tuple | None
    flag_kind: str
    flag_default: object
    negate: bool = False
    none_as: str | None = None
    is_path: bool = False
    cli: bool = True
    spec: bool = True

    @property
    def required(self) -> bool:
        return self.default is _MISSING


def setting(help: str, default=_MISSING, *, flag: str | None = None, kind: str | None = None,
            choices=None, flag_kind: str | None = None, flag_none: bool = False,
            negate: bool = False, none_as: str | None = None, cli_default=_MISSING,
            is_path: bool = False, cli: bool = True, spec: bool = True):
    """A dataclass field that is a user-facing setting (``help`` goes into its metadata).

    Args:
      help: help text of the flag and the spec key.
      default: the field's default (omit for a required field).
      flag: the flag/key name when it differs from the field's (``per_tensor``).
      kind: value kind (:data:`KINDS`); inferred from the default (bool, int, float, str,
        tuple → list; ``choices`` → enum) when omitted.
      choices: allowed values (an enum).
      flag_kind: the absl kind when it differs from the kind's usual one (``string`` for a
        comma-separated list flag, ``multi_string`` for a repeatable one).
      flag_none: the flag defaults to None and the job's default applies (the help says it).
      negate: the flag/key holds ``not field``.
      none_as: the enum word that means None.
      cli_default: the default of the command line and the spec where it differs from the
        Python API's (``epochs``: commands train longer than a notebook's quick try).
      is_path: a path or ``module:function``.
      cli, spec: False keeps the setting off the command line / out of specs.
    """
    meta = {"help": help, "flag": flag, "kind": kind, "choices": tuple(choices) if choices else None,
            "flag_kind": flag_kind, "flag_none": flag_none, "negate": negate, "none_as": none_as,
            "cli_default": cli_default, "is_path": is_path, "cli": cli, "spec": spec}
    return dataclasses.field(default=default, metadata={"setting": meta})


def _kind_of(meta: dict, default, name: str) -> str:
    if meta["kind"]:
        return meta["kind"]
    if meta["choices"]:
        return "enum"
    for kind, types in (("bool", bool), ("int", int), ("float", float), ("str", str),
                        ("list", tuple)):
        if isinstance(default, types):
            return kind
    raise TypeError(f"setting {name!r}: give kind= (its default {default!r} does not tell it)")


def _user_default(meta: dict, field: dataclasses.Field, kind: str):
    default = field.default if meta["cli_default"] is _MISSING else meta["cli_default"]
    if default is _MISSING:
        return _MISSING
    if meta["negate"]:
        return not default
    if default is None and meta["none_as"]:
        return meta["none_as"]
    if isinstance(default, tuple):
        return list(default)
    return default


def _make(field: dataclasses.Field, path: tuple[str, ...]) -> Setting:
    meta = field.metadata["setting"]
    name = meta["flag"] or field.name
    kind = _kind_of(meta, field.default, name)
    default = _user_default(meta, field, kind)
    choices = meta["choices"]
    if meta["none_as"]:
        choices = (meta["none_as"], *choices)
    flag_kind = meta["flag_kind"] or _FLAG_KINDS[kind]
    if meta["flag_none"] or default is _MISSING:
        flag_default = None
    elif kind == "enum":
        flag_default = None if default is None else str(default)
    elif flag_kind == "string" and kind == "list":
        flag_default = ",".join(default)
    else:
        flag_default = default
    return Setting(name=name, path=path, kind=kind, default=default, help=meta["help"],
                   choices=choices, flag_kind=flag_kind, flag_default=flag_default,
                   negate=meta["negate"], none_as=meta["none_as"], is_path=meta["is_path"],
                   cli=meta["cli"], spec=meta["spec"])


def settings_of(job_class) -> tuple[Setting, ...]:
    """Every setting of a job class, its nested settings dataclasses included, in field order."""
    found = []

    def walk(cls, prefix):
        for field in dataclasses.fields(cls):
            if "setting" in field.metadata:
                found.append(_make(field, (*prefix, field.name)))
            elif dataclasses.is_dataclass(field.default):
                walk(type(field.default), (*prefix, field.name))

    walk(job_class, ())
    return tuple(found)


def from_flag(item: Setting, raw, label: str):
    """A flag's parsed value as the user-facing value (``--modes int8,float16`` → a list).

    Raises:
      ValueError: naming ``label`` (the flag), e.g. an image size that is not ``HxW``.
    """
    if item.kind == "enum" and item.choices and isinstance(item.choices[-1], int):
        return int(raw)
    if item.kind == "list" and isinstance(raw, str):
        return [part.strip() for part in raw.split(",") if part.strip()]
    if item.kind == "list":
        return list(raw)
    if item.kind == "size":
        parts = raw.lower().split("x")
        if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise ValueError(f"{label} must look like 224x224. Received: {raw!r}")
        return [int(parts[0]), int(parts[1])]
    if item.kind == "json":
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ValueError(f"{label} is not valid JSON: {e}") from e
        if not isinstance(value, list):
            raise ValueError(f"{label} must be a JSON list. Received: {raw!r}")
        return value
    return raw


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _fits(item: Setting, value) -> bool:
    kind = item.kind
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return _is_int(value)
    if kind == "float":
        return _is_int(value) or isinstance(value, float)
    if kind in ("str", "enum"):
        return isinstance(value, str) or (kind == "enum" and _is_int(value))
    if kind == "list":
        return isinstance(value, str) or (isinstance(value, list)
                                          and all(isinstance(v, str) for v in value))
    if kind == "size":
        return isinstance(value, list) and len(value) == 2 and all(
            _is_int(v) and v > 0 for v in value)
    if kind == "json":
        return isinstance(value, list) and all(isinstance(v, dict) for v in value)
    return isinstance(value, str) or (isinstance(value, dict)
                                      and all(isinstance(v, str) for v in value.values()))


def check_value(item: Setting, value, where: str):
    """A spec value checked against its setting; returns it as the user-facing value
    (a comma string for a list becomes a list).

    Raises:
      ValueError: ``"<where>.<key> must be <what>. Received: <value>"``; for an enum the
        allowed values.
    """
    if value is None and item.default is None:
        return None
    if not _fits(item, value):
        expected = (f"one of {list(item.choices)}" if item.kind == "enum"
                    else _EXPECTED[item.kind])
        raise ValueError(f"{where}.{item.name} must be {expected}. Received: {value!r}")
    if item.kind == "enum" and value not in item.choices:
        raise ValueError(f"{where}.{item.name} must be one of {list(item.choices)}. "
                         f"Received: {value!r}")
    if item.kind == "list" and isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _field_value(item: Setting, value):
    if item.negate:
        return not value
    if item.none_as is not None and value == item.none_as:
        return None
    if isinstance(value, list):
        return tuple(value)
    if item.kind == "losses" and isinstance(value, dict):
        return tuple(value.items())
    return value


def build(job_class, values: dict, **fields):
    """A job of ``job_class`` from user-facing values by setting name (a flag's or a spec's);
    settings not given take their user default (:attr:`Setting.default`). ``fields`` are
    passed to the job as they are (e.g. ``out``, ``progress``).

    Raises:
      ValueError: an unknown name, or the job's own checks.
    """
    items = {s.name: s for s in settings_of(job_class)}
    unknown = sorted(set(values) - set(items))
    if unknown:
        raise ValueError(f"Unknown setting(s) {unknown} for {job_class.__name__}. "
                         f"Known: {sorted(items)}")
    nested: dict[str, dict] = {}
    direct = {}
    for name, item in items.items():
        if name not in values and item.default is _MISSING:
            continue
        value = _field_value(item, values[name] if name in values else item.default)
        if len(item.path) == 1:
            direct[item.path[0]] = value
        else:
            nested.setdefault(item.path[0], {})[item.path[1]] = value
    for owner, kwargs in nested.items():
        container = next(f for f in dataclasses.fields(job_class) if f.name == owner)
        direct[owner] = type(container.default)(**kwargs)
    return job_class(**{**direct, **fields})


def default_text(item: Setting) -> str:
    """The default as a spec user writes it (``–`` for none, ``required`` when there is none)."""
    if item.required:
        return "required"
    if item.default is None or item.default == []:
        return "–"
    return json.dumps(item.default)

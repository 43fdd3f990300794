"""What every command shares: flag definitions, the exit-code contract, quiet output, help.

Each script runs in its own process and defines its flags at import, as absl scripts do.
Tests import several scripts into one process; a flag that two scripts both define (same
name, same kind, same default) is then defined once and shared, and values are set per
test with ``flagsaver``. Two scripts defining one name with a different kind or default
is a programming error caught at import.

Every command is ``run()`` → :func:`run_main` (flags, ``--help``, ``--version``, quiet
output) → ``main(argv)`` → :func:`guard` (the exit-code contract) → the job:

  0 done; 1 internal error (one ``internal error:`` line, the traceback in
  ``<out>/error.log``, nothing else left in ``<out>``); 2 the user's input is wrong, flags
  included (one ``error:`` line, nothing written); 3 a quality gate failed (outputs written).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import textwrap
import traceback
from collections.abc import Callable

from absl import app, flags

from tflq import settings

_DEFINED: dict[str, tuple[str, object]] = {}  # registry: flag name -> (kind, default)


def define(kind: str, name: str, default, help_text: str, **kwargs) -> flags.FlagHolder:
    """``flags.DEFINE_<kind>`` that tolerates an identical definition from another script."""
    if name in _DEFINED:
        if _DEFINED[name] != (kind, default):
            raise ValueError(
                f"Flag --{name} is defined twice with different kinds or defaults: "
                f"{_DEFINED[name]} vs {(kind, default)}. Give both None and resolve the default "
                "in main().")
        return flags.FlagHolder(flags.FLAGS, flags.FLAGS[name])
    if kind == "enum":
        holder = flags.DEFINE_enum(name, default, kwargs.pop("enum_values"), help_text, **kwargs)
    else:
        holder = getattr(flags, f"DEFINE_{kind}")(name, default, help_text, **kwargs)
    _DEFINED[name] = (kind, default)
    return holder


def require(**values) -> None:
    """Raises ValueError naming the first flag (by keyword) whose value is missing."""
    for name, value in values.items():
        if not value:
            raise ValueError(f"--{name} is required.")


def define_settings(job_class, skip: tuple[str, ...] = ()) -> dict[str, flags.FlagHolder]:
    """Defines one flag per setting of ``job_class`` (:func:`tflq.settings.settings_of`): its
    name, kind, default, help text and, for an enum, allowed values come from the job's field.

    Args:
      job_class: a job dataclass, e.g. :class:`tflq.jobs.convert.ConvertJob`.
      skip: settings the command defines itself.

    Returns:
      ``{setting name: FlagHolder}``; read them with :func:`setting_values`.
    """
    holders = {}
    for item in settings.settings_of(job_class):
        if not item.cli or item.name in skip:
            continue
        extra = {}
        if item.flag_kind == "enum":
            extra["enum_values"] = [str(c) for c in item.choices]
        holders[item.name] = define(item.flag_kind, item.name, item.flag_default, item.help,
                                    **extra)
    return holders


def setting_values(job_class, holders: dict[str, flags.FlagHolder]) -> dict:
    """The values the user set (flags left at None are left out: the job's default applies),
    as :func:`tflq.settings.build` takes them.

    Raises:
      ValueError: a flag value that does not parse (naming the flag).
    """
    values = {}
    for item in settings.settings_of(job_class):
        holder = holders.get(item.name)
        if holder is not None and holder.value is not None:
            values[item.name] = settings.from_flag(item, holder.value, f"--{item.name}")
    return values


def build_settings_job(job_class, holders: dict[str, flags.FlagHolder], default_out: str,
                       required: tuple[str, ...] = (), **build_kwargs):
    """The job a command's flags describe: :func:`setting_values`, then :func:`require` on the
    ``required`` settings, ``out`` from :func:`output_folder_of`, and
    :func:`tflq.settings.build`.

    Args:
      job_class: the job dataclass whose settings the flags are (:func:`define_settings`).
      holders: the ``{setting name: FlagHolder}`` of :func:`define_settings`.
      default_out: the output folder when ``--out`` is not given.
      required: settings that must be given, checked in this order.
      **build_kwargs: passed to :func:`tflq.settings.build` (e.g. ``verbose``).

    Raises:
      ValueError: a flag value that does not parse, or a required flag missing (naming it).
    """
    values = setting_values(job_class, holders)
    require(**{name: values.get(name) for name in required})
    values["out"] = output_folder_of(holders, default_out)
    return settings.build(job_class, values, **build_kwargs)


def output_folder_of(holders: dict[str, flags.FlagHolder], default_out: str) -> str:
    """``--out``, or ``default_out`` when it is not given (or empty)."""
    return holders["out"].value or default_out


def report_warnings(result) -> None:
    """Prints each of the report's warnings as one ``warning:`` line on stderr."""
    for line in result.report.get("warnings", []):
        print(f"warning: {line}", file=sys.stderr)


def report_gates(result) -> int:
    """Prints one ``quality gate failed:`` line on stderr when a gate failed; returns the job's
    exit code (0, or 3 for a failed gate)."""
    import sys

    if result.gate_failures:
        print(f"quality gate failed: {'; '.join(result.gate_failures)}", file=sys.stderr)
    return result.exit_code


_VERBOSE = define("bool", "verbose", False,
                  "Show TensorFlow's, the converter's and LiteRT's own output live on stderr "
                  "(by default it is kept in <out>/tflq.log) and internal errors' tracebacks.")
_PROGRESS = define("bool", "progress", False,
                   "Progress bars even when stderr is not a terminal (by default: bars on a "
                   "terminal, one line per stage with its duration otherwise).")
_VERSION = define("bool", "version", False, "Print the versions of tflq and its stack and exit.")

HELP_FLAGS = ("--help", "-help", "-h", "--helpshort", "--helpfull", "-?")
ERROR_LOG = "error.log"
CAPTURE_LOG = "tflq.log"


def progress_setting(quiet: bool = False) -> bool | str:
    """What a job's ``progress`` gets: False with --quiet, bars with --progress, else True
    (bars on a terminal, one line per stage otherwise; see :func:`tflq.console.progress`)."""
    if quiet:
        return False
    return "bars" if _PROGRESS.value else True


def keras_verbose() -> int:
    """``fit(verbose=...)``: 1 (a bar per epoch) on a terminal or with --progress, else 2 (one
    line per epoch)."""
    from tflq import console

    return 1 if console.wants_bars(progress_setting()) else 2


def guard(body: Callable[[], int], out: str | None, keep_partial: bool = False) -> int:
    """Runs a command's body under the exit-code contract and returns the exit code.

    ``ValueError``, ``OSError`` (a file that cannot be read or written: the message names it)
    and ``app.UsageError`` are the user's input: one ``error:`` line, exit 2. Any other
    exception is tflq's fault: one ``internal error:`` line, the traceback in
    ``<out>/error.log`` (on stderr with --verbose), exit 1. On either, files and folders the
    run created under ``out`` are removed again (``keep_partial`` keeps them, for a batch
    whose finished jobs are its resumable cache and which checks its whole spec before
    writing anything). :class:`tflq.runtime.Interrupted` (a lost peer of a multi-worker run):
    one ``interrupted:`` line, exit 1, and only what the rerun resumes from is kept.
    KeyboardInterrupt passes through.

    Args:
      body: the command; returns 0 or 3 (or 1 for a batch with a failed job).
      out: the output folder, or None when the command has none.
    """
    before = None if keep_partial else _listing(out)
    try:
        return body()
    except (ValueError, app.UsageError) as e:
        if not keep_partial:
            _remove_new(out, before)
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        return 2
    except OSError as e:
        if not keep_partial:
            _remove_new(out, before)
        print(f"error: {one_line(_os_error_message(e))}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - an interruption, else ours: exit 1
        from tflq.runtime import Interrupted

        interrupted = isinstance(e, Interrupted)
        if not keep_partial:
            _remove_new(out, before, keep=e.keep if interrupted else ())
        if interrupted:
            if _VERBOSE.value:
                traceback.print_exc()
            print(f"interrupted: {e}", file=sys.stderr)
            return 1
        where = _report_internal_error(out, traceback.format_exc())
        summary = str(e).splitlines()[0][:300] if str(e) else ""
        print(f"internal error: {type(e).__name__}{': ' + summary if summary else ''} "
              f"({where}; please report it)", file=sys.stderr)
        return 1


def one_line(message: str) -> str:
    """A message on one line (parsers such as PyYAML's put the position on a second line)."""
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


def _os_error_message(e: OSError) -> str:
    if e.filename is None:
        return str(e)
    return f"cannot access {e.filename!r}: {e.strerror or type(e).__name__}"


def _report_internal_error(out: str | None, trace: str) -> str:
    """Writes the traceback (and the output captured so far) where the user finds it; returns
    a phrase saying where."""
    from tflq import console

    if _VERBOSE.value:
        sys.stderr.write(trace)
        return "traceback above"
    capture = console.active_capture()
    content = trace
    if capture is not None:
        content += ("\n--- output of TensorFlow, the converter and LiteRT until the error ---\n"
                    + capture.text().decode(errors="replace"))
        capture.kept = True
    path = None
    if out is not None:
        try:
            os.makedirs(out, exist_ok=True)
            path = os.path.join(out, ERROR_LOG)
            from tflq.fileio import write_atomic

            write_atomic(path, content.encode())
        except OSError:
            path = None
    if path is None:
        fd, path = tempfile.mkstemp(prefix="tflq-error-", suffix=".log")
        with os.fdopen(fd, "w") as f:
            f.write(content)
    return f"traceback in {path}"


def _listing(out: str | None) -> set[str] | None:
    """Relative paths of everything under ``out`` (None: no folder yet)."""
    if out is None or not os.path.isdir(out):
        return None
    found = set()
    for root, dirs, files in os.walk(out):
        for name in dirs + files:
            found.add(os.path.relpath(os.path.join(root, name), out))
    return found


def _remove_new(out: str | None, before: set[str] | None, keep: tuple[str, ...] = ()) -> None:
    """Removes what a failed run created under ``out`` (the folder itself if it was new),
    except the ``keep`` paths and the folders holding them."""
    if out is None or not os.path.isdir(out):
        return
    kept = [os.path.relpath(os.path.abspath(k), os.path.abspath(out)) for k in keep]
    if before is None and not kept:
        shutil.rmtree(out, ignore_errors=True)
        return

    def is_kept(name: str) -> bool:
        return any(name == k or name.startswith(k + os.sep) or k.startswith(name + os.sep)
                   for k in kept)

    for name in sorted(_listing(out) - (before or set()), key=len):
        path = os.path.join(out, name)
        if is_kept(name):
            continue
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            os.unlink(path)


def check_no_arguments(argv) -> None:
    """``main`` takes flags only: stray words are a usage error (exit 2)."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])} (flags are "
                             "written --name=value).")


COMMON_FLAGS = frozenset({_VERBOSE.name, _PROGRESS.name, _VERSION.name})  # every command's


def command_flags(module) -> set[str]:
    """The flags a command module defines (``_NAME = define(...)`` and the ``{name: holder}`` of
    :func:`define_settings`), without :data:`COMMON_FLAGS`."""
    found = list(vars(module).values())
    found += [h for v in vars(module).values() if isinstance(v, dict) for h in v.values()]
    return {h.name for h in found if isinstance(h, flags.FlagHolder)} - COMMON_FLAGS


def help_text(module) -> str:
    """The command's docstring (its examples exactly as written) and its flags: those the
    module holds (``_NAME = define(...)``) and the ones every command takes."""
    parts = [(module.__doc__ or "").strip("\n"), "", "Flags:"]
    for name in sorted(command_flags(module) | COMMON_FLAGS):
        flag = flags.FLAGS[name]
        default = "" if flag.default is None else f" (default: {flag.default_as_str})"
        parts.append(textwrap.fill(f"--{name}: {flag.help}{default}", width=100,
                                   initial_indent="  ", subsequent_indent="      "))
    return "\n".join(parts) + "\n"


def print_versions() -> None:
    from tflq import runtime

    names = {"litert": "ai-edge-litert", "tensorflow_model_optimization": "tfmot"}
    for key, value in runtime.versions().items():
        print(f"{names.get(key, key)} {value or 'not installed'}")


def run_main(main: Callable[[list[str]], int], output_folder: Callable[[], str | None],
             argv: list[str] | None = None) -> None:
    """The entry point of every command (``python -m pipelines.X`` and the installed
    ``tflq-X``); in place of ``absl.app.run``. Exits with ``main``'s code.

    Parses the flags itself (a bad value, an unknown flag or an enum typo: one ``error:``
    line, exit 2), answers ``--help`` (exit 0) and ``--version`` (exit 0), sets the
    environment before TensorFlow is imported, and, unless ``--verbose``, runs ``main`` with
    file descriptors 1 and 2 captured; the capture is kept in ``<out>/tflq.log`` once the
    command wrote its outputs (never after exit 2, so a bad input leaves ``<out>`` as it was).

    Args:
      main: ``main(argv) -> exit code``.
      output_folder: returns the output folder once flags are parsed (None: none).
    """
    from tflq import console, runtime

    argv = list(sys.argv if argv is None else argv)
    module = sys.modules[main.__module__]
    if any(a in HELP_FLAGS for a in argv[1:]):
        sys.stdout.write(help_text(module))
        sys.exit(0)
    try:
        rest = flags.FLAGS(argv)
    except flags.Error as e:
        message = " ".join(str(e).split())
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)
    if _VERSION.value:
        print_versions()
        sys.exit(0)
    runtime.configure_environment(verbose=_VERBOSE.value)
    try:
        if _VERBOSE.value:
            from absl import logging

            logging.use_absl_handler()
            sys.exit(main(rest))
        with console.OutputCapture() as capture:
            code = main(rest)
        _keep_capture(capture, output_folder(), code, _command_line(module, argv))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code)


def _command_line(module, argv: list[str]) -> str:
    spec = getattr(module, "__spec__", None)
    name = (f"python -m {spec.name}" if module.__name__ == "__main__" and spec is not None
            else os.path.basename(argv[0]))
    return " ".join([name, *argv[1:]])


def _keep_capture(capture, out: str | None, code: int, command_line: str) -> None:
    """Saves the captured output as ``<out>/tflq.log`` when the run wrote its outputs."""
    if capture.kept or code == 2 or out is None or not os.path.isdir(out):
        return
    header = (f"# {command_line}\n"
              "# Output of TensorFlow, the converter and LiteRT (shown live with --verbose).\n")
    try:
        capture.save(os.path.join(out, CAPTURE_LOG), header)
    except OSError as e:
        print(f"warning: could not write {CAPTURE_LOG}: {_os_error_message(e)}", file=sys.stderr)

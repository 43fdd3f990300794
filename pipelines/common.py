"""Flag definitions shared by the pipeline scripts.

Each script runs in its own process and defines its flags at import, as absl scripts do.
Tests import several scripts into one process; a flag that two scripts both define (same
name, same kind, same default) is then defined once and shared, and values are set per
test with ``flagsaver``. Two scripts defining one name with a different kind or default
is a programming error caught at import.
"""

from __future__ import annotations

from absl import flags

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
    holder = getattr(flags, f"DEFINE_{kind}")(name, default, help_text, **kwargs)
    _DEFINED[name] = (kind, default)
    return holder


def require(**values) -> None:
    """Raises ValueError naming the first flag (by keyword) whose value is missing."""
    for name, value in values.items():
        if not value:
            raise ValueError(f"--{name} is required.")


# One --backend flag, two meanings (scripts share a process in tests): each script checks
# its own values.
BACKEND_HELP = ("pipelines.batch: where jobs run, local or ray (default local). "
                "pipelines.convert: who quantizes, converter, litert (LiteRT Quantizer "
                "--recipes) or both side by side (default converter).")


def define_gates() -> tuple[flags.FlagHolder, flags.FlagHolder]:
    """The two quality-gate flags every job command takes (shared when scripts share a process)."""
    return (define("float", "max_accuracy_drop", None,
                   "Gate: largest accuracy drop (percentage points) of any mode."),
            define("float", "min_agreement", None,
                   "Gate: smallest top-1 agreement (0..1) with the float model."))


def report_gates(result) -> int:
    """Prints one ``quality gate failed:`` line on stderr when a gate failed; returns the job's
    exit code (0, or 3 for a failed gate)."""
    import sys

    if result.gate_failures:
        print(f"quality gate failed: {'; '.join(result.gate_failures)}", file=sys.stderr)
    return result.exit_code

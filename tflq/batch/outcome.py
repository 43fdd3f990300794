"""What one batch job ended as: its status, one-line error, artifacts and metrics.

Shared by both isolation modes (a fresh process per job, warm workers) and both backends,
so a job reads the same in ``manifest.json`` however it ran. No TensorFlow import.
"""

from __future__ import annotations

import json
import os
import signal

from tflq import runtime
from tflq.fileio import sha256_of

__all__ = ["STATUS_OK", "STATUS_GATE", "STATUS_FAILED", "STATUS_TIMEOUT", "STATUS_CRASHED",
    "signal_name", "status_of_exit", "describe", "runner_error", "relative_outcome"]

STATUS_OK = "ok"
STATUS_GATE = "gate_failed"
STATUS_FAILED = "failed"
STATUS_TIMEOUT = "timeout"
STATUS_CRASHED = "crashed"


def signal_name(code: int) -> str:
    """``SIGSEGV`` for a return code of -11."""
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def status_of_exit(code: int, result: dict, log: str) -> tuple[str, str | None]:
    """(status, error) for a worker's exit code (negative: killed by that signal) and the
    result it reported (``exit_code``, ``error``, ``gate_failures``)."""
    if code < 0:
        hint = " (out of memory?)" if -code == signal.SIGKILL else ""
        return STATUS_CRASHED, f"worker killed by {signal_name(code)}{hint}"
    if code == runtime.EXIT_GATE:
        return STATUS_GATE, "; ".join(result.get("gate_failures", []))
    if code != 0:
        return STATUS_FAILED, result.get("error") or f"worker exited with code {code}; see {log}"
    return STATUS_OK, None


def _artifacts(folder: str) -> list[dict]:
    found = []
    if os.path.isdir(folder):
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            if os.path.isfile(path) and not name.startswith("."):
                found.append({"path": path, "sha256": sha256_of(path),
                              "size_bytes": os.path.getsize(path)})
    return found


def _metrics(report_path: str) -> dict:
    try:
        with open(report_path) as f:
            rep = json.load(f)
    except (OSError, json.JSONDecodeError):
        return {}
    return {
        "float_accuracy": rep.get("float", {}).get("accuracy"),
        "modes": {m["mode"]: {k: m.get(k) for k in ("accuracy", "accuracy_drop_pp",
                                                   "top1_agreement", "size_bytes", "size_ratio")}
                  for m in rep.get("modes", [])},
        "gates_passed": rep.get("gates", {}).get("passed"),
    }


def describe(payload: dict, status: str, error: str | None, seconds: float,
             result: dict | None = None, **extra) -> dict:
    """The manifest record of one finished job (absolute paths; see
    :func:`relative_outcome`). ``extra`` keys (e.g. ``worker``) are added as they are."""
    result = result or {}
    produced = status in (STATUS_OK, STATUS_GATE)
    return {
        "name": payload["name"], "kind": payload.get("kind", "convert"), "status": status,
        "error": error, "cached": False,
        "seconds": seconds, "log": payload["log"], "out": payload["out"],
        "artifacts": _artifacts(payload["out"]) if produced else [],
        "metrics": _metrics(os.path.join(payload["out"], "report.json")) if produced else {},
        "peak_rss_mb": result.get("peak_rss_mb"), **extra,
    }


def runner_error(payload: dict, error: BaseException) -> dict:
    """The outcome of a job whose runner itself failed (never silently dropped)."""
    return describe(payload, STATUS_FAILED, f"batch runner error: {type(error).__name__}: "
                    f"{error}", 0.0)


def relative_outcome(outcome: dict, root: str) -> dict:
    """A copy of ``outcome`` whose paths (``out``, ``log``, artifacts) are relative to the
    batch folder ``root``, so the manifest stays valid when the folder moves."""

    def rel(path: str | None) -> str | None:
        if not path or not os.path.isabs(path):
            return path
        return os.path.relpath(path, os.path.abspath(root))

    return {**outcome, "out": rel(outcome.get("out")), "log": rel(outcome.get("log")),
            "artifacts": [{**a, "path": rel(a["path"])} for a in outcome.get("artifacts", [])]}

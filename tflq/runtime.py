"""Exit codes, the environment TensorFlow starts in, output-folder checks, versions and the
machine: plain values, no TensorFlow."""

from __future__ import annotations

import os
import platform
from importlib import metadata

__all__ = ["EXIT_OK", "EXIT_INTERNAL", "EXIT_BAD_INPUT", "EXIT_GATE", "Interrupted",
           "configure_environment", "check_output_dir", "versions", "machine_description"]

# The contract of every command (README "Exit codes").
EXIT_OK = 0  # done
EXIT_INTERNAL = 1  # tflq's own fault: one "internal error:" line, the traceback in error.log
EXIT_BAD_INPUT = 2  # the user's input (flags, files, data) is wrong: one "error:" line
EXIT_GATE = 3  # a quality gate failed: outputs written, one "quality gate failed:" line



class Interrupted(RuntimeError):
    """A run stopped by something outside it (a lost peer of a multi-worker cluster) that
    left what lets the same command resume.

    Commands exit 1 with one ``interrupted:`` line and keep the ``keep`` paths (and nothing
    else the run created).
    """

    def __init__(self, message: str, keep: tuple[str, ...] = ()):
        super().__init__(message)
        self.keep = tuple(keep)


# Set before TensorFlow is imported (setdefault: a value the user exported wins).
_QUIET_ENVIRONMENT = {
    "TF_CPP_MIN_LOG_LEVEL": "2",  # TensorFlow's C++ INFO and WARNING lines
    "GRPC_VERBOSITY": "ERROR",  # gRPC (distributed TF, Ray) start-up lines
}


def configure_environment(verbose: bool = False) -> None:
    """Sets the environment TensorFlow reads when it is first imported: tf_keras for tfmot
    and, unless ``verbose``, C++ logging at errors only.

    Must run before anything imports TensorFlow; values already in the environment win.
    Some lines (absl's "before absl::InitializeLog()" warning) ignore every setting: the
    commands also capture file descriptors 1 and 2 (:class:`tflq.console.OutputCapture`).
    """
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    if verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0")
        return
    for name, value in _QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)


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
    """Installed versions of tflq and its stack (None where a package is missing), read from
    package metadata without importing anything."""
    def version_of(dist):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    return {
        "tflq": version_of("tflq") or "dev",
        "tensorflow": version_of("tensorflow"),
        "tf_keras": version_of("tf-keras"),
        "keras": version_of("keras"),
        "tensorflow_model_optimization": version_of("tensorflow-model-optimization"),
        "litert": version_of("ai-edge-litert"),
        "numpy": version_of("numpy"),
        "python": platform.python_version(),
    }


def machine_description() -> str:
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU(s), Python {platform.python_version()}"



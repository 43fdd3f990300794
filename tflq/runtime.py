"""Exit codes, output-folder checks, versions and the machine: plain values, no TensorFlow."""

from __future__ import annotations

import os
import platform
from importlib import metadata

__all__ = ["EXIT_OK", "EXIT_BAD_INPUT", "EXIT_GATE", "check_output_dir", "versions",
    "machine_description"]

EXIT_OK = 0


EXIT_BAD_INPUT = 2


EXIT_GATE = 3


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



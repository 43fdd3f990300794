"""Benchmark scripts and their helpers (not packaged); results/ holds their JSON."""

import os
import subprocess

__all__ = ["git_commit"]


def git_commit() -> str:
    """The tflq git commit a benchmark ran on (``+dirty`` with uncommitted changes), or
    ``unknown``."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, check=True,
                              capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               check=True, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")

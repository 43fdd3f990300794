"""What the batch tests share: the calibration/evaluation files of a batch folder and the spec
writer (``[defaults]`` pointing at them, then the test's jobs)."""

from __future__ import annotations

import numpy as np
from conftest import tiny_data

__all__ = ["BASE", "write_batch_data", "write_spec"]

BASE = """
[defaults]
data = "calib.npz"
eval_data = "eval.npz"
num_calibration_samples = 10
latency_runs = 2
"""


def write_batch_data(folder) -> None:
    """``calib.npz`` and ``eval.npz`` (30 tiny 8×8 images each, labelled) in ``folder``."""
    x, y = tiny_data(60, seed=2)
    np.savez(folder / "calib.npz", x=x[:30], y=y[:30])
    np.savez(folder / "eval.npz", x=x[30:], y=y[30:])


def write_spec(folder, body, name="jobs.toml", base=BASE):
    """Writes ``base + body`` to ``folder/name``; returns its path."""
    path = folder / name
    path.write_text(base + body)
    return str(path)

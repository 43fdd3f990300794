"""Job order and progress: longest job first from the seconds earlier runs took.

With one queue and several workers, starting the longest jobs first (the LPT rule) keeps
the workers busy until the end instead of leaving one worker alone with a long job. How
long a job takes comes from the previous ``manifest.json`` and the cache records in the
same output folder; a job never run before counts as the mean of the known ones (spec
order among equals). No TensorFlow import.
"""

from __future__ import annotations

import json
import os
import statistics
import sys

__all__ = ["previous_seconds", "longest_first", "ProgressBar"]


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def previous_seconds(out: str, names: list[str]) -> dict[str, float]:
    """Seconds each named job took when last built in ``out`` (jobs never built are absent).

    Reads the previous ``manifest.json`` (a failed or timed-out job's seconds count too: it
    will likely take as long again) and then the cache records of jobs it lacks.
    """
    found = {}
    for job in _read_json(os.path.join(out, "manifest.json")).get("jobs", []):
        seconds = job.get("build_seconds") if job.get("cached") else job.get("seconds")
        if job.get("name") in names and isinstance(seconds, (int, float)) and seconds > 0:
            found[job["name"]] = float(seconds)
    for name in names:
        if name not in found:
            seconds = _read_json(os.path.join(out, ".tflq-cache", f"{name}.json")).get("seconds")
            if isinstance(seconds, (int, float)) and seconds > 0:
                found[name] = float(seconds)
    return found


def longest_first(names: list[str], seconds: dict[str, float]) -> tuple[list[str], dict[str, float]]:
    """Orders job names longest first.

    Returns:
      The order, and the estimate used for every job (unknown jobs: the mean of the known
      ones, or 1.0 when none is known; ties keep the given order).
    """
    default = statistics.fmean(seconds.values()) if seconds else 1.0
    estimates = {n: seconds.get(n, default) for n in names}
    order = sorted(names, key=lambda n: -estimates[n])  # sorted() is stable
    return order, estimates


class ProgressBar:
    """A tqdm bar on stderr over finished jobs, weighted by their estimated seconds so the
    ETA holds when long jobs run first; ``enabled=False`` makes every call a no-op."""

    def __init__(self, enabled: bool, estimates: dict[str, float]):
        self.bar = None
        self.total, self.done = len(estimates), 0
        self.estimates = estimates
        if enabled and estimates:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=sum(estimates.values()), file=sys.stderr, desc=self._desc(),
                            bar_format="{desc} {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]")

    def _desc(self) -> str:
        return f"batch {self.done}/{self.total} jobs"

    def update(self, name: str) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.set_description_str(self._desc(), refresh=False)
            self.bar.update(self.estimates.get(name, 0.0))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

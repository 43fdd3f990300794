"""Model factories that misbehave, mixed into the batch benchmark's jobs and re-exported by
tests/batch_factories.py for the batch tests (imported by workers)."""

from __future__ import annotations

import os
import signal
import time

__all__ = ["segfault", "hang", "out_of_memory"]


def segfault():
    os.kill(os.getpid(), signal.SIGSEGV)


def hang():
    time.sleep(3600)


def out_of_memory():
    import numpy as np

    return np.ones(64 * 1024**3 // 8)  # 64 GB: refused under the job's memory limit

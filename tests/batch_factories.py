"""Model factories that misbehave inside a batch worker (imported by worker processes)."""

import os
import signal
import time

import numpy as np


def segfault():
    os.kill(os.getpid(), signal.SIGSEGV)


def hang():
    time.sleep(3600)


def out_of_memory():
    return np.ones(64 * 1024**3 // 8)  # 64 GB: refused under the job's memory limit


def tiny():
    from conftest import build_tiny_cnn

    return build_tiny_cnn(seed=1)

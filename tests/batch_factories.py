"""Model factories that misbehave inside a batch worker (imported by worker processes).

The faults the batch benchmark also mixes in (``segfault``, ``hang``, ``out_of_memory``) live in
:mod:`benchmarks.batch_faults` (benchmarks do not import tests) and are re-exported here, so
specs keep naming them ``batch_factories:<name>``.
"""

import os
import signal
import time

import numpy as np

from benchmarks.batch_faults import hang, out_of_memory, segfault

__all__ = ["segfault", "hang", "out_of_memory", "tiny", "LEAK_VARIABLE", "leaky", "unseeded_cnn",
           "keras_choice", "MARKERS_VARIABLE", "SLEEP_VARIABLE", "slow_tiny", "kill_host",
           "kill_host_once"]


def tiny():
    from conftest import build_tiny_cnn

    return build_tiny_cnn(seed=1)


LEAK_VARIABLE = "TFLQ_TEST_LEAKED"


def leaky():
    """Leaves every kind of state a job can leave: an environment variable, a global custom
    object, consumed random numbers, Keras layer-name counters, a module of its own."""
    import random

    from tflq.models import tf, tf_keras

    os.environ[LEAK_VARIABLE] = "1"
    tf_keras.utils.get_custom_objects()["LeakedLayer"] = tf_keras.layers.Dense
    random.random(), np.random.rand(100), tf.random.uniform((100,))
    return _train_cnn()


def unseeded_cnn():
    """A tiny CNN with unnamed layers, initialised and trained from the global seeds (the
    worker's per-job seed); refuses to run on state leaked by an earlier job."""
    from tflq.models import tf_keras

    if LEAK_VARIABLE in os.environ or "LeakedLayer" in tf_keras.utils.get_custom_objects():
        raise ValueError("state leaked from an earlier job")
    return _train_cnn()


def _train_cnn():
    from conftest import tiny_data

    from tflq.models import tf_keras

    model = tf_keras.Sequential([
        tf_keras.Input((8, 8, 1), name="img"),
        tf_keras.layers.Conv2D(4, 3, activation="relu"),
        tf_keras.layers.Flatten(),
        tf_keras.layers.Dense(3),
    ])
    model.compile("adam", tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = tiny_data(64, 3)
    model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    return model


def keras_choice():
    """Fails with a message telling which Keras ``tf.keras`` is in this worker."""
    from tflq.models import legacy_keras_active

    raise ValueError(f"tf.keras is tf_keras: {legacy_keras_active()}")


# ---- Ray: jobs that report where they run, and jobs that kill the actor running them ----

MARKERS_VARIABLE = "TFLQ_TEST_MARKERS"  # folder where each started job leaves a marker
SLEEP_VARIABLE = "TFLQ_TEST_SLEEP"  # seconds slow_tiny waits before building its model


def _leave_marker(kind: str) -> str:
    """Writes ``<markers>/<kind>-<pid>-<ns>.json`` with this worker's pid and its parent's
    (one file per job: a warm worker runs several)."""
    import json

    folder = os.environ[MARKERS_VARIABLE]
    path = os.path.join(folder, f"{kind}-{os.getpid()}-{time.time_ns()}.json")
    with open(path + ".tmp", "w") as f:
        json.dump({"pid": os.getpid(), "ppid": os.getppid(), "time": time.time()}, f)
    os.replace(path + ".tmp", path)
    return path


def _kill_ray_host() -> None:
    """SIGKILLs this worker's parent, which must be a Ray actor (``ray::WorkerHost``)."""
    with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
        parent = f.read().split(b"\0")[0].decode()
    if not parent.startswith("ray::"):
        raise ValueError(f"kill_host factories run only under a Ray actor, not {parent!r}")
    os.kill(os.getppid(), signal.SIGKILL)
    time.sleep(3600)  # the worker's parent watch ends this process


def slow_tiny():
    """The tiny CNN, after leaving a marker and waiting ``TFLQ_TEST_SLEEP`` seconds."""
    _leave_marker("slow")
    time.sleep(float(os.environ.get(SLEEP_VARIABLE, "3")))
    return tiny()


def kill_host():
    """Kills the Ray actor running it, every time."""
    _leave_marker("kill")
    _kill_ray_host()


def kill_host_once():
    """Kills the Ray actor running it the first time; builds the tiny CNN the second time."""
    first = not any(n.startswith("once-") for n in os.listdir(os.environ[MARKERS_VARIABLE]))
    _leave_marker("once")
    if first:
        _kill_ray_host()
    return tiny()

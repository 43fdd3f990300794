"""Warm workers (tflq.batch.pool, tflq.batch.worker --serve) and job order
(tflq.batch.schedule): no state leaks between jobs, recycling, memory watch, the
TF_USE_LEGACY_KERAS choice, longest-first order, progress bar, a movable output folder."""

import json
import os
import re
import shutil

import numpy as np
import pytest
from conftest import REPO, tiny_data

from tflq import batch
from tflq.batch import pool, schedule
from tflq.jobs.convert import ConvertJob

TESTS = os.path.join(REPO, "tests")
# Report entries that measure time and so differ from run to run.
TIMING_KEY = re.compile(r"latency|seconds|_utc|created|time", re.IGNORECASE)
# The parent's RSS reading and a second one moments later: the sleeping job allocates
# nothing, but Python and TensorFlow may free or touch a few pages in between.
RSS_REREAD_RTOL = 0.5


@pytest.fixture()
def data(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")]))
    x, y = tiny_data(60, seed=2)
    np.savez(tmp_path / "calib.npz", x=x[:30], y=y[:30])
    np.savez(tmp_path / "eval.npz", x=x[30:], y=y[30:])
    return tmp_path


def payload(folder, name, model, modes=("int8",), timeout=120.0, env=None, **extra):
    job = ConvertJob(model=model, data=str(folder / "calib.npz"), eval_data=str(folder / "eval.npz"),
                     out=str(folder / "out" / name), modes=tuple(modes), num_calibration_samples=10,
                     latency_runs=2, progress=False)
    return {"name": name, "out": job.out, "log": str(folder / "out" / "logs" / f"{name}.log"),
            "timeout": timeout, "max_memory_mb": None, "threads": 1,
            "env": env or {"TF_USE_LEGACY_KERAS": "1"}, "job": job.to_dict(), **extra}


def numbers(value):
    """A report without its timings (and without the one run-dependent folder name)."""
    if isinstance(value, dict):
        return {k: numbers(v) for k, v in value.items() if not TIMING_KEY.search(k)}
    if isinstance(value, list):
        return [numbers(v) for v in value]
    return value


def read_outputs(folder) -> tuple[dict, dict]:
    tflite = {name: (folder / name).read_bytes() for name in os.listdir(folder)
              if name.endswith(".tflite")}
    return tflite, numbers(json.loads((folder / "report.json").read_text()))


def test_a_job_after_ten_others_in_one_worker_equals_the_job_alone(data):
    target = payload(data, "target", "batch_factories:unseeded_cnn", modes=("float32", "int8"))
    alone = pool.WarmSlot(pool.WorkerPolicy())
    try:
        first = alone.run(target)
    finally:
        alone.close()
    assert first["status"] == "ok", first["error"]
    assert first["worker"]["job_number"] == 1
    tflite_alone, report_alone = read_outputs(data / "out" / "target")
    assert set(tflite_alone) == {"unseeded_cnn_int8.tflite", "unseeded_cnn_float32.tflite"}
    shutil.rmtree(data / "out" / "target")

    busy = pool.WarmSlot(pool.WorkerPolicy())
    try:
        for i in range(10):
            other = busy.run(payload(data, f"leak{i}", "batch_factories:leaky", modes=("float16",)))
            assert other["status"] == "ok", other["error"]
        after = busy.run(target)
    finally:
        busy.close()
    assert after["status"] == "ok", after["error"]  # the factory refuses leaked state
    assert after["worker"]["job_number"] == 11 and after["worker"]["pid"] == other["worker"]["pid"]
    tflite_after, report_after = read_outputs(data / "out" / "target")
    assert tflite_after == tflite_alone  # byte-identical models
    assert report_after == report_alone  # identical numbers, timings aside
    assert report_after["modes"][0]["accuracy"] is not None

    # A fresh process per job gives the very same bytes.
    shutil.rmtree(data / "out" / "target")
    fresh = batch.execute_job(target)
    assert fresh["status"] == "ok" and "worker" not in fresh
    assert read_outputs(data / "out" / "target") == (tflite_alone, report_alone)


def test_worker_replaced_after_max_jobs_and_past_the_rss_bound(data):
    slot = pool.WarmSlot(pool.WorkerPolicy(max_jobs_per_worker=2))
    try:
        runs = [slot.run(payload(data, n, "batch_factories:tiny", modes=("float16",)))
                for n in "abc"]
    finally:
        slot.close()
    assert [r["status"] for r in runs] == ["ok"] * 3
    assert runs[0]["worker"]["pid"] == runs[1]["worker"]["pid"] != runs[2]["worker"]["pid"]
    assert runs[1]["worker"]["recycled"] == "2 jobs done (max_jobs_per_worker)"
    assert "recycled" not in runs[0]["worker"] and runs[2]["worker"]["job_number"] == 1
    assert runs[0]["worker"]["startup_seconds"] > 0 and runs[1]["worker"]["startup_seconds"] == 0

    slot = pool.WarmSlot(pool.WorkerPolicy(max_worker_rss_mb=1))
    try:
        runs = [slot.run(payload(data, n, "batch_factories:tiny", modes=("float16",)))
                for n in "de"]
    finally:
        slot.close()
    assert runs[0]["worker"]["pid"] != runs[1]["worker"]["pid"]
    rss = runs[0]["worker"]["rss_mb"]
    assert rss > 50 and runs[0]["worker"]["recycled"] == (
        f"resident memory {rss:.0f} MB > max_worker_rss_mb=1")


def test_parent_kills_a_worker_whose_resident_memory_passes_the_limit(data):
    # Where RLIMIT_AS does not hold (e.g. macOS), the parent's RSS watch is the memory limit.
    worker = pool.WarmWorker(1, {"TF_USE_LEGACY_KERAS": "1"}, str(data / "w.log"))
    try:
        kind, ready = worker.receive(pool.STARTUP_TIMEOUT)
        assert kind == "message" and ready["ready"] and ready["rss_mb"] > 50
        assert worker.send(payload(data, "hang", "batch_factories:hang"))
        kind, rss = worker.receive(60, max_rss_mb=ready["rss_mb"] / 2)
        assert kind == "memory" and rss > ready["rss_mb"] / 2
        assert pool.rss_of(worker.pid) == pytest.approx(rss, rel=RSS_REREAD_RTOL)
    finally:
        worker.kill()
    assert worker.process.returncode == -9 and pool.rss_of(worker.pid) is None


def test_worker_started_with_the_jobs_tf_keras_choice(data):
    slot = pool.WarmSlot(pool.WorkerPolicy())
    try:
        legacy = slot.run(payload(data, "a", "batch_factories:keras_choice"))
        keras3 = slot.run(payload(data, "b", "batch_factories:keras_choice",
                                  env={"TF_USE_LEGACY_KERAS": "0"}))
    finally:
        slot.close()
    assert legacy["status"] == keras3["status"] == "failed"  # the factory reports by failing
    assert legacy["error"].endswith("tf.keras is tf_keras: True")
    assert keras3["error"].endswith("tf.keras is tf_keras: False")
    assert legacy["worker"]["pid"] != keras3["worker"]["pid"]


def test_worker_that_cannot_start_fails_the_job_with_its_log(data, monkeypatch):
    broken = data / "python"
    broken.write_text("#!/bin/sh\necho 'cannot import tensorflow' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setattr(pool.sys, "executable", str(broken))
    slot = pool.WarmSlot(pool.WorkerPolicy())
    result = slot.run(payload(data, "a", "batch_factories:tiny"))
    assert result["status"] == "failed" and slot.worker is None
    match = re.fullmatch(r"warm worker failed to start \(exit code 1\); see (.+\.log)", result["error"])
    assert match and open(match.group(1)).read() == "cannot import tensorflow\n"


@pytest.mark.parametrize("values, message", [
    ({"isolation": "thread"}, "Unknown isolation 'thread'. Available: ['warm', 'process']"),
    ({"max_jobs_per_worker": 0}, "max_jobs_per_worker must be a positive integer. Received: "
                                 "max_jobs_per_worker=0"),
    ({"max_jobs_per_worker": True}, "max_jobs_per_worker must be a positive integer"),
    ({"max_worker_rss_mb": -1}, "max_worker_rss_mb must be a positive integer (MB). Received: "
                                "max_worker_rss_mb=-1"),
])
def test_worker_policy_checks(values, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        pool.WorkerPolicy(**values)
    assert pool.WorkerPolicy().to_dict() == {"isolation": "warm", "max_jobs_per_worker": 50,
                                             "max_worker_rss_mb": None}


def test_longest_first_and_estimates():
    order, estimates = schedule.longest_first(["a", "b", "c", "d"], {"b": 9.0, "d": 3.0})
    assert order == ["b", "a", "c", "d"]  # unknown a, c: the mean 6.0; ties keep spec order
    assert estimates == {"a": 6.0, "b": 9.0, "c": 6.0, "d": 3.0}
    assert schedule.longest_first(["x", "y"], {}) == (["x", "y"], {"x": 1.0, "y": 1.0})


def test_longest_first_balances_two_workers():
    # Four 1 s jobs and a 4 s one on two workers: spec order ends at 6 s, longest first at 4 s.
    times = {"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0, "e": 4.0}

    def finish(order):
        busy = [0.0, 0.0]
        for name in order:
            busy[busy.index(min(busy))] += times[name]
        return sorted(busy)

    order, _ = schedule.longest_first(list(times), times)
    assert order == ["e", "a", "b", "c", "d"]
    assert finish(order) == [4.0, 4.0] and finish(list(times)) == [2.0, 6.0]


def test_previous_seconds_reads_manifest_then_cache(tmp_path):
    (tmp_path / ".tflq-cache").mkdir()
    (tmp_path / "manifest.json").write_text(json.dumps({"jobs": [
        {"name": "a", "seconds": 4.0, "cached": False},
        {"name": "b", "seconds": 0.0, "cached": True, "build_seconds": 7.5},
        {"name": "gone", "seconds": 3.0}]}))
    (tmp_path / ".tflq-cache" / "c.json").write_text(json.dumps({"seconds": 2.0}))
    (tmp_path / ".tflq-cache" / "d.json").write_text("{broken")
    assert schedule.previous_seconds(str(tmp_path), ["a", "b", "c", "d"]) == {
        "a": 4.0, "b": 7.5, "c": 2.0}


SPEC = """
[defaults]
data = "calib.npz"
eval_data = "eval.npz"
num_calibration_samples = 10
latency_runs = 2
modes = ["float16"]

[workers]
max_jobs_per_worker = 5

[[jobs]]
name = "short"
model = "batch_factories:tiny"

[[jobs]]
name = "long"
model = "batch_factories:tiny"
"""


def test_longest_job_starts_first_with_progress_and_the_folder_moves(data, capsys):
    (data / "jobs.toml").write_text(SPEC)
    out = data / "out"
    spec = batch.load_spec(str(data / "jobs.toml"), str(out))
    assert spec.policy == pool.WorkerPolicy(max_jobs_per_worker=5)
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"jobs": [
        {"name": "short", "seconds": 1.0}, {"name": "long", "seconds": 50.0}]}))
    result = batch.run_batch(spec, str(out), workers=1, progress=True)
    err = capsys.readouterr().err
    jobs = {o["name"]: o for o in result.outcomes}
    assert jobs["long"]["worker"]["job_number"] == 1 and jobs["short"]["worker"]["job_number"] == 2
    assert "batch 2/2 jobs 100%" in err  # the bar, weighted by the estimates
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["spec"] == "../jobs.toml" and manifest["worker_policy"]["max_jobs_per_worker"] == 5

    moved = data / "elsewhere" / "batch"
    shutil.move(str(out), str(moved))
    spec = batch.load_spec(str(data / "jobs.toml"), str(moved))
    again = batch.run_batch(spec, str(moved), workers=1)
    assert [o["cached"] for o in again.outcomes] == [True, True]  # paths resolve in the new place
    for job in again.outcomes:
        for artifact in job["artifacts"]:
            assert os.path.isfile(moved / artifact["path"])
    assert capsys.readouterr().err == ""  # progress=False: no bar

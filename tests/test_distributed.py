"""Distributed paths: batch workers that die with their parent, Ray attempts (an actor
killed, a node of a real two-node cluster killed, the rerun resuming), multi-worker QAT
(non-chief workers write nothing, a lost worker interrupts with the checkpoint kept, two real
worker processes from a TF_CONFIG resume after one is killed), and the guard keeping what an
interruption names."""

import contextlib
import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from absl.testing import flagsaver
from batch_factories import MARKERS_VARIABLE
from batch_support import BASE, write_batch_data, write_spec
from conftest import REPO, tiny_data

from benchmarks import benchmark_distributed as bench
from pipelines import batch as batch_cli
from pipelines import common
from tflq import runtime
from tflq.batch import ray_backend
from tflq.fileio import sha256_of
from tflq.jobs import qat as qat_job
from tflq.models import tf, tf_keras

TESTS = os.path.join(REPO, "tests")
WATCH_SECONDS = 15.0  # a worker notices its parent's death within PARENT_POLL_SECONDS (0.5 s)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_gone(pid: int, seconds: float = WATCH_SECONDS) -> bool:
    deadline = time.monotonic() + seconds
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not alive(pid)


# ---- batch workers die with their parent ----


@contextlib.contextmanager
def orphanable_worker(folder, argv, payload=None):
    """A parent process that starts ``tflq.batch.worker`` in a session of its own (as the pool
    and the runner do), sends it ``payload`` (one JSON line), prints the worker's pid and
    sleeps; yields (parent, worker pid) and kills both on exit."""
    line = json.dumps(payload) + "\n" if payload else ""
    parent = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys, time\n"
         f"p = subprocess.Popen([sys.executable, '-m', 'tflq.batch.worker', *{argv!r}], "
         "stdin=subprocess.PIPE, start_new_session=True)\n"
         f"p.stdin.write({line!r}.encode()); p.stdin.flush()\n"
         "print(p.pid, flush=True)\ntime.sleep(600)\n"],
        cwd=folder, env={**os.environ, "PYTHONPATH": os.pathsep.join([REPO, TESTS])},
        stdout=subprocess.PIPE, text=True)
    worker = int(parent.stdout.readline())
    try:
        yield parent, worker
    finally:
        parent.kill()
        parent.wait()
        if alive(worker):
            os.kill(worker, signal.SIGKILL)


def assert_worker_dies_with(parent, worker: int) -> None:
    """Kills the worker's parent (as a Ray actor dies: the worker reads no stdin) and checks
    the worker is gone within :data:`WATCH_SECONDS`."""
    parent.kill()
    parent.wait()
    assert wait_gone(worker), f"worker {worker} outlived its parent"


def test_warm_worker_in_a_job_kills_itself_when_its_parent_dies(tmp_path):
    from tflq.jobs.convert import ConvertJob

    x, y = tiny_data(20, seed=2)
    np.savez(tmp_path / "calib.npz", x=x, y=y)
    job = ConvertJob(model="batch_factories:hang", data=str(tmp_path / "calib.npz"),
                     out=str(tmp_path / "out"), modes=("int8",), progress=False)
    log = tmp_path / "hang.log"
    payload = {"name": "hang", "out": job.out, "log": str(log), "timeout": 600,
               "max_memory_mb": None, "threads": 1, "job": job.to_dict()}
    with orphanable_worker(tmp_path, ["--serve"], payload) as (parent, worker):
        deadline = time.monotonic() + 300  # the worker imports TensorFlow, then starts the job
        while not (log.exists() and "job 'hang'" in log.read_text()):
            assert time.monotonic() < deadline and alive(worker), "the job never started"
            time.sleep(0.2)
        assert_worker_dies_with(parent, worker)  # the worker is busy in its job


def test_job_worker_kills_itself_when_its_parent_dies(tmp_path):
    os.mkfifo(tmp_path / "job.json")  # opening it blocks: the worker waits for its job
    with orphanable_worker(tmp_path, ["job.json"]) as (parent, worker):
        time.sleep(1.0)
        assert alive(worker)
        assert_worker_dies_with(parent, worker)


# ---- Ray attempts (no cluster needed) ----


def test_ray_attempts_rerun_a_lost_job_once_then_report_it_crashed(tmp_path):
    import ray

    payload = {"name": "j", "out": str(tmp_path / "j"), "log": str(tmp_path / "j.log")}
    attempts = ray_backend._Attempts(ray)
    attempts.start(payload)
    assert attempts.fail(payload, ray.exceptions.ActorDiedError()) is None  # run it again
    attempts.start(payload)
    crashed = attempts.fail(payload, ray.exceptions.WorkerCrashedError())
    assert crashed["status"] == "crashed" and crashed["attempts"] == ray_backend.RAY_ATTEMPTS == 2
    assert crashed["error"].startswith("Ray task lost: WorkerCrashedError: The worker died")
    assert crashed["error"].endswith("(lost 2 times)")
    assert [a.split(":")[0] for a in crashed["lost_attempts"]] == ["Ray actor lost", "Ray task lost"]
    # Our own code raising inside the actor is no lost attempt: failed at once, not rerun.
    other = {**payload, "name": "k"}
    attempts.start(other)
    error = ray.exceptions.RayTaskError("run", "Traceback ...", KeyError("x"))
    failed = attempts.fail(other, error)
    assert failed["status"] == "failed" and failed["attempts"] == 1 and failed["lost_attempts"] == []
    assert failed["error"].startswith("batch runner error: RayTaskError")
    done = attempts.done({"name": "j", "status": "ok"})
    assert done["attempts"] == 2 and len(done["lost_attempts"]) == 2


@pytest.fixture()
def ray_workdir(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([REPO, TESTS, os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv(MARKERS_VARIABLE, str(tmp_path / "markers"))
    (tmp_path / "markers").mkdir()
    tiny_model.save(tmp_path / "tiny.keras")
    write_batch_data(tmp_path)
    return tmp_path


RAY_DEFAULTS = BASE + 'modes = ["int8"]\n'
RAY_JOBS = """
[[jobs]]
name = "once"
model = "batch_factories:kill_host_once"

[[jobs]]
name = "always"
model = "batch_factories:kill_host"

[[jobs]]
model = "tiny.keras"
"""


@pytest.mark.slow
def test_ray_actor_killed_mid_job_runs_again_on_a_new_actor(capsys, ray_workdir):
    spec = write_spec(ray_workdir, RAY_JOBS, base=RAY_DEFAULTS)
    out = ray_workdir / "out"
    with flagsaver.flagsaver(spec=spec, out=str(out), backend="ray",
                             workers=2, quiet=True):
        code = batch_cli.main(["batch"])
    err = capsys.readouterr().err
    assert code == 1 and "always: crashed: Ray actor lost" in err
    jobs = {j["name"]: j for j in json.loads((out / "manifest.json").read_text())["jobs"]}
    assert set(jobs) == {"once", "always", "tiny"}  # every job has its entry
    once = jobs["once"]
    assert once["status"] == "ok" and once["attempts"] == 2, once
    assert once["lost_attempts"][0].startswith("Ray actor lost: Actor")
    assert os.path.isfile(out / "once" / "kill_host_once_int8.tflite")
    first, second = sorted((json.loads(open(p).read()) for p in
                            glob.glob(str(ray_workdir / "markers" / "once-*.json"))),
                           key=lambda m: m["time"])
    assert first["ppid"] != second["ppid"]  # a new actor ran the second attempt
    assert once["worker"]["pid"] == second["pid"] != first["pid"]
    assert wait_gone(first["pid"])  # the orphaned warm worker did not finish the job
    assert jobs["always"]["status"] == "crashed" and jobs["always"]["attempts"] == 2
    assert "(lost 2 times)" in jobs["always"]["error"]
    assert jobs["tiny"]["status"] == "ok" and jobs["tiny"]["attempts"] == 1
    assert jobs["tiny"]["lost_attempts"] == [] and jobs["tiny"]["ray_node_id"]


@pytest.mark.slow
def test_ray_cluster_node_killed_mid_batch_loses_nothing_and_the_rerun_resumes(tmp_path):
    figures = bench.run_ray_scenario(str(tmp_path), jobs=3, job_sleep=4.0)
    names = ["job0", "job1", "job2", "kills_its_actor"]
    kill = figures["node_kill"]
    assert kill["kill_seconds"] > 0 and kill["processes_killed"] >= 3 and kill["workers_on_node"]
    assert kill["workers_alive_after_10s"] == []
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["backend"] == "ray" and [j["name"] for j in manifest["jobs"]] == names
    first = figures["first_run"]
    assert first["exit_code"] == 1 and first["ran"] == names
    # The jobs running on the killed node ran again (on the head) and finished.
    lost_on_node = [n for n in names[:3] if first["attempts"][n] == 2]
    assert len(lost_on_node) == len(kill["workers_on_node"]), first
    for name in lost_on_node:
        assert first["lost_attempts"][name][0].startswith("Ray actor lost: Actor")
    assert {first["statuses"][n] for n in names[:3]} == {"ok"}
    assert first["statuses"]["kills_its_actor"] == "crashed"
    # The rerun: finished jobs from the cache (their files untouched), only the rest ran.
    rerun = figures["rerun"]
    assert rerun["exit_code"] == 1 and rerun["ran"] == ["kills_its_actor"]
    assert rerun["cached"] == names[:3] and rerun["finished_per_node"] == {"lost (no node)": 1}
    for job in manifest["jobs"][:3]:
        assert job["cached"] and job["status"] == "ok"
        for artifact in job["artifacts"]:
            assert sha256_of(str(tmp_path / "out" / artifact["path"])) == artifact["sha256"]
        assert any(a["path"].endswith("_int8.tflite") for a in job["artifacts"])


# ---- multi-worker QAT ----


class _FakeWorkerStrategy:
    """The default strategy as seen by a non-chief worker (should_checkpoint False)."""

    def __init__(self):
        self.inner = tf.distribute.get_strategy()

    def scope(self):
        return self.inner.scope()

    class extended:  # noqa: N801 - mirrors tf.distribute.Strategy.extended
        should_checkpoint = False


def qat(files, **extra):
    settings = {"epochs": 1, "batch_size": 16, "verbose": 0, **extra}
    return qat_job.QATJob(model=str(files / "tiny.keras"), train_data=str(files / "train.npz"),
                          eval_data=str(files / "eval.npz"), out=str(files / "out"), **settings)


def test_non_chief_qat_worker_trains_and_writes_nothing(qat_files, monkeypatch):
    monkeypatch.setattr(qat_job, "_distribution", lambda name: _FakeWorkerStrategy())
    result = qat_job.run_qat_job(qat(qat_files))
    # The chief writes the outputs; a non-chief only shares the checkpoint folder (empty
    # once training ended: Keras deletes the epoch checkpoints, the chief the folder).
    written = [f for _, _, files in os.walk(qat_files / "out") for f in files]
    assert written == [] and os.listdir(qat_files / "out") == [".qat_backup"]
    assert result.report["qat"]["epochs_trained"] == [1]
    assert "tiny_qat_int8.tflite" in result.contents


# What MultiWorkerMirroredStrategy raised on worker 0 here when worker 1 was killed (TF 2.21).
LOST_PEER_ERROR = (
    "Graph execution error:\n\n{{function_node __wrapped__CollectiveReduceV2_Nordering_token_1_"
    "device_/job:worker/replica:0/task:0/device:CPU:0}} Collective ops is aborted by: Error "
    "reported from /job:worker/task:1: The following tasks are unhealthy (stopped sending "
    "heartbeats):\n/job:worker/replica:0/task:1\nThe tasks have crashed. Check the task logs for "
    "an earlier error, or scheduler events (e.g. preemption, eviction) to debug further.")


def test_a_lost_worker_interrupts_qat_keeping_the_checkpoint_for_the_rerun(qat_files, monkeypatch):
    monkeypatch.setattr(qat_job, "_distribution", lambda name: tf.distribute.get_strategy())

    class LosePeer(tf_keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:  # what MultiWorkerMirroredStrategy raises when a peer is gone
                raise tf.errors.UnavailableError(None, None, LOST_PEER_ERROR)

    job = qat(qat_files, epochs=3, distribution="multi_worker")
    with pytest.raises(runtime.Interrupted) as caught:
        qat_job.run_qat_job(job, callbacks=[LosePeer()])
    backup = str(qat_files / "out" / ".qat_backup")
    assert caught.value.keep == (backup,)
    assert str(caught.value) == (
        "QAT training lost a worker of the multi_worker cluster (UnavailableError: The following "
        "tasks are unhealthy (stopped sending heartbeats): /job:worker/replica:0/task:1); the "
        "checkpoint of epoch 2 of 3 is in "
        f"{backup}: run the same command on every worker again to resume.")
    assert os.listdir(backup) and not os.path.exists(qat_files / "out" / "report.json")
    report = qat_job.run_qat_job(job).report  # resumes
    assert report["qat"]["epochs_trained"] == [3]
    assert any(n.startswith("resumed from the checkpoint of epoch 2") for n in report["modes"][0]["notes"])
    assert not os.path.exists(backup)
    # Without multi_worker the same error is no interruption: it passes through unchanged.
    with pytest.raises(tf.errors.UnavailableError):
        qat_job.run_qat_job(qat(qat_files, epochs=3), callbacks=[LosePeer()])


@pytest.mark.parametrize("existed", [False, True])
def test_guard_keeps_only_what_an_interruption_names(tmp_path, capsys, existed):
    out = tmp_path / "out"
    if existed:
        out.mkdir()
        (out / "old.txt").write_text("kept: it was there before")

    def body():
        (out / ".qat_backup" / "chief").mkdir(parents=True)
        (out / ".qat_backup" / "chief" / "ckpt-2.index").write_text("checkpoint")
        (out / "partial.tflite").write_text("half")
        (out / "sub").mkdir()
        raise runtime.Interrupted("lost a worker; run again to resume",
                                  keep=(str(out / ".qat_backup"),))

    with flagsaver.flagsaver(verbose=False):
        code = common.guard(body, str(out))
    err = capsys.readouterr().err
    assert code == 1 and err == "interrupted: lost a worker; run again to resume\n"
    left = sorted(os.path.relpath(os.path.join(r, f), out) for r, ds, fs in os.walk(out) for f in fs + ds)
    expected = [".qat_backup", os.path.join(".qat_backup", "chief"),
                os.path.join(".qat_backup", "chief", "ckpt-2.index")]
    assert left == sorted(expected + (["old.txt"] if existed else []))


@pytest.mark.slow
def test_multi_worker_qat_resumes_after_a_worker_is_killed(tmp_path):
    figures = bench.run_qat_scenario(str(tmp_path), epochs=6, kill_after_epoch=2, train=1000)
    first = figures["first_run"]
    saved = first["checkpointed_epoch"]
    assert first["exit_codes"] == [1, -signal.SIGKILL] and 2 <= saved < 6
    assert first["survivor_message"].startswith("interrupted: QAT training lost a worker of the "
                                                "multi_worker cluster")
    assert f"the checkpoint of epoch {saved} of 6 is in" in first["survivor_message"]
    assert ".qat_backup" in first["left_in_out"] and "report.json" not in first["left_in_out"]
    rerun = figures["rerun"]
    assert rerun["exit_codes"] == [0, 0]
    assert rerun["epochs_trained"] == list(range(saved + 1, 7))  # resumed, not restarted
    assert rerun["report_notes"][0].startswith(f"resumed from the checkpoint of epoch {saved}")
    assert ".qat_backup" not in rerun["left_in_out"] and "tiny_qat_int8.tflite" in rerun["left_in_out"]
    parity = figures["parity"]  # computed by the test's interpreter run, not the report
    assert parity["within_1_step_vs_qat"] >= 0.99 and parity["top1_agreement_vs_qat"] >= 0.99
    assert parity["top1_agreement_vs_float"] >= bench.QAT_FLOAT_AGREEMENT_MIN

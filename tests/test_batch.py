"""Batch jobs: spec checks, isolated workers (crash, hang, out of memory), cache, resume,
manifest, both backends, the CLI."""

import hashlib
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
from absl.testing import flagsaver
from batch_support import write_batch_data, write_spec
from conftest import REPO, snapshot, tiny_data

from pipelines import batch as cli
from tflq import batch

TESTS = os.path.join(REPO, "tests")


@pytest.fixture()
def workdir(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")]))
    tiny_model.save(tmp_path / "tiny.keras")
    tiny_model.save(tmp_path / "other.keras")
    write_batch_data(tmp_path)
    return tmp_path


TWO_JOBS = """
[[jobs]]
model = "tiny.keras"
modes = ["int8"]

[[jobs]]
name = "other"
model = "other.keras"
modes = ["float16", "dynamic"]
"""


def test_load_spec_merges_defaults_and_resolves_paths(workdir):
    spec = batch.load_spec(write_spec(workdir, TWO_JOBS), str(workdir / "out"))
    assert [j.name for j in spec.jobs] == ["tiny", "other"]
    tiny, other = spec.jobs
    assert tiny.job.model == str(workdir / "tiny.keras")
    assert tiny.job.data == str(workdir / "calib.npz")
    assert tiny.job.modes == ("int8",) and other.job.modes == ("float16", "dynamic")
    assert tiny.job.num_calibration_samples == 10 and tiny.job.progress is False
    assert tiny.out == str(workdir / "out" / "tiny")
    assert tiny.timeout == batch.DEFAULT_TIMEOUT and tiny.line == 8


def test_spec_output_tasks_and_gate_rules_reach_the_job(workdir):
    body = ('\n[[jobs]]\nmodel = "tiny.keras"\noutput_tasks = "logits=multilabel"\n'
            'gate = ["logits:f1>=0.9", "sqnr_db>=20"]\n\n[[jobs]]\nname = "t"\n'
            'model = "tiny.keras"\noutput_tasks = {logits = "regression"}\ngate = "sqnr_db>=1"\n')
    first, second = batch.load_spec(write_spec(workdir, body), str(workdir / "out")).jobs
    assert first.job.output_tasks == (("logits", "multilabel"),)
    assert first.job.gates.gate == ("logits:f1>=0.9", "sqnr_db>=20")
    assert second.job.output_tasks == (("logits", "regression"),)
    assert second.job.gates.gate == ("sqnr_db>=1",)
    assert type(first.job).from_dict(first.job.to_dict()) == first.job  # worker payload


def test_yaml_spec_is_equivalent(workdir):
    path = workdir / "jobs.yaml"
    path.write_text("defaults:\n  data: calib.npz\n  eval_data: eval.npz\n"
                    "jobs:\n  - model: tiny.keras\n    modes: [int8]\n    max_accuracy_drop: 5\n")
    spec = batch.load_spec(str(path), str(workdir / "out"))
    assert spec.jobs[0].name == "tiny" and spec.jobs[0].job.gates.max_accuracy_drop == 5
    assert spec.jobs[0].line == 5


BAD_SPECS = {
    "malformed toml": ('\n[[jobs]]\nmodel = "tiny.keras\n', r"jobs.toml: line 9: malformed TOML"),
    "unknown top key": ('\n[extra]\nx = 1\n', r"unknown key 'extra' in the spec"),
    "unknown job key": ('\n[[jobs]]\nmodel = "tiny.keras"\nmodez = ["int8"]\n',
                        r"line 10: unknown key 'modez' in jobs\[0\]"),
    "wrong type": ('\n[[jobs]]\nmodel = "tiny.keras"\nnum_threads = "two"\n',
                   r"line 10: jobs\[0\].num_threads must be int. Received: 'two'"),
    "no jobs": ("", "no jobs"),
    "duplicate names": ('\n[[jobs]]\nmodel = "tiny.keras"\n\n[[jobs]]\nmodel = "tiny.keras"\n',
                        r"line 11: jobs\[1\]: two jobs are named 'tiny'"),
    "same output": ('\n[[jobs]]\nmodel = "tiny.keras"\nout = "x"\n\n[[jobs]]\n'
                    'model = "other.keras"\nout = "x"\n', "write to the same output"),
    "missing model": ('\n[[jobs]]\nmodel = "nope.keras"\n',
                      r"line 8: jobs\[0\]: model not found: '.*nope.keras'"),
    "missing data": ('\n[[jobs]]\nmodel = "tiny.keras"\ndata = "nope.npz"\n', "data not found"),
    "unknown mode": ('\n[[jobs]]\nmodel = "tiny.keras"\nmodes = ["int3"]\n',
                     r"jobs\[0\] \(tiny\): Unknown mode 'int3'"),
    "escaping output": ('\n[[jobs]]\nmodel = "tiny.keras"\nout = "../elsewhere"\n',
                        "leaves the batch folder"),
    "bad name": ('\n[[jobs]]\nname = "a b"\nmodel = "tiny.keras"\n', "may hold only letters"),
    "bad gate": ('\n[[jobs]]\nmodel = "tiny.keras"\nmin_agreement = 2\n', "min_agreement must"),
    "malformed gate rule": ('\n[[jobs]]\nmodel = "tiny.keras"\ngate = ["logits:f1=>0.9"]\n',
                            r"jobs\[0\] \(tiny\): A gate must read"),
    "unknown output task": ('\n[[jobs]]\nmodel = "tiny.keras"\noutput_tasks = "logits=ranking"\n',
                            r"jobs\[0\] \(tiny\): Unknown task 'ranking'"),
    "unknown workers key": ('\n[workers]\nisolation = "warm"\nmax_jobs = 3\n[[jobs]]\nmodel = "tiny.keras"\n',
                            r"line 10: unknown key 'max_jobs' in \[workers\]"),
    "workers wrong type": ('\n[workers]\nmax_worker_rss_mb = "1G"\n[[jobs]]\nmodel = "tiny.keras"\n',
                           r"line 9: workers.max_worker_rss_mb must be int. Received: '1G'"),
    "unknown isolation": ('\n[workers]\nisolation = "thread"\n[[jobs]]\nmodel = "tiny.keras"\n',
                          r"line 9: \[workers\]: Unknown isolation 'thread'. Available: \['warm', 'process'\]"),
    # Found by the spec fuzzer (each crashed with an AttributeError/TypeError, exit 1, or was
    # accepted):
    "layout not a string": ('\n[output]\nlayout = false\n[[jobs]]\nmodel = "tiny.keras"\n',
                            r"line 9: output.layout must be str. Received: False"),
    "layout with an attribute": ('\n[output]\nlayout = "{name.x}"\n[[jobs]]\nmodel = "tiny.keras"\n',
                                 r"\[output\] layout '\{name.x\}' may use only \{name\}"),
    "layout with a bad conversion": ('\n[output]\nlayout = "{name!z}"\n[[jobs]]\nmodel = "tiny.keras"\n',
                                     r"\[output\] layout '\{name!z\}' may use only \{name\}"),
    "out not a string": ('\n[[jobs]]\nmodel = "tiny.keras"\nout = 5\n',
                         r"line 10: jobs\[0\].out must be str. Received: 5"),
    "nan timeout": ('\n[[jobs]]\nmodel = "tiny.keras"\ntimeout = nan\n',
                    r"timeout and max_memory_mb must be positive \(and finite\). Received: timeout=nan"),
    "inf timeout": ('\n[[jobs]]\nmodel = "tiny.keras"\ntimeout = inf\n', r"Received: timeout=inf"),
    "zero jobs per worker": ('\n[workers]\nmax_jobs_per_worker = 0\n[[jobs]]\nmodel = "tiny.keras"\n',
                             r"line 9: \[workers\]: max_jobs_per_worker must be a positive integer"),
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_bad_specs_exit_2_before_any_job(capsys, workdir, case):
    body, message = BAD_SPECS[case]
    spec = write_spec(workdir, body)
    before = snapshot(workdir)
    with flagsaver.flagsaver(spec=spec, out=str(workdir / "out"), quiet=True):
        code = cli.main(["batch"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert re.search(message, err), err
    assert snapshot(workdir) == before and not os.path.exists(workdir / "out")


def test_cli_refuses_an_unknown_backend(capsys, workdir):
    spec = write_spec(workdir, '\n[[jobs]]\nmodel = "tiny.keras"\n')
    before = snapshot(workdir)
    with flagsaver.flagsaver(spec=spec, out=str(workdir / "out"), quiet=True,
                             backend="litert"):
        code = cli.main(["batch"])
    err = capsys.readouterr().err
    assert code == 2 and "Unknown --backend 'litert' for pipelines.batch" in err
    assert snapshot(workdir) == before and not os.path.exists(workdir / "out")


def test_malformed_yaml_names_the_line(workdir):
    path = workdir / "jobs.yml"
    path.write_text("jobs:\n  - model: tiny.keras\n    modes: [int8\n")
    with pytest.raises(ValueError, match=r"jobs.yml: line \d: malformed YAML"):
        batch.load_spec(str(path), str(workdir / "out"))


@pytest.mark.parametrize("values, message", [
    ({}, "--spec is required"),
    ({"spec": "x.toml", "workers": 0}, "--workers must be at least 1"),
    ({"spec": "x.toml", "timeout": -1.0}, "--timeout must be a positive number of seconds"),
    ({"spec": "x.toml", "timeout": float("nan")}, "--timeout must be a positive number of seconds. "
                                                  "Received: nan"),
    ({"spec": "/no/jobs.toml"}, "Spec file not found"),
])
def test_cli_flag_errors(capsys, tmp_path, values, message):
    with flagsaver.flagsaver(out=str(tmp_path / "o"), quiet=True, **values):
        assert cli.main(["batch"]) == 2
    assert message in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o")


def run_cli(capsys, **values):
    with flagsaver.flagsaver(quiet=True, **values):
        code = cli.main(["batch"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_batch_runs_caches_resumes_and_forces(capsys, workdir):
    spec = write_spec(workdir, TWO_JOBS)
    out = workdir / "out"
    code, stdout, _ = run_cli(capsys, spec=spec, out=str(out), workers=2)
    assert code == 0, stdout
    manifest = json.load(open(out / "manifest.json"))
    assert manifest["workers"] == 2 and manifest["backend"] == "local"
    assert manifest["versions"]["tensorflow"] and manifest["versions"]["litert"]
    jobs = {j["name"]: j for j in manifest["jobs"]}
    assert {j["status"] for j in jobs.values()} == {"ok"}
    for job in jobs.values():
        assert job["seconds"] > 0 and os.path.exists(out / job["log"])
        assert job["log"] == f"logs/{job['name']}.log" and job["out"] == job["name"]
        names = {os.path.basename(a["path"]) for a in job["artifacts"]}
        assert "report.json" in names
        for artifact in job["artifacts"]:
            assert not os.path.isabs(artifact["path"])
            data = open(out / artifact["path"], "rb").read()
            assert artifact["size_bytes"] == len(data)
            assert artifact["sha256"] == hashlib.sha256(data).hexdigest()
    assert set(jobs["other"]["metrics"]["modes"]) == {"float16", "dynamic"}
    report = json.load(open(out / "tiny" / "report.json"))
    assert jobs["tiny"]["metrics"]["modes"]["int8"]["accuracy"] == report["modes"][0]["accuracy"]
    assert "| tiny | ok |" in stdout
    first_mtime = os.path.getmtime(out / "tiny" / "tiny_int8.tflite")

    start = time.perf_counter()
    code, stdout, _ = run_cli(capsys, spec=spec, out=str(out), workers=2)
    assert code == 0 and time.perf_counter() - start < 5
    assert "| tiny | ok (cached) |" in stdout and "| other | ok (cached) |" in stdout
    assert os.path.getmtime(out / "tiny" / "tiny_int8.tflite") == first_mtime

    # An interrupted batch: one job's record missing -> only that job runs again.
    os.unlink(out / ".tflq-cache" / "other.json")
    code, stdout, _ = run_cli(capsys, spec=spec, out=str(out))
    assert "| tiny | ok (cached) |" in stdout and "| other | ok |" in stdout

    # Changed data changes the cache key of every job that reads it.
    x, y = tiny_data(30, seed=9)
    np.savez(workdir / "calib.npz", x=x, y=y)
    code, stdout, _ = run_cli(capsys, spec=spec, out=str(out))
    assert "| tiny | ok |" in stdout and "| other | ok |" in stdout

    code, stdout, _ = run_cli(capsys, spec=spec, out=str(out), force=True)
    assert "cached" not in stdout
    assert os.path.getmtime(out / "tiny" / "tiny_int8.tflite") > first_mtime


@pytest.mark.parametrize("isolation", ["warm", "process"])
def test_a_bad_job_never_takes_the_batch_down(capsys, workdir, isolation):
    body = """
[[jobs]]
model = "tiny.keras"
modes = ["int8"]

[[jobs]]
name = "crash"
model = "batch_factories:segfault"

[[jobs]]
name = "hang"
model = "batch_factories:hang"
timeout = 8

[[jobs]]
name = "oom"
model = "batch_factories:out_of_memory"
max_memory_mb = 12000

[[jobs]]
name = "broken"
model = "tiny.keras"
data = "nan.npz"
"""
    x, _ = tiny_data(20)
    x[4, 0, 0, 0] = np.nan
    np.savez(workdir / "nan.npz", x=x)
    spec = write_spec(workdir, body)
    out = workdir / "out"
    code, stdout, err = run_cli(capsys, spec=spec, out=str(out), workers=2, isolation=isolation)
    assert code == 1
    manifest = json.load(open(out / "manifest.json"))
    assert manifest["worker_policy"]["isolation"] == isolation
    jobs = {j["name"]: j for j in manifest["jobs"]}
    assert jobs["tiny"]["status"] == "ok"
    assert jobs["crash"]["status"] == "crashed" and "SIGSEGV" in jobs["crash"]["error"]
    assert jobs["hang"]["status"] == "timeout" and "timed out after 8 s" in jobs["hang"]["error"]
    assert jobs["oom"]["status"] == "failed" and "out of memory" in jobs["oom"]["error"]
    assert jobs["broken"]["status"] == "failed"
    assert "nan.npz: sample 4, input 'img': contains NaN" in jobs["broken"]["error"]
    assert "crash: crashed: worker killed by SIGSEGV" in err
    assert not os.path.exists(out / ".tflq-cache" / "crash.json")
    assert os.path.getsize(out / "logs" / "hang.log") > 0
    if isolation == "process":
        assert all("worker" not in j for j in jobs.values())
        return
    # Warm: the crashed, hung and out-of-memory workers were replaced, not reused.
    assert jobs["crash"]["worker"]["recycled"] == "exited"
    assert jobs["hang"]["worker"]["recycled"] == "timeout"
    assert jobs["oom"]["worker"]["recycled"] == "the job ran out of memory (MemoryError)"
    pids = [j["worker"]["pid"] for j in jobs.values()]
    assert len(set(pids)) >= 4  # 2 first workers + at least 2 replacements


def test_gate_breach_exits_3(capsys, workdir):
    body = '\n[[jobs]]\nname = "tied"\n' \
           'model = "test_cli_convert:tied_logits_model"\ndata = "vec.npz"\neval_data = "vec.npz"\n' \
           'num_calibration_samples = 50\nmodes = ["int8"]\nmin_agreement = 0.9\n'
    x = np.random.default_rng(0).uniform(0, 1, (200, 4)).astype(np.float32)
    np.savez(workdir / "vec.npz", x=x, y=np.ones(200, np.int64))
    code, _, err = run_cli(capsys, spec=write_spec(workdir, body), out=str(workdir / "out"),
                           workers=2)
    jobs = {j["name"]: j for j in json.load(open(workdir / "out" / "manifest.json"))["jobs"]}
    assert jobs["tied"]["status"] == "gate_failed" and "top-1 agreement" in jobs["tied"]["error"]
    assert code == 3 and "tied: gate_failed: " in err
    assert jobs["tied"]["artifacts"]  # models and reports are still written


def test_ray_backend_same_results(capsys, workdir):
    crash = '\n[[jobs]]\nname = "crash"\nmodel = "batch_factories:segfault"\n'
    spec = write_spec(workdir, TWO_JOBS + crash)
    code, stdout, _ = run_cli(capsys, spec=spec, out=str(workdir / "ray"), workers=2,
                              backend="ray")
    assert code == 1
    manifest = json.load(open(workdir / "ray" / "manifest.json"))
    assert manifest["backend"] == "ray" and manifest["worker_policy"]["isolation"] == "warm"
    assert [j["status"] for j in manifest["jobs"]] == ["ok", "ok", "crashed"]
    assert "SIGSEGV" in manifest["jobs"][2]["error"]
    assert all(j["worker"]["pid"] > 0 for j in manifest["jobs"])  # ran on warm actor workers
    assert os.path.exists(workdir / "ray" / "other" / "other_dynamic.tflite")
    code, stdout, _ = run_cli(capsys, spec=spec, out=str(workdir / "ray"), backend="ray")
    assert "| tiny | ok (cached) |" in stdout and "| crash | crashed |" in stdout


def test_run_batch_argument_checks(workdir):
    spec = batch.load_spec(write_spec(workdir, TWO_JOBS), str(workdir / "out"))
    with pytest.raises(ValueError, match="workers must be at least 1"):
        batch.run_batch(spec, str(workdir / "out"), workers=0)
    with pytest.raises(ValueError, match="Unknown backend 'k8s'"):
        batch.run_batch(spec, str(workdir / "out"), backend="k8s")


def test_batch_module_does_not_import_tensorflow():
    code = ("import sys, tflq.batch, pipelines.batch; "
            "print('tensorflow' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.stdout.strip() == "False"


def test_worker_usage_error():
    result = subprocess.run([sys.executable, "-m", "tflq.batch.worker"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and "usage" in result.stderr


def test_benchmark_batch_spec(tmp_path):
    from benchmarks import benchmark_batch

    plan = benchmark_batch.model_plan(48)
    assert len({(w, d, seed) for _, w, d, seed in plan}) == 48  # distinct models
    models = []
    for name, *_ in plan[:12]:
        path = tmp_path / f"{name}.keras"
        path.write_bytes(b"placeholder")  # load_spec checks existence only
        models.append(str(path))
    spec_path = tmp_path / "jobs.toml"
    benchmark_batch.write_spec(str(spec_path), models, faults=True)
    spec = batch.load_spec(str(spec_path), str(tmp_path / "out"))
    assert len(spec.jobs) == 15 and spec.policy.max_jobs_per_worker == 1000
    assert {j.job.modes for j in spec.jobs} == {("int8",)}
    assert {j.job.num_eval_samples for j in spec.jobs} == {1000}
    faults = {j.name: j for j in spec.jobs[12:]}
    assert faults["hang"].timeout == 10 and faults["oom"].max_memory_mb == 12000


def test_timeout_flag_applies_to_jobs_without_their_own(capsys, workdir):
    spec = write_spec(workdir, '\n[[jobs]]\nname = "hang"\nmodel = "batch_factories:hang"\n')
    code, _, err = run_cli(capsys, spec=spec, out=str(workdir / "out"), timeout=3.0)
    assert code == 1 and "hang: timeout: timed out after 3 s" in err


def test_ray_address_is_passed_to_ray_init(capsys, workdir, monkeypatch):
    # No Ray cluster exists here: check the address reaches ray.init, then stop.
    import ray

    seen = {}

    class Stop(Exception):
        pass

    def fake_init(**kwargs):
        seen.update(kwargs)
        raise Stop()

    monkeypatch.setattr(ray, "init", fake_init)
    spec = write_spec(workdir, '\n[[jobs]]\nmodel = "tiny.keras"\nmodes = ["float16"]\n')
    code, _, err = run_cli(capsys, spec=spec, out=str(workdir / "out"), backend="ray",
                           ray_address="127.0.0.1:6379")
    assert code == 1 and err.startswith("internal error: Stop")  # the contract's exit 1
    assert seen["address"] == "127.0.0.1:6379"


@pytest.mark.parametrize("flag, value, message", [
    ("max_jobs_per_worker", 0, "max_jobs_per_worker must be a positive integer. Received: "
                               "max_jobs_per_worker=0"),
    ("max_worker_rss_mb", -5, "max_worker_rss_mb must be a positive integer (MB)"),
])
def test_cli_worker_flag_errors(capsys, workdir, flag, value, message):
    spec = write_spec(workdir, '\n[[jobs]]\nmodel = "tiny.keras"\n')
    before = snapshot(workdir)
    code, _, err = run_cli(capsys, spec=spec, out=str(workdir / "out"), **{flag: value})
    assert code == 2 and err == f"error: {message}" + err[len(f"error: {message}"):]
    assert err.count("\n") == 1 and snapshot(workdir) == before
    assert not os.path.exists(workdir / "out")


def test_cli_worker_flags_override_the_spec(capsys, workdir):
    body = ('\n[workers]\nmax_jobs_per_worker = 5\nmax_worker_rss_mb = 90000\n'
            '\n[[jobs]]\nname = "a"\nmodel = "tiny.keras"\nmodes = ["float16"]\n'
            '\n[[jobs]]\nname = "b"\nmodel = "tiny.keras"\nmodes = ["float16"]\n')
    out = workdir / "out"
    code, _, _ = run_cli(capsys, spec=write_spec(workdir, body), out=str(out),
                         max_jobs_per_worker=1, max_worker_rss_mb=80000)
    assert code == 0
    manifest = json.load(open(out / "manifest.json"))
    assert manifest["worker_policy"] == {"isolation": "warm", "max_jobs_per_worker": 1,
                                         "max_worker_rss_mb": 80000}
    a, b = manifest["jobs"]
    assert a["worker"]["job_number"] == b["worker"]["job_number"] == 1
    assert a["worker"]["pid"] != b["worker"]["pid"]
    assert a["worker"]["recycled"] == "1 jobs done (max_jobs_per_worker)"
    assert os.listdir(out / "logs" / "workers")  # start-up logs of both workers

"""Fuzzed front door, batch specs: random and malformed TOML/YAML specs (unknown keys, wrong
types, NaN/Inf, bad layouts and names, truncated or bit-flipped text).

``tflq.batch.load_spec`` must return a checked spec or raise ValueError; when it raises,
``pipelines.batch`` on the same spec must exit 2 with one ``error:`` line and leave an
existing batch folder byte-identical (a valid spec is not run: that would start workers).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile

import numpy as np
import pytest
import yaml
from conftest import tiny_data
from fuzz_support import check_cli_outcome, corrupt, prefilled_folder, profile, record, run_cli
from hypothesis import given
from hypothesis import strategies as st

from pipelines import batch
from tflq import batch as batch_lib
from tflq.batch import spec as spec_module

# Spec keys of every job kind (derived from the job dataclasses) and the batch's own keys,
# with the Python types each accepts.
_KIND_TYPES = {"bool": (bool,), "int": (int,), "float": (int, float), "str": (str,),
               "enum": (str,), "list": (list, str), "size": (list,), "json": (list,),
               "losses": (str, dict)}
SETTING_TYPES = {**{item.name: _KIND_TYPES[item.kind] for kind in spec_module.JOB_KINDS
                    for item in spec_module.spec_settings(kind).values()},
                 **spec_module.BATCH_KEYS}
SETTINGS = sorted(SETTING_TYPES) + ["kind"]


@pytest.fixture(scope="module")
def spec_files(tiny_keras_path, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz_specs")
    x, y = tiny_data(10, seed=2)
    np.savez(folder / "calib.npz", x=x, y=y)
    return {"model": tiny_keras_path, "data": str(folder / "calib.npz"), "root": str(folder)}


def _scalar():
    return st.one_of(st.text(max_size=6), st.integers(-3, 2**63 - 1), st.booleans(),
                     st.floats(allow_nan=True, allow_infinity=True),
                     st.lists(st.integers(-2, 300), max_size=3))


@st.composite
def setting(draw, key: str, files: dict):
    if key in ("model", "data", "eval_data"):
        return draw(st.one_of(st.just(files["model" if key == "model" else "data"]),
                              st.sampled_from(["missing.keras", "os:getcwd", "", files["root"]]),
                              _scalar()))
    valid = {"modes": st.sampled_from([["int8"], "float32", ["int9"], [], "int8,float16"]),
             "normalize": st.sampled_from(["0_1", "-1_1", "none", "0_2"]),
             "image_size": st.lists(st.integers(-1, 9), max_size=3),
             "name": st.sampled_from(["job-1", "a b", "../x", "", "ok.v2"]),
             "out": st.sampled_from(["sub", "../outside", "/abs", "", "a/../../b"]),
             "kind": st.sampled_from(["convert", "qat", "compress", "ptq", ""])}
    typed = {int: st.integers(-2, 600), bool: st.booleans(), str: st.text(max_size=6),
             float: st.floats(-1, 200) | st.sampled_from([math.nan, math.inf])}
    accepted = SETTING_TYPES.get(key, (str,))
    right_type = st.one_of(*[typed[t] for t in accepted if t in typed]) if key not in valid else valid[key]
    # Four in five values have the type the key takes: the checks past the type check run too.
    return draw(right_type if draw(st.integers(0, 4)) else _scalar())


@st.composite
def specs(draw, files: dict) -> dict:
    """A spec as a dict: mostly the right shape, with any key and value drawn in."""
    def table(keys):
        chosen = draw(st.lists(st.sampled_from(keys), max_size=4, unique=True))
        return {k: draw(setting(k, files)) for k in chosen}

    spec = {}
    if draw(st.booleans()):
        spec["defaults"] = table(SETTINGS + ["bogus"])
    jobs = []
    for _ in range(draw(st.integers(0, 3))):
        job = {"model": files["model"], "data": files["data"]}
        job.update(table(SETTINGS + ["name", "out", "bogus"]))
        jobs.append(job)
    if jobs or draw(st.booleans()):
        spec["jobs"] = jobs
    if draw(st.booleans()):
        spec["output"] = {"layout": draw(st.one_of(st.sampled_from(
            ["{name}", "{name.x}", "{0}", "{name!z}", "x/{name}", "../{name}", "{}", "{name[0]}"]),
            _scalar()))}
    if draw(st.booleans()):
        spec["workers"] = {k: draw(st.one_of(st.sampled_from(["warm", "process", "x"]), _scalar()))
                           for k in draw(st.lists(st.sampled_from([*spec_module.WORKER_KEYS, "bogus"]),
                                                  max_size=2, unique=True))}
    if draw(st.integers(0, 9)) == 0:
        spec["bogus"] = 1
    return spec


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return ("nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
                if math.isinf(value) else repr(value))
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(value) if isinstance(value, str) else str(value)


def to_toml(spec: dict) -> str:
    lines = []
    for name, content in spec.items():
        if name == "jobs" and isinstance(content, list) and content:
            for job in content:
                lines += ["[[jobs]]"] + [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in job.items()]
        elif isinstance(content, dict):
            lines += [f"[{name}]"] + [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in content.items()]
        else:
            lines.insert(0, f"{json.dumps(name)} = {_toml_value(content)}")
    return "\n".join(lines) + "\n"


def check_spec(files, capfd, data) -> None:
    fmt = data.draw(st.sampled_from([".toml", ".yaml"]), label="format")
    spec = data.draw(specs(files), label="spec")
    text = (to_toml(spec) if fmt == ".toml" else yaml.safe_dump(spec)).encode()
    if data.draw(st.integers(0, 2), label="damage") == 0 and text:
        text = data.draw(corrupt(text), label="damaged text")
    work = tempfile.mkdtemp(prefix="fuzz-spec-", dir=files["root"])
    try:
        path = os.path.join(work, f"jobs{fmt}")
        with open(path, "wb") as f:
            f.write(text)
        out, before = prefilled_folder()
        try:
            batch_lib.load_spec(path, out)
        except ValueError as e:
            record(f"tflq.batch.load_spec: random {fmt[1:]}", "ValueError")
            assert str(e).strip()
            run = run_cli(batch, ["--spec", path, "--out", out, "--quiet"], capfd)
            check_cli_outcome(f"batch: random {fmt[1:]} spec", run, out, before, allowed=(2,))
        else:
            record(f"tflq.batch.load_spec: random {fmt[1:]}", "valid spec")
        shutil.rmtree(os.path.dirname(out), ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@profile("cheap")
@given(data=st.data())
def test_random_batch_specs(spec_files, capfd, data):
    check_spec(spec_files, capfd, data)


@pytest.mark.slow
@profile("cheap", many=True)
@given(data=st.data())
def test_random_batch_specs_many(spec_files, capfd, data):
    check_spec(spec_files, capfd, data)

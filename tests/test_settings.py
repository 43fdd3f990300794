"""One settings model: the flags of every job command and the keys of a batch spec come from
the job dataclasses' fields (tflq.settings), and mean the same thing."""

import dataclasses
import json
import os
import re
import subprocess
import sys

import pytest
import yaml
from absl.testing import flagsaver
from conftest import REPO, snapshot

from pipelines import batch as batch_cli
from pipelines import common
from pipelines import compress as compress_cli
from pipelines import convert as convert_cli
from pipelines import preflight as preflight_cli
from pipelines import qat as qat_cli
from tflq import report, settings
from tflq.batch import spec as batch_spec
from tflq.jobs.compress import CompressJob
from tflq.jobs.convert import ConvertJob
from tflq.jobs.preflight import PreflightJob
from tflq.jobs.qat import QATJob

COMMANDS = {"convert": (convert_cli, ConvertJob), "qat": (qat_cli, QATJob),
            "compress": (compress_cli, CompressJob), "preflight": (preflight_cli, PreflightJob)}
# Flags about how the command itself runs, not job settings.
COMMAND_ONLY = {"convert": {"quiet"}, "qat": set(), "compress": set(), "preflight": set()}
# Spec keys of the batch itself, not flags of the job commands.
BATCH_ONLY = {"name", "kind", "timeout", "max_memory_mb"}
# Where the commands' default differs from the Python API's (declared with cli_default).
CLI_DEFAULTS = {"qat": {"epochs": (2, 10)}, "compress": {"epochs": (2, 10)},
                "convert": {"backend": (None, "converter")}}


@pytest.mark.parametrize("kind", ["convert", "qat", "compress"])
def test_every_flag_is_a_spec_key_and_every_spec_key_a_flag(kind):
    module, _ = COMMANDS[kind]
    flag_names = common.command_flags(module) - COMMAND_ONLY[kind]
    keys = {*batch_spec.spec_settings(kind), *batch_spec.JOB_ONLY_KEYS, *batch_spec.BATCH_KEYS}
    assert flag_names - keys == set(), "flags that are no spec key"
    assert keys - flag_names == BATCH_ONLY, "spec keys that are no flag"
    assert COMMAND_ONLY[kind] <= common.command_flags(module)


_DUMP = """
import importlib, json, sys
from absl import flags
from pipelines import common
module = importlib.import_module("pipelines." + sys.argv[1])
print(json.dumps({n: [flags.FLAGS[n].flag_type(), flags.FLAGS[n].default, flags.FLAGS[n].help,
                      getattr(flags.FLAGS[n].parser, "enum_values", None)]
                  for n in common.command_flags(module)}))
"""


def _field_default(job_class, path):
    """The dataclass field's own default, read without tflq.settings."""
    cls, default = job_class, None
    for name in path:
        field = next(f for f in dataclasses.fields(cls) if f.name == name)
        default = field.default
        cls = type(default)
    return default


@pytest.mark.parametrize("kind", sorted(COMMANDS))
def test_each_flag_has_the_help_kind_and_default_of_its_field(kind):
    # A command runs alone in its process: flags several commands define keep each one's help.
    found = subprocess.run([sys.executable, "-c", _DUMP, kind], cwd=REPO, capture_output=True,
                           text=True, timeout=300, env={**os.environ, "PYTHONPATH": REPO})
    assert found.returncode == 0, found.stderr[-2000:]
    flags_found = json.loads(found.stdout.strip().splitlines()[-1])
    items = [s for s in settings.settings_of(COMMANDS[kind][1]) if s.cli]
    assert {s.name for s in items} == set(flags_found) - COMMAND_ONLY[kind]
    for item in items:
        flag_type, default, help_text, enum_values = flags_found[item.name]
        field = item.help.replace("\n", " ")
        if item.flag_kind == "enum":
            assert enum_values == [str(c) for c in item.choices]
            field = f"<{'|'.join(enum_values)}>: {field}"
        if item.flag_kind == "multi_string":  # absl says how to repeat it
            field += ";\n    repeat this option to specify a list of values"
        assert help_text == field, item.name
        assert default == item.flag_default, item.name
        raw = _field_default(COMMANDS[kind][1], item.path)
        if raw is dataclasses.MISSING:
            assert item.required and default is None
            continue
        user = (not raw if item.negate else item.none_as if raw is None and item.none_as
                else list(raw) if isinstance(raw, tuple) else raw)
        if item.name in CLI_DEFAULTS.get(kind, {}):
            assert (raw, item.default) == CLI_DEFAULTS[kind][item.name]
        else:
            assert item.default == user, item.name
        if default is not None:  # the flag's default, parsed, is the setting's default
            assert settings.from_flag(item, default, item.name) == item.default, item.name
        else:  # None: the job's default applies, and the help says which when there is one
            assert item.default in (None, [], "default") or "default" in help_text, item.name


def test_flags_left_alone_give_the_jobs_own_defaults(tmp_path):
    paths = {"model": "m.keras", "eval_data": "e.npz", "out": str(tmp_path / "o")}
    with flagsaver.flagsaver(data="d.npz", quiet=True, **paths):
        job = convert_cli.build_job()
    assert job == ConvertJob(data="d.npz", progress=False, backend="converter", **paths)
    for module, job_class in ((qat_cli, QATJob), (compress_cli, CompressJob)):
        with flagsaver.flagsaver(train_data="t.npz", **paths):
            job = module.build_job()
        assert job == job_class(train_data="t.npz", epochs=10, verbose=job.verbose, **paths)
    with flagsaver.flagsaver(model="m.keras"):
        assert preflight_cli.build_job() == PreflightJob(model="m.keras")


def _files(folder):
    for name in ("m.keras", "teacher.keras", "d.npz", "e.npz"):
        (folder / name).write_bytes(b"")
    return {"model": str(folder / "m.keras"), "eval_data": str(folder / "e.npz")}


# Non-default values of every setting: as flags (absl values) and as spec values.
CONVERT = {"data": "d.npz", "modes": ("int8,float16", ["int8", "float16"]), "seed": 3,
           "num_calibration_samples": 12, "num_eval_samples": 9, "num_threads": 2,
           "batch_size": 5, "latency_runs": 3, "integer_io": True, "per_tensor": True,
           "allow_float_ops": True, "percentile": 99.9, "adaround": True,
           "adaround_bits": ("4", 4), "adaround_iterations": 7, "adaround_reg": 0.1,
           "range_search": True,
           "normalize": "-1_1", "image_size": ("8x8", [8, 8]), "max_accuracy_drop": 1.5,
           "min_agreement": 0.5, "layer_error_samples": 0, "backend": "both",
           "recipes": ("static_wi8_ai8", ["static_wi8_ai8"]), "output_tasks": "logits=multilabel",
           "gate": (["logits:f1>=0.9", "sqnr_db>=20"], ["logits:f1>=0.9", "sqnr_db>=20"])}
QAT = {"train_data": "d.npz", "scheme": "pow2", "strategy": "distill", "teacher": "teacher.keras",
       "epochs": 3, "batch_size": 8, "learning_rate": 0.01, "quant_error_weight": 0.5,
       "temperature": 2.0, "alpha": 0.3, "activation_ranges": "meanstd", "range_k": 2.5,
       "overrides": ('[{"match": "^d", "weight_bits": 8}]', [{"match": "^d", "weight_bits": 8}]),
       "distribution": "mirrored", "num_train_samples": 40, "seed": 1, "num_threads": 2,
       "latency_runs": 3, "layer_error_samples": 4, "output_losses": "logits=kl",
       "min_agreement": 0.5, "output_tasks": "logits=regression", "gate": (["sqnr_db>=10"],
                                                                            ["sqnr_db>=10"])}
COMPRESS = {"train_data": "d.npz", "sparsity": 0.5, "schedule": "polynomial", "clusters": 4,
            "layers": "^d", "layer_types": (["Dense"], ["Dense"]), "quantization": "ptq",
            "scheme": "pow2", "epochs": 3, "qat_epochs": 1, "batch_size": 8,
            "learning_rate": 0.01, "qat_learning_rate": 0.001, "distill": True,
            "num_train_samples": 40, "num_calibration_samples": 20, "seed": 2, "num_threads": 2,
            "latency_runs": 3, "output_losses": "logits=mse", "max_accuracy_drop": 2.0,
            "output_tasks": "logits=classification", "gate": (["logits:accuracy>0.5"],
                                                               ["logits:accuracy>0.5"])}


# Settings that exclude others are set in further cases.
CASES = [("convert", CONVERT), ("qat", QAT), ("compress", COMPRESS),
         ("convert", {"data": "d.npz", "range_estimator": "kl", "equalize": True,
                      "equalize_relu6": "relu"}),
         ("convert", {"data": "d.npz", "selective": True, "min_agreement": 0.9}),
         ("convert", {"data": "d.npz", "auto": True}),
         ("qat", {"train_data": "d.npz", "strategy": "statistics", "max_accuracy_drop": 1.0}),
         ("compress", {"train_data": "d.npz", "structure": "2:4", "min_agreement": 0.5})]


@pytest.mark.parametrize("kind", ["convert", "qat", "compress"])
def test_the_cases_below_set_every_spec_key(kind):
    given = {k for case_kind, values in CASES if case_kind == kind for k in values}
    assert set(batch_spec.spec_settings(kind)) == given | {"model", "eval_data"}


@pytest.mark.parametrize("kind, values", CASES)
def test_a_spec_job_equals_the_command_with_the_same_settings(tmp_path, kind, values):
    paths = _files(tmp_path)
    as_flag = {k: v[0] if isinstance(v, tuple) else v for k, v in values.items()}
    as_key = {k: v[1] if isinstance(v, tuple) else v for k, v in values.items()}
    for key in ("data", "train_data", "teacher"):
        if key in as_flag:
            as_flag[key] = str(tmp_path / as_flag[key])
    spec = tmp_path / "jobs.yaml"
    spec.write_text(yaml.safe_dump({"jobs": [{"kind": kind, "name": "j", **paths, **as_key}]}))
    loaded = batch_spec.load_spec(str(spec), str(tmp_path / "out")).jobs[0]
    assert loaded.kind == kind
    module, _ = COMMANDS[kind]
    with flagsaver.flagsaver(out=loaded.job.out, **paths, **as_flag):
        from_flags = module.build_job()
    quiet = {"progress": False} if kind == "convert" else {"verbose": loaded.job.verbose}
    assert dataclasses.replace(from_flags, **quiet) == loaded.job
    defaults = {n: s.default for n, s in batch_spec.spec_settings(kind).items()}
    assert all(as_key[k] != defaults[k] for k in as_key), "a value equal to its default proves nothing"
    # every value reached its field (read back without tflq.settings)
    job, plain = loaded.job, {"convert_options", "data_options", "gates"}
    fields = {f.name: getattr(job, f.name) for f in dataclasses.fields(job) if f.name not in plain}
    for owner in plain & {f.name for f in dataclasses.fields(job)}:
        fields.update(dataclasses.asdict(getattr(job, owner)))
    for key, value in as_key.items():
        if key in TRANSLATED:
            assert TRANSLATED[key](job) == value, key
        elif key not in ("data", "train_data", "teacher"):  # paths: resolved against the spec
            got = fields[key]
            assert (list(got) if isinstance(got, tuple) else got) == value, key


# Keys whose field holds them in another form: how to read the key's value back from the job.
TRANSLATED = {
    "per_tensor": lambda job: not job.convert_options.per_channel,
    "output_losses": lambda job: ",".join(f"{name}={loss}" for name, loss in job.output_losses),
    "output_tasks": lambda job: ",".join(f"{name}={task}" for name, task in job.output_tasks),
    "overrides": lambda job: [dict(o) for o in job.overrides],
    "modes": lambda job: list(job.modes),
}


BAD_KEYS = {
    "convert enum": ('model = "m.keras"\ndata = "d.npz"\nrange_estimator = "median"\n',
                     r"line 5: jobs\[0\]\.range_estimator must be one of \['minmax', 'percentile', "
                     r"'mse', 'kl'\]\. Received: 'median' \(jobs\[0\] is a convert job\)"),
    "qat type": ('kind = "qat"\nmodel = "m.keras"\ntrain_data = "d.npz"\neval_data = "e.npz"\n'
                 'epochs = "ten"\n',
                 r"line 7: jobs\[0\]\.epochs must be int\. Received: 'ten' \(jobs\[0\] is a qat job\)"),
    "compress enum": ('kind = "compress"\nmodel = "m.keras"\ntrain_data = "d.npz"\n'
                      'eval_data = "e.npz"\nschedule = "cubic"\n',
                      r"jobs\[0\]\.schedule must be one of \['constant', 'polynomial'\]\. "
                      r"Received: 'cubic' \(jobs\[0\] is a compress job\)"),
    "key of another kind": ('kind = "qat"\nmodel = "m.keras"\ntrain_data = "d.npz"\n'
                            'eval_data = "e.npz"\nmodes = ["int8"]\n',
                            r"line 7: unknown key 'modes' in jobs\[0\] \(a qat job\)\. Known: "),
    "unknown key": ('model = "m.keras"\ndata = "d.npz"\nepochz = 3\n',
                    r"line 5: unknown key 'epochz' in jobs\[0\] \(a convert job\)"),
    "unknown kind": ('kind = "train"\nmodel = "m.keras"\n',
                     r"jobs\[0\]\.kind must be one of \['convert', 'qat', 'compress'\]\. "
                     r"Received: 'train'"),
    "qat without training data": ('kind = "qat"\nmodel = "m.keras"\neval_data = "e.npz"\n',
                                  r"jobs\[0\] has no 'train_data' \(a qat job needs it"),
    "value the job refuses": ('kind = "compress"\nname = "c"\nmodel = "m.keras"\n'
                              'train_data = "d.npz"\neval_data = "e.npz"\nclusters = 1\n',
                              r"jobs\[0\] \(c\): clusters must be at least 2"),
}
BAD_DEFAULTS = {
    "defaults type": ('[defaults]\nseed = 1.5\n',
                      r"line 2: defaults\.seed must be int\. Received: 1\.5 \(jobs\[0\] is a "
                      r"convert job\)"),
    "defaults for no job": ('[defaults]\nsparsity = 0.5\n',
                            r"\[defaults\]\.sparsity applies to no job of this spec \(its kinds: "
                            r"\['convert'\]\)"),
}


@pytest.mark.parametrize("case", sorted(BAD_KEYS) + sorted(BAD_DEFAULTS))
def test_a_bad_spec_key_exits_2_naming_job_and_key(capsys, tmp_path, case):
    _files(tmp_path)
    if case in BAD_KEYS:
        body, message = BAD_KEYS[case]
        text = "\n[[jobs]]\n" + body
    else:
        body, message = BAD_DEFAULTS[case]
        text = body + '\n[[jobs]]\nmodel = "m.keras"\ndata = "d.npz"\n'
    (tmp_path / "jobs.toml").write_text(text)
    before = snapshot(tmp_path)
    with flagsaver.flagsaver(spec=str(tmp_path / "jobs.toml"), out=str(tmp_path / "out"),
                             quiet=True):
        code = batch_cli.main(["batch"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert re.search(message, err), err
    assert snapshot(tmp_path) == before and not os.path.exists(tmp_path / "out")


def test_build_refuses_an_unknown_setting():
    with pytest.raises(ValueError, match=r"Unknown setting\(s\) \['modez'\] for ConvertJob"):
        settings.build(ConvertJob, {"model": "m", "data": "d", "modez": ["int8"]}, out=None)


def test_flag_values_that_do_not_parse_name_the_flag():
    items = {s.name: s for s in settings.settings_of(ConvertJob)}
    with pytest.raises(ValueError, match=r"--image_size must look like 224x224\. Received: '8by8'"):
        settings.from_flag(items["image_size"], "8by8", "--image_size")
    qat_items = {s.name: s for s in settings.settings_of(QATJob)}
    with pytest.raises(ValueError, match=r"--overrides is not valid JSON"):
        settings.from_flag(qat_items["overrides"], "[{", "--overrides")
    with pytest.raises(ValueError, match=r"--overrides must be a JSON list"):
        settings.from_flag(qat_items["overrides"], '{"a": 1}', "--overrides")


def test_convert_backend_sets_modes_and_recipes():
    litert = ConvertJob(model="m", data="d", out=None, backend="litert")
    assert litert.modes == ("float32",) and litert.recipes == ("static_wi8_ai8",
                                                              "dynamic_wi8_afp32",
                                                              "weight_only_wi8_afp32")
    assert ConvertJob.from_dict(litert.to_dict()) == litert
    both = ConvertJob(model="m", data="d", out=None, backend="both", modes=("int8",))
    assert both.modes == ("int8",) and len(both.recipes) == 3
    with pytest.raises(ValueError, match="--recipes needs --backend litert or --backend both"):
        ConvertJob(model="m", data="d", out=None, backend="converter", recipes=("static_wi8_ai8",))
    with pytest.raises(ValueError, match="--modes picks converter modes"):
        ConvertJob(model="m", data="d", out=None, backend="litert", modes=("int8",))
    with pytest.raises(ValueError, match=r"Unknown --backend 'ray' for pipelines.convert"):
        ConvertJob(model="m", data="d", out=None, backend="ray")


def test_qat_and_compress_jobs_round_trip_through_their_dict():
    qat = QATJob(model="m.keras", train_data="t.npz", eval_data="e.npz", out="o",
                 overrides=({"match": "^d", "weight_bits": 8},), output_losses="logits=kl",
                 activation_ranges="meanstd")
    data = json.loads(json.dumps(qat.to_dict()))  # as a batch payload travels
    assert QATJob.from_dict(data) == qat
    compress = CompressJob(model="m.keras", train_data="t.npz", eval_data="e.npz", out="o",
                           layer_types=("Dense",), sparsity=0.5, gates=report.Gates(min_agreement=0.5))
    assert CompressJob.from_dict(json.loads(json.dumps(compress.to_dict()))) == compress
    with pytest.raises(ValueError, match=r"QATJob.to_dict: model=<object> is held in memory"):
        QATJob(model=object(), train_data="t.npz", eval_data="e.npz", out=None).to_dict()

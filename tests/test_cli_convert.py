"""pipelines/convert.py end to end: the bundled example, every flag, every bad input."""

import gzip
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from absl.testing import flagsaver
from ai_edge_litert.interpreter import Interpreter
from conftest import EXAMPLE_DIR, REPO, snapshot, tiny_data

from pipelines import convert as cli
from tflq.models import tf_keras
from tflq.ptq.adaround import CLIP_RATIOS

EXAMPLE_MODEL = os.path.join(EXAMPLE_DIR, "fashion_mnist_cnn.keras")
EXAMPLE_EVAL = os.path.join(EXAMPLE_DIR, "evaluation-images-idx3-ubyte.gz")
FAST = {"latency_runs": 3, "quiet": True}


def run_cli(capsys, **flag_values):
    with flagsaver.flagsaver(**{**FAST, **flag_values}):
        code = cli.main(["convert"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def load_report(out):
    with open(os.path.join(out, "report.json")) as f:
        return json.load(f)


def _read_idx(path, header):
    return np.frombuffer(gzip.open(path).read()[header:], np.uint8)


def test_bundled_example_matches_independent_evaluation(capsys, tmp_path):
    out = str(tmp_path / "out")
    code, stdout, _ = run_cli(capsys, out=out, num_calibration_samples=100, num_eval_samples=300)
    assert code == 0
    assert "| int8 |" in stdout and "| int16x8 |" in stdout
    r = load_report(out)
    assert [m["mode"] for m in r["modes"]] == ["float32", "float16", "dynamic", "int8", "int16x8"]
    for key in ("tensorflow", "litert"):
        assert r["versions"][key]
    assert r["preflight"] == []  # the bundled CNN quantizes well: nothing to warn about
    assert "## Preflight\n\nNo findings" in open(os.path.join(out, "report.md")).read()
    # Independent reference: Keras on the raw IDX bytes, the interpreter on the written file.
    images = _read_idx(EXAMPLE_EVAL, 16).reshape(-1, 28, 28)[:300].astype(np.float32) / 255.0
    labels = _read_idx(EXAMPLE_EVAL.replace("images-idx3", "labels-idx1"), 8)[:300]
    keras_model = tf_keras.models.load_model(EXAMPLE_MODEL, compile=False)
    float_logits = keras_model.predict(images[..., None], verbose=0)
    assert r["float"]["accuracy"] == pytest.approx(np.mean(float_logits.argmax(1) == labels))
    int8 = next(m for m in r["modes"] if m["mode"] == "int8")
    interp = Interpreter(model_path=os.path.join(out, int8["path"]))
    runner = interp.get_signature_runner()
    tflite_logits = runner(image=images[..., None])["logits"]
    assert int8["accuracy"] == pytest.approx(np.mean(tflite_logits.argmax(1) == labels))
    assert int8["top1_agreement"] == pytest.approx(
        np.mean(tflite_logits.argmax(1) == float_logits.argmax(1)))
    assert int8["float_ops"] == []
    assert int8["size_bytes"] == os.path.getsize(os.path.join(out, int8["path"]))
    assert int8["size_ratio"] < 0.3
    assert int8["accuracy_drop_pp"] <= 1.0
    assert r["gates"]["passed"] is True
    for name in ("report.md", "report.png", "report.html"):
        assert os.path.getsize(os.path.join(out, name)) > 100


def test_no_flags_runs_the_bundled_example(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, stdout, _ = run_cli(capsys)
    assert code == 0
    r = load_report(tmp_path / "tflq_out")
    assert r["data"]["calibration"]["num_samples"] == 500
    assert r["data"]["evaluation"]["num_samples"] == 1500
    assert len(r["modes"]) == 5 and "wrote 9 files" in stdout  # 5 models, report.json/md/png/html


@pytest.fixture()
def tiny_files(tiny_keras_path, tmp_path):
    x, y = tiny_data(80, seed=4)
    calib, evaluation = tmp_path / "calib.npz", tmp_path / "eval.npz"
    np.savez(calib, x=x[:40], y=y[:40])
    np.savez(evaluation, x=x[40:], y=y[40:])
    return {"model": tiny_keras_path, "data": str(calib), "eval_data": str(evaluation)}


def test_flags_reach_the_report(capsys, tmp_path, tiny_files):
    out = str(tmp_path / "o")
    code, _, err = run_cli(capsys, **tiny_files, out=out, modes="int8,float16",
                           num_calibration_samples=20, num_eval_samples=30, seed=5,
                           num_threads=2, batch_size=7, latency_runs=4, integer_io=True,
                           per_tensor=True)
    assert code == 0 and err == ""  # --quiet: no progress bars
    r = load_report(out)
    s = r["settings"]
    assert (s["seed"], s["num_threads"], s["batch_size"], s["latency_runs"]) == (5, 2, 7, 4)
    assert s["integer_io"] is True and s["per_channel"] is False
    assert r["data"]["calibration"]["num_samples"] == 20
    assert r["data"]["evaluation"]["num_samples"] == 30
    assert [m["mode"] for m in r["modes"]] == ["int8", "float16"]
    assert r["modes"][0]["latency_ms"]["runs"] == 4
    interp = Interpreter(model_path=os.path.join(out, "tiny_int8.tflite"))
    assert interp.get_input_details()[0]["dtype"] == np.int8
    conv = [t for t in interp.get_tensor_details() if list(t["shape"]) == [4, 3, 3, 1]]
    assert len(conv[0]["quantization_parameters"]["scales"]) == 1  # per tensor
    assert not os.path.exists(os.path.join(out, "tiny_float32.tflite"))


def test_layer_error_samples_reach_report_json_md_and_html(capsys, tmp_path, tiny_files):
    out = str(tmp_path / "o")
    code, _, err = run_cli(capsys, **tiny_files, out=out, modes="float32,int8",
                           layer_error_samples=3)
    assert code == 0, err
    r = load_report(out)
    assert r["settings"]["layer_error_samples"] == 3
    float32, int8 = r["modes"]
    assert "layers" not in float32  # the reference itself
    assert int8["layer_error"]["samples"] == 3 and r["layer_error"]["modes"] == ["int8"]
    assert [row["op"] for row in int8["layers"]] == ["CONV_2D", "RESHAPE", "FULLY_CONNECTED"]
    # Cost: measured and recorded beside the conversion time it is bounded by.
    assert 0 < r["layer_error"]["seconds"] < 2 * r["layer_error"]["conversion_seconds"]
    md = open(os.path.join(out, "report.md")).read()
    assert "## Per-layer error" in md and "| CONV_2D#" in md
    page = open(os.path.join(out, "report.html")).read()
    assert 'class="layer-chart" data-mode="int8"' in page and 'id="modes"' in page


def test_layer_error_samples_0_turns_it_off(capsys, tmp_path, tiny_files):
    out = str(tmp_path / "o")
    assert run_cli(capsys, **tiny_files, out=out, modes="int8", layer_error_samples=0)[0] == 0
    r = load_report(out)
    assert "layers" not in r["modes"][0] and "layer_error" not in r
    assert "Per-layer error" not in open(os.path.join(out, "report.md")).read()
    assert "<svg class=\"layer-chart\"" not in open(os.path.join(out, "report.html")).read()


def test_seed_changes_the_calibration_draw(capsys, tmp_path, tiny_files):
    contents = []
    for seed in (0, 1):
        out = str(tmp_path / f"s{seed}")
        assert run_cli(capsys, **tiny_files, out=out, modes="int8", seed=seed,
                       num_calibration_samples=5)[0] == 0
        contents.append(open(os.path.join(out, "tiny_int8.tflite"), "rb").read())
    assert contents[0] != contents[1]


def test_without_eval_data_evaluates_on_the_rest(capsys, tmp_path, tiny_files):
    out = str(tmp_path / "o")
    code, _, _ = run_cli(capsys, model=tiny_files["model"], data=tiny_files["data"],
                         out=out, modes="int8", num_calibration_samples=15)
    assert code == 0
    assert load_report(out)["data"]["evaluation"]["num_samples"] == 25


def test_progress_bars_without_quiet(capsys, tmp_path, tiny_files):
    code, _, err = run_cli(capsys, **tiny_files, out=str(tmp_path / "o"), modes="float16",
                           quiet=False)
    assert code == 0 and "validate" in err


def test_image_folder_with_normalize_and_image_size(capsys, tmp_path, tiny_keras_path):
    from PIL import Image

    for c, cls in enumerate(("a", "b", "c")):
        os.makedirs(tmp_path / "imgs" / cls)
        for k in range(4):  # flat images survive resizing: the range is exactly [-1, 1]
            value = (0, 255, 64, 190)[(c + k) % 4]
            Image.fromarray(np.full((16, 16), value, np.uint8)).save(
                tmp_path / "imgs" / cls / f"{k}.png")
    out = str(tmp_path / "o")
    code, _, _ = run_cli(capsys, model=tiny_keras_path, data=str(tmp_path / "imgs"), out=out,
                         modes="int8", normalize="-1_1", image_size="8x8",
                         num_calibration_samples=6)
    assert code == 0
    r = load_report(out)
    assert r["data"]["evaluation"]["range"]["img"] == [-1.0, 1.0]
    assert r["settings"]["image_size"] == [8, 8] and r["settings"]["normalize"] == "-1_1"


def _cos_model():
    inp = tf_keras.Input((4,), name="x")
    h = tf_keras.layers.Lambda(lambda t: tf_keras.backend.cos(t))(tf_keras.layers.Dense(4)(inp))
    return tf_keras.Model(inp, tf_keras.layers.Dense(2)(h))


def make_cos_model():
    return _cos_model()


def tied_logits_model():
    """Two logits 1e-3 apart: int8 output steps (~0.016) tie them, float never does."""
    inp = tf_keras.Input((4,), name="x")
    dense = tf_keras.layers.Dense(2)
    model = tf_keras.Model(inp, dense(inp))
    dense.set_weights([np.ones((4, 2), np.float32), np.array([0.0, 1e-3], np.float32)])
    return model


def _vector_data(tmp_path, n=200):
    x = np.random.default_rng(0).uniform(0, 1, (n, 4)).astype(np.float32)
    path = tmp_path / "vec.npz"
    np.savez(path, x=x, y=np.ones(n, np.int64))
    return str(path)


def test_allow_float_ops(capsys, tmp_path):
    data = _vector_data(tmp_path)
    out = str(tmp_path / "o")
    code, _, err = run_cli(capsys, model="test_cli_convert:make_cos_model", data=data, out=out,
                           modes="int8", num_calibration_samples=50)
    assert code == 2 and "--allow_float_ops" in err and not os.path.exists(out)
    code, _, err = run_cli(capsys, model="test_cli_convert:make_cos_model", data=data, out=out,
                           modes="float32,int8", num_calibration_samples=50, allow_float_ops=True)
    assert code == 0
    int8 = load_report(out)["modes"][1]
    assert any(op.startswith("COS") for op in int8["float_ops"])
    # Dense (int8) → DEQUANTIZE → COS (float) → QUANTIZE → Dense (int8): one island, by
    # construction; the model's own input QUANTIZE and output DEQUANTIZE do not count.
    performance = int8["performance"]
    assert (performance["quantize"], performance["dequantize"], performance["by_type"]) == (
        1, 1, {"COS": 1})
    assert performance["latency_vs_float32"] == pytest.approx(
        int8["latency_ms"]["median"] / load_report(out)["modes"][0]["latency_ms"]["median"])
    line = "1 QUANTIZE and 1 DEQUANTIZE op(s) inserted around COS×1"
    assert "warning: int8: " in err and line in err
    assert line in open(os.path.join(out, "report.md")).read()
    assert line in open(os.path.join(out, "report.html")).read()


def test_gate_breach_exits_3_and_still_writes(capsys, tmp_path):
    out = str(tmp_path / "o")
    code, _, err = run_cli(capsys, model="test_cli_convert:tied_logits_model",
                           data=_vector_data(tmp_path), out=out, modes="float32,int8",
                           num_calibration_samples=50, max_accuracy_drop=1.0, min_agreement=0.9)
    assert code == 3
    assert err.startswith("quality gate failed: int8: accuracy drop")
    r = load_report(out)
    assert r["gates"]["passed"] is False
    assert any("int8: top-1 agreement" in f for f in r["gates"]["failures"])
    assert not any(f.startswith("float32") for f in r["gates"]["failures"])
    assert os.path.exists(os.path.join(out, "tied_logits_model_int8.tflite"))
    assert "FAILED:" in open(os.path.join(out, "report.md")).read()


def test_gates_pass_when_met(capsys, tmp_path, tiny_files):
    out = str(tmp_path / "o")
    code, _, _ = run_cli(capsys, **tiny_files, out=out, modes="float32",
                         max_accuracy_drop=0.0, min_agreement=1.0)
    assert code == 0 and load_report(out)["gates"]["passed"] is True


def test_output_tasks_and_gate_rules(capsys, tmp_path, tiny_files):
    out = str(tmp_path / "o")
    code, _, err = run_cli(capsys, **tiny_files, out=out, modes="float32,int8",
                           output_tasks="logits=multilabel", layer_error_samples=0,
                           gate=["logits:agreement>=0", "logits:f1>1.5", "sqnr_db>=0"])
    assert code == 3
    assert err == "quality gate failed: float32: gate logits:f1>1.5 failed: f1 = 1; int8: gate " \
        f"logits:f1>1.5 failed: f1 = {load_report(out)['modes'][1]['per_output']['logits']['f1']:.4g}\n"
    r = load_report(out)
    assert r["settings"]["output_tasks"] == {"logits": "multilabel"}
    assert r["gates"]["gate"] == ["logits:agreement>=0", "logits:f1>1.5", "sqnr_db>=0"]
    section = r["output_tasks"]["outputs"]["logits"]
    assert (section["task"], section["reason"], section["threshold"]) == (
        "multilabel", "set by output_tasks", 0.0)  # a linear output: logits, threshold 0
    assert section["activation"] == "linear" and section["shape"] == [None, 3]
    assert r["output_tasks"]["headline"]["why"].startswith(
        "output 0, measured as multilabel, not classification: the headline top-1 agreement")
    # independent: the float model and the written .tflite, thresholded at 0, F1 by counting
    x = np.load(tiny_files["eval_data"])["x"]
    reference = tf_keras.models.load_model(tiny_files["model"], compile=False)(x).numpy() > 0
    runner = Interpreter(model_path=os.path.join(out, "tiny_int8.tflite")).get_signature_runner()
    got = runner(img=x)["logits"] > 0
    tp, fp, fn = (np.sum(reference & got), np.sum(~reference & got), np.sum(reference & ~got))
    group = r["modes"][1]["per_output"]["logits"]
    assert group["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert group["agreement"] == pytest.approx(np.mean(reference == got))
    md = open(os.path.join(out, "report.md")).read()
    assert "**logits (None, 3): multilabel (set by output_tasks, threshold 0)**" in md
    assert "| mode | agreement | F1 vs float | SQNR dB |" in md
    assert "logits:f1&gt;1.5 failed" in open(os.path.join(out, "report.html")).read()
    code, _, err = run_cli(capsys, **tiny_files, out=str(tmp_path / "p"), modes="int8",
                           gate=["logits:top1_agreement>=0"], layer_error_samples=0)
    assert code == 0, err  # the inferred task (classification) has top1_agreement
    assert load_report(tmp_path / "p")["gates"]["passed"] is True


# ---- bad input: exit 2, one clear line, nothing written, existing output byte-identical ----

def _existing_output(tmp_path):
    out = tmp_path / "existing"
    out.mkdir()
    (out / "report.json").write_text('{"previous": true}')
    (out / "tiny_int8.tflite").write_bytes(b"previous model bytes")
    return str(out)


def _bad_files(tmp_path, tiny_keras_path):
    good = open(tiny_keras_path, "rb").read()
    (tmp_path / "truncated.keras").write_bytes(good[: len(good) // 3])
    (tmp_path / "corrupt.keras").write_bytes(b"PK\x03\x04" + b"\x00" * 64)
    x, _ = tiny_data(10)
    np.savez(tmp_path / "shape.npz", x=np.zeros((10, 9, 9, 1), np.float32))
    np.savez(tmp_path / "dtype.npz", x=(x * 255).astype(np.uint8))
    nan = x.copy()
    nan[6, 0, 0, 0] = np.nan
    np.savez(tmp_path / "nan.npz", x=nan)
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 8, 8, 1), np.float32))
    np.savez(tmp_path / "unscaled.npz", x=x * 255.0)
    (tmp_path / "a_file").write_text("x")


BAD_CASES = {
    "missing model": ({"model": "{tmp}/nope.keras"}, "Model path not found"),
    "truncated model": ({"model": "{tmp}/truncated.keras"}, "corrupt or truncated"),
    "corrupt model": ({"model": "{tmp}/corrupt.keras"}, "corrupt or truncated"),
    "missing data": ({"data": "{tmp}/nope.npz"}, "Data path not found"),
    "wrong shape": ({"data": "{tmp}/shape.npz"}, r"shape \(9, 9, 1\) does not match"),
    "wrong dtype": ({"data": "{tmp}/dtype.npz"}, "dtype uint8 but the model expects float32"),
    "nan": ({"data": "{tmp}/nan.npz"}, "sample 6, input 'img': contains NaN"),
    "nan in eval data": ({"eval_data": "{tmp}/nan.npz"}, "nan.npz: sample 6, input 'img'"),
    "empty eval data": ({"eval_data": "{tmp}/empty.npz"}, "is empty"),
    "empty data": ({"data": "{tmp}/empty.npz"}, "is empty"),
    "unscaled calibration": ({"data": "{tmp}/unscaled.npz"}, "lie far outside the range"),
    "unknown mode": ({"modes": "int8,int3"}, "Unknown mode 'int3'"),
    "out under a file": ({"out": "{tmp}/a_file/out"}, "cannot be created"),
    "out is a file": ({"out": "{tmp}/a_file"}, "exists and is not a folder"),
    "model without data": ({"data": None}, "--data is required"),
    "bad image size": ({"image_size": "8by8"}, "--image_size must look like"),
    "zero threads": ({"num_threads": 0}, "num_threads must be a positive integer"),
    "zero calibration samples": ({"num_calibration_samples": 0}, "num_calibration_samples"),
    "negative gate": ({"max_accuracy_drop": -1.0}, "max_accuracy_drop must be >= 0"),
    "unknown recipe": ({"backend": "litert", "modes": None, "recipes": "static_wi3"},
                       "Unknown LiteRT recipe 'static_wi3'"),
    "recipe twice": ({"backend": "both", "recipes": "static_wi8_ai8,static_wi8_ai8"},
                     "lists a recipe twice"),
    "recipes without litert": ({"recipes": "static_wi8_ai8"}, "--recipes needs --backend"),
    "batch backend in convert": ({"backend": "ray"}, "Unknown --backend 'ray' for pipelines.convert"),
    "estimator with per-tensor": ({"range_estimator": "mse", "per_tensor": True},
                                  "Range estimators calibrate through tflq's QAT graph"),
    "bad percentile": ({"range_estimator": "percentile", "percentile": 30.0},
                       r"percentile must be in \(50, 100\]"),
    "selective without a budget": ({"selective": True}, "--selective needs --max_accuracy_drop"),
    "selective with integer io": ({"selective": True, "integer_io": True,
                                   "max_accuracy_drop": 1.0}, "--selective works on"),
    "selective without int8": ({"selective": True, "modes": "float16", "max_accuracy_drop": 1.0},
                               "--selective needs the int8 mode"),
    "modes with litert only": ({"backend": "litert"}, "with --backend litert use --recipes"),
    "negative layer error samples": ({"layer_error_samples": -1},
                                     "layer_error_samples must be an integer >= 0"),
    "output task for no output": ({"output_tasks": "nope=regression"},
                                  r"output_tasks names output\(s\) \['nope'\] the model does not"),
    "unknown output task": ({"output_tasks": "logits=ranking"}, "Unknown task 'ranking'"),
    "malformed output tasks": ({"output_tasks": "logits"}, "items must read output=task"),
    "malformed gate": ({"gate": ["logits:f1=>0.5"]}, "A gate must read"),
    "gate metric unknown": ({"gate": ["logits:iou>=0.5"]}, "Unknown gate metric 'iou'"),
    "gate for no output": ({"gate": ["nope:f1>=0.5"]},
                           r"--gate names output\(s\) \['nope'\] the model does not have"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_exits_2_and_writes_nothing(capsys, tmp_path, tiny_keras_path, tiny_npz, case):
    _bad_files(tmp_path, tiny_keras_path)
    existing = _existing_output(tmp_path)
    before_tree = snapshot(tmp_path)
    overrides, message = BAD_CASES[case]
    flags_ = {"model": tiny_keras_path, "data": tiny_npz, "eval_data": tiny_npz, "out": existing,
              "modes": "int8"}
    flags_.update({k: v.format(tmp=tmp_path) if isinstance(v, str) else v
                   for k, v in overrides.items()})
    flags_ = {k: v for k, v in flags_.items() if v is not None or k != "modes"}
    code, stdout, err = run_cli(capsys, **flags_)
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert re.search(message, err), err
    assert snapshot(tmp_path) == before_tree  # nothing written, nothing overwritten
    assert stdout == ""


@pytest.mark.parametrize("extra, note", [
    ({"range_estimator": "percentile", "percentile": 99.9}, "activation ranges: percentile"),
    ({"equalize": True, "per_tensor": True}, "cross-layer equalization found NO pair"),
    ({"range_estimator": "mse", "equalize": True, "integer_io": True}, "activation ranges: mse"),
])
def test_tflq_calibration_flags(capsys, tmp_path, tiny_files, extra, note):
    out = str(tmp_path / "o")
    code, _, err = run_cli(capsys, **tiny_files, out=out, modes="int8",
                           num_calibration_samples=40, **extra)
    assert code == 0, err
    r = load_report(out)
    row = r["modes"][0]
    assert any(n.startswith(note) for n in row["notes"]), row["notes"]
    assert row["float_ops"] == [] and row["top1_agreement"] >= 0.9
    if extra.get("range_estimator"):  # what the estimator set, and what it kept at min/max
        record = row["methods"]["ranges"]
        assert sorted(record["kept_minmax"]) == ["input:img", "logits"]
        assert any(n.startswith(f"range estimator {extra['range_estimator']}: set "
                                f"{record['estimated']} activation range(s)") and
                   "kept 2 at min/max: input:img (model input), logits (model output)" in n
                   for n in row["notes"]), row["notes"]
    assert r["settings"]["range_estimator"] == extra.get("range_estimator")
    assert r["settings"]["equalize"] is bool(extra.get("equalize"))
    if extra.get("per_tensor"):  # per tensor, every weight layer's clip was chosen
        clip = row["methods"]["equalize"]["weight_clip"]
        assert len(clip["layers"]) >= 2 and "originals" not in clip
        assert any("layers for the smallest activated-output error" in n
                   for n in row["notes"]), row["notes"]
    # the file written is the one validated: its logits agree with the report's accuracy
    x, labels = np.load(tiny_files["eval_data"])["x"], np.load(tiny_files["eval_data"])["y"]
    runner = Interpreter(model_path=os.path.join(out, row["path"])).get_signature_runner()
    detail = runner.get_input_details()["img"]
    feed = x
    if detail["dtype"] == np.int8:
        scale, zero = detail["quantization"]
        feed = np.clip(np.round(x / scale) + zero, -128, 127).astype(np.int8)
    logits = runner(img=feed)["logits"]
    assert row["accuracy"] == pytest.approx(np.mean(logits.argmax(1) == labels))


def test_litert_backend_beside_the_converter(capsys, tmp_path, tiny_files):
    out = str(tmp_path / "o")
    code, stdout, err = run_cli(capsys, **tiny_files, out=out, backend="both", modes="int8",
                                recipes="static_wi8_ai8,dynamic_wi4_afp32",
                                num_calibration_samples=20)
    assert code == 0, err
    r = load_report(out)
    assert [m["mode"] for m in r["modes"]] == ["int8", "litert:static_wi8_ai8",
                                               "litert:dynamic_wi4_afp32"]
    assert r["settings"]["litert_recipes"] == ["static_wi8_ai8", "dynamic_wi4_afp32"]
    assert "| litert:static_wi8_ai8 |" in stdout
    static = r["modes"][1]
    assert static["float_ops"] == [] and "LiteRT Quantizer recipe" in static["notes"][0]
    # the written file is what was validated: rerun it through the interpreter here
    x = np.load(tiny_files["eval_data"])["x"]
    labels = np.load(tiny_files["eval_data"])["y"]
    interp = Interpreter(model_path=os.path.join(out, static["path"]))
    runner = interp.get_signature_runner()
    (in_scale, in_zero), (out_scale, out_zero) = (
        runner.get_input_details()["img"]["quantization"],
        runner.get_output_details()["logits"]["quantization"])
    codes = np.clip(np.round(x / in_scale) + in_zero, -128, 127).astype(np.int8)
    logits = (runner(img=codes)["logits"].astype(np.float32) - out_zero) * out_scale
    assert static["accuracy"] == pytest.approx(np.mean(logits.argmax(1) == labels))
    for row in r["modes"]:  # per-layer error for the recipes too, every op matched
        assert [layer["op"] for layer in row["layers"]] == ["CONV_2D", "RESHAPE", "FULLY_CONNECTED"]
        assert row["layer_error"]["unmatched"] == []
        assert all(layer["layer_sqnr_db"] is not None for layer in row["layers"])


def test_litert_backend_alone_uses_the_default_recipes(capsys, tmp_path, tiny_files):
    out = str(tmp_path / "o")
    code, _, err = run_cli(capsys, **tiny_files, out=out, backend="litert",
                           num_calibration_samples=20)
    assert code == 0, err
    assert [m["mode"] for m in load_report(out)["modes"]] == [
        "float32", "litert:static_wi8_ai8", "litert:dynamic_wi8_afp32", "litert:weight_only_wi8_afp32"]


def test_stray_arguments_are_a_usage_error(capsys):
    assert cli.main(["convert", "extra"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Unexpected arguments: extra") and err.count("\n") == 1


def test_module_runs_as_a_script(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.convert", "--model", str(tmp_path / "missing.keras"),
         "--data", "x.npz", "--out", str(tmp_path / "o")],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "error: Model path not found" in result.stderr
    assert "Traceback" not in result.stderr
    assert not os.path.exists(tmp_path / "o")


def test_selective_quantization_keeps_the_fewest_ops_in_float(capsys, tmp_path):
    out = str(tmp_path / "o")
    # Budget: no accuracy lost and every top-1 class kept, on 100 held-apart calibration images.
    code, _, err = run_cli(capsys, out=out, modes="int8", selective=True, max_accuracy_drop=0.0,
                           min_agreement=1.0, num_calibration_samples=500, num_eval_samples=300)
    r = load_report(out)
    # The gates then judge the evaluation data, which the search never saw: the exit code
    # follows them (the honest figure need not meet the budget).
    assert code == (3 if r["gates"]["failures"] else 0), err
    sel, row = r["selective"], r["modes"][0]
    # chosen on one calibration sample in five, held apart (issue 12): not on the eval data
    assert sel["budget"]["chosen_on"]["samples"] == 100
    assert sel["budget"]["chosen_on"]["calibrated_on"] == 400
    assert sel["met"]
    tried = {t["k"]: t for t in sel["trials"]}
    k = len(sel["kept_float"])
    assert len(row["float_ops"]) == k  # exactly the ops kept in float run in float
    # The fewest: trial k meets the budget on the held-apart images, every smaller one misses.
    meets = {j: t["agreement"] >= 1.0 and t["drop_pp"] <= 0.0 for j, t in tried.items()}
    assert meets[k] and not any(meets[j] for j in tried if j < k)
    ranked = [s["rmse_per_scale"] for s in sel["ranked"]]
    assert ranked == sorted(ranked, reverse=True)
    assert "## Selective quantization" in open(os.path.join(out, "report.md")).read()
    cost = sel["cost"]
    assert cost["selective_bytes"] == row["size_bytes"]
    sizes = {t["k"]: t["size_bytes"] for t in sel["trials"]}
    assert cost["all_int8_bytes"] == sizes[0]
    assert cost["all_int8_latency_ms"] > 0 and cost["selective_latency_ms"] > 0
    # the written file is the selective model: rerun it and recompute the accuracy
    images = _read_idx(EXAMPLE_EVAL, 16).reshape(-1, 28, 28)[:300].astype(np.float32) / 255.0
    labels = _read_idx(EXAMPLE_EVAL.replace("images-idx3", "labels-idx1"), 8)[:300]
    logits = Interpreter(model_path=os.path.join(out, row["path"])).get_signature_runner()(
        image=images[..., None])["logits"]
    assert row["accuracy"] == pytest.approx(np.mean(logits.argmax(1) == labels))


def test_selective_without_labels_uses_min_agreement_on_held_out_calibration(
        capsys, tmp_path, tiny_files, monkeypatch):
    from tflq.jobs import convert as convert_job
    from tflq.models import tf_keras

    x = np.load(tiny_files["data"])["x"]
    np.savez(tmp_path / "calib_nolabels.npz", x=x)
    np.savez(tmp_path / "eval_nolabels.npz", x=np.load(tiny_files["eval_data"])["x"])
    calls = []
    evaluate = convert_job._evaluate
    monkeypatch.setattr(convert_job, "_evaluate", lambda *a, **k: calls.append(1) or evaluate(*a, **k))
    files = {"model": tiny_files["model"], "data": str(tmp_path / "calib_nolabels.npz"),
             "eval_data": str(tmp_path / "eval_nolabels.npz")}
    before = snapshot(tmp_path)
    code, _, err = run_cli(capsys, **files, out=str(tmp_path / "refused"), modes="int8",
                           selective=True, max_accuracy_drop=1.0)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert "has no labels, so --max_accuracy_drop cannot be its budget" in err
    assert "--min_agreement" in err and snapshot(tmp_path) == before
    calls.clear()
    out = str(tmp_path / "o")
    code, stdout, err = run_cli(capsys, **files, out=out, modes="int8", selective=True,
                                min_agreement=1.0)
    assert code in (0, 3), err
    assert calls == [1]  # the evaluation data is read once, for the report, never to choose
    r = load_report(out)
    sel, row = r["selective"], r["modes"][0]
    assert sel["budget"] == {"max_accuracy_drop": None, "min_agreement": 1.0, "labelled": False,
                             "chosen_on": {"samples": 8, "calibrated_on": 32,
                                           "source": sel["budget"]["chosen_on"]["source"]}}
    assert all(t["drop_pp"] is None for t in sel["trials"])
    # Independent: the written model against the float model on the held-out samples 4, 9, ...
    held_out = x[4::5]
    float_top1 = np.argmax(tf_keras.models.load_model(tiny_files["model"])(held_out), 1)
    runner = Interpreter(model_path=os.path.join(out, row["path"])).get_signature_runner()
    deployed = np.argmax(runner(img=held_out)["logits"], 1)
    chosen = {t["k"]: t["agreement"] for t in sel["trials"]}[len(sel["kept_float"])]
    assert chosen == pytest.approx(np.mean(float_top1 == deployed))
    assert sel["met"] == (chosen >= 1.0)
    assert row["accuracy"] is None and "no labels" in stdout
    md = open(os.path.join(out, "report.md")).read()
    assert "Chosen on 8 samples" in md and "top-1 agreement ≥ 1.0" in md


def test_range_estimator_on_a_keras3_model(capsys, tmp_path, tiny_files):
    import keras

    keras.utils.set_random_seed(0)
    k3 = keras.Sequential([keras.Input((8, 8, 1), name="img"), keras.layers.Flatten(),
                           keras.layers.Dense(3, name="logits")])
    k3.save(tmp_path / "k3.keras")
    out = str(tmp_path / "o")
    code, _, err = run_cli(capsys, **{**tiny_files, "model": str(tmp_path / "k3.keras")}, out=out,
                           modes="int8", range_estimator="kl")
    assert code == 0, err
    row = load_report(out)["modes"][0]
    assert row["float_ops"] == []
    assert any(n.startswith("Keras 3 model rebuilt as tf_keras") for n in row["notes"])
    assert any(n.startswith("range estimator kl: set") for n in row["notes"])
    # the report's agreement, recomputed from the Keras 3 model and the written file
    x = np.load(tiny_files["eval_data"])["x"]
    runner = Interpreter(model_path=os.path.join(out, row["path"])).get_signature_runner()
    deployed = next(iter(runner(img=x).values()))
    assert row["top1_agreement"] == pytest.approx(np.mean(
        np.argmax(np.asarray(k3(x)), 1) == np.argmax(deployed, 1)))


def test_selective_search_reports_an_unreachable_budget():
    from tflq.ptq import selective

    ranked = [selective.Sensitivity("CONV_2D", f"t{i}", 10.0 - i) for i in range(5)]
    drops = {0: 3.0, 1: 2.0, 2: 1.5, 4: 1.2, 5: 1.4}

    class FakeDebugger:
        pass

    import tflq.ptq.selective as module

    original = module.model_with_float
    module.model_with_float = lambda debugger, tensors: bytes([len(tensors)])
    try:
        found = selective.search(FakeDebugger(), ranked, lambda content: drops[content[0]], 1.0)
        assert not found["met"] and found["kept_float"] == ["t0", "t1", "t2", "t3"]  # best: 1.2
        found = selective.search(FakeDebugger(), ranked, lambda content: drops[content[0]], 1.6)
        assert found["met"] and found["kept_float"] == ["t0", "t1"]  # k=2: fewest under 1.6
    finally:
        module.model_with_float = original


def test_auto_chooses_on_held_out_calibration_samples_only(capsys, tmp_path, tiny_files,
                                                           monkeypatch):
    from tflq.ptq import auto

    seen = {}
    search = auto.search

    def recording_search(model, samples, *args, **kwargs):
        seen["samples"] = [s["img"].copy() for s in samples]
        return search(model, samples, *args, **kwargs)

    monkeypatch.setattr(auto, "search", recording_search)
    out = str(tmp_path / "o")
    code, _, err = run_cli(capsys, **tiny_files, out=out, modes="int8", auto=True,
                           num_calibration_samples=40)
    assert code == 0, err
    r = load_report(out)
    record = r["modes"][0]["methods"]["auto"]
    assert [c["candidate"] for c in record["candidates"]] == list(auto.CANDIDATES)
    assert record["selection_samples"] == 8 and record["calibration_samples"] == 32
    scored = [c for c in record["candidates"] if "sqnr_db" in c]
    best = max(scored, key=lambda c: (c["sqnr_db"], c["top1_agreement"]))
    assert record["winner"] == best["candidate"]
    assert r["modes"][0]["notes"][0].startswith(f"auto: {record['winner']} chosen")
    # Only calibration samples reached the search: no evaluation sample among them.
    evaluation = np.load(tiny_files["eval_data"])["x"]
    assert len(seen["samples"]) == 40
    for sample in seen["samples"]:
        assert not np.any(np.all(evaluation == sample[0], axis=(1, 2, 3)))


def test_auto_split_holds_one_in_five_apart():
    from tflq.ptq import auto

    calibration, selection = auto.split_samples(list(range(12)))
    assert selection == [4, 9] and calibration == [0, 1, 2, 3, 5, 6, 7, 8, 10, 11]
    with pytest.raises(ValueError, match="--auto needs at least 5 calibration samples"):
        auto.split_samples([0, 1, 2, 3])


def test_auto_refuses_the_methods_it_chooses_itself(capsys, tmp_path, tiny_files):
    before = snapshot(tmp_path)
    code, stdout, err = run_cli(capsys, **tiny_files, out=str(tmp_path / "o"), modes="int8",
                                auto=True, equalize=True)
    assert code == 2 and "--auto chooses the range estimator, range search, equalization" in err
    assert snapshot(tmp_path) == before and stdout == ""


def test_a_method_worse_than_the_plain_converter_is_warned_about(capsys, tmp_path, tiny_files,
                                                                 monkeypatch):
    # Force a harmful range estimator (every activation range cut to 2% of the observed one)
    # and check that the report and stderr say it lost to the plain converter.
    from tflq.ptq import ranges

    estimate = ranges.estimate

    def harmful(hist, estimator, percentile=99.99):
        lo, hi = estimate(hist, "minmax")
        return (0.02 * lo, 0.02 * hi) if estimator == "mse" else (lo, hi)

    monkeypatch.setattr(ranges, "estimate", harmful)
    out = str(tmp_path / "o")
    code, _, err = run_cli(capsys, **tiny_files, out=out, modes="int8", range_estimator="mse",
                           num_calibration_samples=40)
    assert code == 0
    r = load_report(out)
    plain = r["plain_converter_int8"]["top1_agreement"]
    ours = r["modes"][0]["top1_agreement"]
    assert plain - ours > 0.02  # the forced estimator really hurts
    assert len(r["warnings"]) == 1 and r["warnings"][0].startswith("int8: top-1 agreement")
    assert f"warning: {r['warnings'][0]}" in err
    assert "## Warnings" in open(os.path.join(out, "report.md")).read()


def test_no_warning_when_a_method_keeps_up_with_the_converter(capsys, tmp_path, tiny_files):
    out = str(tmp_path / "o")
    code, _, err = run_cli(capsys, **tiny_files, out=out, modes="int8", range_estimator="minmax",
                           num_calibration_samples=40)
    assert code == 0
    r = load_report(out)
    assert abs(r["plain_converter_int8"]["top1_agreement"] - r["modes"][0]["top1_agreement"]) <= 0.02
    assert r["warnings"] == [] and "warning:" not in err


def test_adaround_flags_reach_the_report(capsys, tmp_path, tiny_files):
    out = str(tmp_path / "o")
    code, _, err = run_cli(capsys, **tiny_files, out=out, modes="int8", adaround=True,
                           adaround_bits="4", adaround_iterations=30, adaround_reg=0.02,
                           num_calibration_samples=40)
    assert code == 0, err
    r = load_report(out)
    record = r["modes"][0]["methods"]["adaround"]
    assert (record["num_bits"], record["iterations"], record["reg"]) == (4, 30, 0.02)
    assert all(layer["deployed_exactly"] for layer in record["layers"])
    assert all(min(CLIP_RATIOS) <= layer["clip_ratio_min"] <= layer["clip_ratio_median"] <= 1.0
               for layer in record["layers"])
    assert "4-bit grid clipped per channel" in err
    assert r["settings"]["adaround"] is True and r["settings"]["adaround_bits"] == 4


def test_range_search_flag_reaches_the_report_per_tensor_too(capsys, tmp_path, tiny_files):
    out = str(tmp_path / "o")
    code, _, err = run_cli(capsys, **tiny_files, out=out, modes="int8", range_search=True,
                           per_tensor=True, num_calibration_samples=40)
    assert code == 0, err
    r = load_report(out)
    record = r["modes"][0]["methods"]["range_search"]
    assert record["tensors"] >= 1 and 0 <= record["changed"] <= record["tensors"]
    assert record["start"] in ("converter", "percentile", "mse")
    assert "tflq: range search:" in err
    assert r["settings"]["range_search"] is True and r["settings"]["per_channel"] is False


@pytest.mark.parametrize("flags_", [{"range_estimator": "mse"}, {"selective": True},
                                    {"auto": True}])
def test_range_search_with_another_range_method_exits_2_and_writes_nothing(
        capsys, tmp_path, tiny_files, flags_):
    before = snapshot(tmp_path)
    code, _, err = run_cli(capsys, **tiny_files, out=str(tmp_path / "o"), modes="int8",
                           range_search=True, **flags_)
    assert code == 2
    assert err.count("error:") == 1 and "--range_search" in err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("flags_, message", [
    ({"adaround_bits": "4"}, "--adaround_bits needs --adaround"),
    ({"adaround": True, "adaround_iterations": 0}, "adaround_iterations must be a positive"),
    ({"adaround": True, "adaround_reg": -0.5}, "adaround_reg must be >= 0"),
])
def test_bad_adaround_flags_exit_2_and_write_nothing(capsys, tmp_path, tiny_files, flags_,
                                                     message):
    before = snapshot(tmp_path)
    code, stdout, err = run_cli(capsys, **tiny_files, out=str(tmp_path / "o"), modes="int8",
                                **flags_)
    assert code == 2 and message in err and stdout == ""
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("extra", [{"range_estimator": "mse"}, {"equalize": True},
                                   {"adaround": True, "adaround_iterations": 20}])
def test_tflq_methods_take_a_keras3_model(capsys, tmp_path, tiny_files, extra):
    # A Keras 3 model is rebuilt as tf_keras for tflq's methods; its .tflite must keep the
    # Keras 3 model's output names (the signature the evaluation reads).
    import keras

    k3 = keras.Sequential([keras.Input((8, 8, 1), name="img"),
                           keras.layers.Conv2D(4, 3, activation="relu"),
                           keras.layers.Flatten(), keras.layers.Dense(3, name="logits")])
    k3.save(tmp_path / "k3.keras")
    out = str(tmp_path / "o")
    code, _, err = run_cli(capsys, model=str(tmp_path / "k3.keras"), data=tiny_files["data"],
                           eval_data=tiny_files["eval_data"], out=out, modes="int8",
                           num_calibration_samples=40, **extra)
    assert code == 0, err
    row = load_report(out)["modes"][0]
    assert row["float_ops"] == [] and row["top1_agreement"] >= 0.9
    assert any(n.startswith("Keras 3 model rebuilt as tf_keras") for n in row["notes"])


@pytest.mark.parametrize("relu6, note", [
    (None, "; ReLU6 kept in 1 pairs, "), ("relu", "; 1 ReLU6 replaced by ReLU"),
    ("keep", "cross-layer equalization found NO pair")])
def test_equalize_relu6_flag_reaches_the_report(capsys, tmp_path, tiny_files, relu6, note):
    tf_keras.utils.set_random_seed(0)
    inp = tf_keras.Input((8, 8, 1), name="img")
    x = tf_keras.layers.ReLU(6.0)(tf_keras.layers.Conv2D(8, 3, name="c1")(inp))
    x = tf_keras.layers.Conv2D(8, 1, activation="relu", name="c2")(x)
    model = tf_keras.Model(inp, tf_keras.layers.Dense(3, name="logits")(
        tf_keras.layers.Flatten()(x)))
    model.save(tmp_path / "relu6.h5")
    out = str(tmp_path / "o")
    extra = {"equalize_relu6": relu6} if relu6 else {}
    code, _, err = run_cli(capsys, model=str(tmp_path / "relu6.h5"), data=tiny_files["data"],
                           eval_data=tiny_files["eval_data"], out=out, modes="int8",
                           equalize=True, num_calibration_samples=40, **extra)
    assert code == 0, err
    r = load_report(out)
    record = r["modes"][0]["methods"]["equalize"]
    assert r["settings"]["equalize_relu6"] == (relu6 or "bounded") == record["relu6"]
    assert any(note in n for n in r["modes"][0]["notes"]), r["modes"][0]["notes"]
    pairs = [(p["first"], p["second"]) for p in record["pairs"]]
    assert pairs == ([] if relu6 == "keep" else [("c1", "c2")])
    if relu6 != "keep":  # the float model's change is measured: none when ReLU6 is kept
        change = record["float_change"]
        assert change["top1_agreement"] == 1.0 or relu6 == "relu"
        assert change["sqnr_db"] > (60.0 if relu6 is None else 0.0)


def test_equalize_relu6_without_equalize_exits_2_and_writes_nothing(capsys, tmp_path,
                                                                     tiny_files):
    before = snapshot(tmp_path)
    code, stdout, err = run_cli(capsys, **tiny_files, out=str(tmp_path / "o"), modes="int8",
                                equalize_relu6="relu")
    assert code == 2 and "--equalize_relu6 needs --equalize" in err and stdout == ""
    assert snapshot(tmp_path) == before


def test_calibration_steps_show_progress_per_layer(capsys, tmp_path, tiny_files):
    """Without --quiet, AdaRound, per-tensor weight clipping and bias correction each report
    their layers on stderr (one line per stage when stderr is not a terminal)."""
    code, _, err = run_cli(capsys, **tiny_files, out=str(tmp_path / "a"), modes="int8",
                           equalize=True, adaround=True, adaround_iterations=5,
                           per_tensor=True, quiet=False, num_calibration_samples=20)
    assert code == 0
    layers = len(load_report(str(tmp_path / "a"))["modes"][0]["methods"]["adaround"]["layers"])
    assert layers >= 2
    assert re.search(rf"^AdaRound 8-bit: {layers} layers in [\d.]+ s$", err, re.M)
    assert re.search(rf"^weight clipping: {layers} layers in [\d.]+ s$", err, re.M)
    assert "bias correction:" not in err  # left to AdaRound
    code, _, err = run_cli(capsys, **tiny_files, out=str(tmp_path / "b"), modes="int8",
                           equalize=True, quiet=False, num_calibration_samples=20)
    assert code == 0 and re.search(r"^bias correction: \d+ layers? in [\d.]+ s$", err, re.M)
    assert "AdaRound" not in err and "weight clipping:" not in err

"""Pruning/clustering + quantization: the structure survives into the .tflite (checked by
reading the int8 weights through the interpreter with numpy), size accounting, the CLI, and
bad input refused with nothing written."""

import gzip
import json
import os
import re

import numpy as np
import pytest
from absl.testing import flagsaver
from ai_edge_litert.interpreter import Interpreter
from conftest import snapshot, tiny_data

from pipelines import compress as cli
from tflq import tflite_inspect
from tflq.jobs import compress as compress_job
from tflq.models import tf_keras
from tflq.quant import compress, qat

L = tf_keras.layers


def build_model():
    """Conv(1→8)-BN-ReLU, Conv(8→8), Dense(8·4·4·... → 3): the second conv and the Dense
    have input channels divisible by 4 (2:4-capable); the first conv does not."""
    tf_keras.utils.set_random_seed(0)
    model = tf_keras.Sequential([
        tf_keras.Input((8, 8, 1), name="img"),
        L.Conv2D(8, 3, use_bias=False, name="first"),
        L.BatchNormalization(), L.ReLU(),
        L.Conv2D(8, 3, activation="relu", name="second"),
        L.Flatten(), L.Dense(3, name="logits"),
    ])
    model.compile("adam", tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = tiny_data(128)
    model.fit(x, y, epochs=3, batch_size=16, verbose=0)
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("compress")
    build_model().save(root / "m.keras")
    x, y = tiny_data(192, seed=5)
    np.savez(root / "train.npz", x=x[:128], y=y[:128])
    np.savez(root / "eval.npz", x=x[128:], y=y[128:])
    return root


def job(files, out, **kw):
    settings = {"epochs": 1, "batch_size": 32, "latency_runs": 2, "verbose": 0, **kw}
    return compress_job.CompressJob(model=str(files / "m.keras"), train_data=str(files / "train.npz"),
                                eval_data=str(files / "eval.npz"), out=str(out), **settings)


def tflite_weights(path) -> dict:
    """{op name#index: int8 weight codes} read straight from the interpreter."""
    interp = Interpreter(model_path=str(path))
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    found = {}
    for op in interp._get_ops_details():
        if op["op_name"] in ("CONV_2D", "FULLY_CONNECTED"):
            index = int(op["inputs"][1])
            assert tensors[index]["dtype"] == np.int8
            found[f"{op['op_name']}#{op['index']}"] = interp.get_tensor(index)
    return found


def _only_tflite(out):
    names = [n for n in os.listdir(out) if n.endswith(".tflite")]
    assert len(names) == 1
    return out / names[0]


@pytest.mark.parametrize("quantization", ["qat", "ptq"])
def test_pruned_int8_weights_keep_their_sparsity(files, tmp_path, quantization):
    report = compress_job.run_compress_job(job(files, tmp_path / "o", sparsity=0.5,
                                           quantization=quantization)).report
    weights = tflite_weights(_only_tflite(tmp_path / "o"))
    assert len(weights) == 3
    # every pruned layer holds at least 50% zero codes in the shipped int8 tensor
    for codes in weights.values():
        assert np.mean(codes == 0) >= 0.5 - 1e-9
    c = report["compression"]
    assert c["layers"] == ["first", "logits", "second"]
    expected = sum(int(np.sum(w == 0)) for w in weights.values()) / sum(
        w.size for w in weights.values())
    assert c["weight_sparsity"] == pytest.approx(expected)
    content = _only_tflite(tmp_path / "o").read_bytes()
    assert c["size_bytes"] == len(content)
    assert gzip.decompress(gzip.compress(content, 9, mtime=0)) == content
    assert c["gzip_bytes"] == len(gzip.compress(content, 9, mtime=0))
    assert c["sparse_encoding"]["size_bytes"] > 0
    assert report["modes"][0]["float_ops"] == []
    assert "## Compression" in (tmp_path / "o" / "report.md").read_text()
    assert not any("left uncompressed" in n for n in report["modes"][0]["notes"])  # all pruned


def test_two_four_structure_holds_in_the_tflite(files, tmp_path):
    report = compress_job.run_compress_job(job(files, tmp_path / "o", structure="2:4",
                                           layers="^(second|logits)$")).report
    weights = tflite_weights(_only_tflite(tmp_path / "o"))
    compliant = 0
    for codes in weights.values():
        if codes.shape[-1] % 4:
            continue  # the first conv: one input channel, not pruned
        groups = (codes == 0).reshape(-1, 4).sum(axis=1)
        assert np.all(groups >= 2)
        compliant += 1
    assert compliant == 2
    flags = [w.get("two_four_compliant") for w in report["compression"]["weights"]]
    assert flags.count(True) == 2


def test_cqat_keeps_at_most_k_int8_values_per_channel(files, tmp_path):
    report = compress_job.run_compress_job(job(files, tmp_path / "o", clusters=4)).report
    weights = tflite_weights(_only_tflite(tmp_path / "o"))
    for codes in weights.values():
        per_channel = codes.reshape(codes.shape[0], -1)
        assert max(np.unique(row).size for row in per_channel) <= 4
    assert max(w["max_unique_per_channel"] for w in report["compression"]["weights"]) <= 4


def test_preserve_structure_projects_back_to_zeros_and_cluster_means():
    inp = tf_keras.Input((4,))
    model = tf_keras.Model(inp, L.Dense(2, name="d")(inp))
    kernel = np.array([[0.0, 1.0], [0.5, 1.0], [0.5, 0.0], [0.0, 2.0]], np.float32)
    model.get_layer("d").set_weights([kernel, np.zeros(2, np.float32)])
    q = qat.quantize_model(model)
    keep = compress.PreserveStructure(q, {"d"}, clusters=True)
    variable = compress.kernel_variable(q.get_layer("quant_d"))
    noisy = kernel + np.array([[0.3, 0.1], [0.1, -0.1], [0.3, 0.2], [0.1, 0.4]], np.float32)
    variable.assign(noisy)
    keep.apply()
    got = variable.numpy()
    # zeros stay zero; column 0's two 0.5 weights share their mean (0.6 + 0.8)/2,
    # column 1's two 1.0 weights share (1.1 + 0.9)/2, the 2.0 weight keeps its own 2.4.
    expected = np.array([[0.0, 1.0], [0.7, 1.0], [0.7, 0.0], [0.0, 2.4]], np.float32)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_select_layers_by_type_and_pattern(files):
    model = tf_keras.models.load_model(files / "m.keras", compile=False)
    chosen = compress.select_layers(model, job(files, "x", sparsity=0.5, layers="^s"))
    assert [layer.name for layer in chosen] == ["second"]
    chosen = compress.select_layers(model, job(files, "x", sparsity=0.5,
                                               layer_types=("Dense",)))
    assert [layer.name for layer in chosen] == ["logits"]


def test_gzip_size_is_gzip_minus_9():
    content = bytes(1000) + bytes(range(256))
    assert tflite_inspect.gzip_size(content) == len(gzip.compress(content, 9, mtime=0)) < len(content)


BAD_JOBS = {
    "negative sparsity": ({"sparsity": -0.1}, r"sparsity must be in \[0, 1\)"),
    "sparsity one": ({"sparsity": 1.0}, r"sparsity must be in \[0, 1\)"),
    "one cluster": ({"clusters": 1}, "clusters must be at least 2"),
    "negative clusters": ({"clusters": -3}, "clusters must be at least 2"),
    "too many clusters": ({"clusters": 300}, "clusters must be at most 256"),
    "unknown structure": ({"structure": "4:8"}, "Unknown structure '4:8'"),
    "2:4 with other sparsity": ({"structure": "2:4", "sparsity": 0.8}, "2:4 structure means 50%"),
    "unknown schedule": ({"schedule": "cubic"}, "Unknown schedule 'cubic'"),
    "unknown quantization": ({"quantization": "int4"}, "Unknown quantization 'int4'"),
    "unknown scheme": ({"scheme": "int3"}, "Unknown scheme 'int3'"),
    "bad regex": ({"layers": "("}, "not a valid regex"),
    "unknown layer type": ({"layer_types": ("LSTM",)}, "each must be one of"),
    "zero epochs": ({"epochs": 0}, "epochs must be positive"),
    "bad learning rate": ({"learning_rate": 0.0}, "learning_rate must be > 0"),
    "zero qat epochs": ({"qat_epochs": 0}, "qat_epochs must be positive"),
}


@pytest.mark.parametrize("case", sorted(BAD_JOBS))
def test_bad_settings_are_refused(files, case):
    values, message = BAD_JOBS[case]
    with pytest.raises(ValueError, match=message):
        job(files, "never", **values)


def run_cli(capsys, **values):
    with flagsaver.flagsaver(**values):
        code = cli.main(["compress"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def base(files, out, **extra):
    return {"model": str(files / "m.keras"), "train_data": str(files / "train.npz"),
            "eval_data": str(files / "eval.npz"), "out": str(out), "epochs": 1,
            "batch_size": 32, **extra}


BAD_CLI = {
    "sparsity out of range": ({"sparsity": 1.5}, r"sparsity must be in \[0, 1\)"),
    "clusters below two": ({"clusters": 1}, "clusters must be at least 2"),
    "2:4 on a one-channel conv": ({"structure": "2:4"},
                                  r"Layer 'first' \(Conv2D, 1 input channel\(s\)\) cannot hold "
                                  "2:4 sparsity"),
    "2:4 on an unsupported type": ({"structure": "2:4", "layer_types": ["Conv2DTranspose"]},
                                   r"2:4 sparsity is supported for \['Conv2D', 'Dense'\], not "
                                   r"\['Conv2DTranspose'\]"),
    "pattern matches nothing": ({"sparsity": 0.5, "layers": "^nope$"}, "No layer of type"),
    "too few weights for clusters": ({"clusters": 100, "layers": "^first$"},
                                     "has 72 weights, fewer than clusters=100"),
    "missing model": ({"model": "/no/m.keras"}, "Model path not found"),
    "missing train data": ({"train_data": None}, "--train_data is required"),
    "unknown schedule": ({"sparsity": 0.5, "schedule": "cubic"}, "Unknown schedule"),
    "unknown quantization": ({"quantization": "fp16"}, "Unknown quantization"),
}


@pytest.mark.parametrize("case", sorted(BAD_CLI))
def test_cli_bad_input_exits_2_and_writes_nothing(capsys, files, tmp_path, case):
    values, message = BAD_CLI[case]
    before = snapshot(files)
    code, _, err = run_cli(capsys, **{**base(files, tmp_path / "out"), **values})
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert re.search(message, err), err
    assert snapshot(files) == before and not os.path.exists(tmp_path / "out")


def test_cli_runs_the_chain_and_prints_the_accounting(capsys, files, tmp_path):
    code, out, err = run_cli(capsys, **base(
        files, tmp_path / "out", sparsity=0.5, schedule="polynomial", clusters=4,
        layers="^(second|logits)$", layer_types=["Conv2D", "Dense"], quantization="qat",
        scheme="default_int8", learning_rate=1e-3, qat_learning_rate=1e-4, qat_epochs=2,
        distill=True,
        num_train_samples=96, num_calibration_samples=50, seed=1))
    assert code == 0, err
    assert ("prune 50% (polynomial) → cluster k=4 → QAT (default_int8, structure preserved, "
            "distilled from the float model)") in out
    # --layers left the first conv out: said on stderr, with its share of the kernel weights
    model = tf_keras.models.load_model(files / "m.keras", compile=False)
    kernels = {layer.name: layer.kernel.numpy().size for layer in model.layers
               if hasattr(layer, "kernel")}
    share = kernels["first"] / sum(kernels.values())
    assert (f"tflq: left uncompressed: 1 layer(s) holding {share:.1%} of the kernel weights: "
            "first (Conv2D, not matching --layers); tflq prunes/clusters the kernels of "
            "--layer_types ['Conv2D', 'Dense']") in err
    assert re.search(r"size [\d,]+ B, gzip [\d,]+ B", out)
    report = (tmp_path / "out" / "report.json").read_text()
    assert '"num_train_samples": 96' in report and '"seed": 1' in report
    history = json.loads(report)["compression"]["history"]
    assert [len(history[k]["loss"]) for k in ("prune", "cluster", "qat")] == [1, 1, 2]
    assert json.loads(report)["settings"]["distill"] is True
    weights = tflite_weights(_only_tflite(tmp_path / "out"))
    for name, codes in weights.items():
        if codes.shape[-1] == 1:
            continue  # first conv: not selected
        assert np.mean(codes == 0) >= 0.5 - 1e-9, name
        per_channel = codes.reshape(codes.shape[0], -1)
        # sparsity-preserving clustering: zero plus at most 4 centroids per channel
        assert max(np.unique(row).size for row in per_channel) <= 5, name


def test_preserve_structure_keeps_layer_wide_clusters_through_folding_scales():
    inp = tf_keras.Input((3,))
    model = tf_keras.Model(inp, L.Dense(2, name="d")(inp))
    centroids = np.array([[0.5, -1.0], [-1.0, 0.0], [0.5, 0.5]], np.float32)  # 3 clusters
    gain = np.array([2.0, 0.5], np.float32)          # a folded BatchNorm scale per channel
    model.get_layer("d").set_weights([centroids * gain, np.zeros(2, np.float32)])
    q = qat.quantize_model(model)
    keep = compress.PreserveStructure(q, {"d"}, clusters=True, reference={"d": centroids})
    variable = compress.kernel_variable(q.get_layer("quant_d"))
    noise = np.array([[0.2, 0.1], [0.0, 0.3], [-0.2, 0.05]], np.float32)
    variable.assign(centroids * gain + noise)
    keep.apply()
    unit = variable.numpy() / gain
    # numpy reference: per cluster, the mean of (perturbed weight / its channel scale)
    perturbed = (centroids * gain + noise) / gain
    expected = centroids.copy()
    for value in (0.5, -1.0):
        members = (centroids == value)
        expected[members] = perturbed[members].mean()
    expected[centroids == 0] = 0.0  # the zero weight is pruned structure and stays 0
    np.testing.assert_allclose(unit, expected, rtol=1e-5, atol=1e-6)
    assert np.unique(np.round(unit, 6)).size <= 3  # layer-wide: one set for both channels

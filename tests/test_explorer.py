"""Model Explorer overlays: node data written with the package's builder classes, read back
with them, every node id in the graph Model Explorer's own TFLite adapter builds; the CLI's
bad inputs; the server on loopback (slow)."""

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import dacite
import pytest
from absl.testing import flagsaver
from conftest import REPO, snapshot
from model_explorer.builtin_tflite_flatbuffer_adapter import BuiltinTfliteFlatbufferAdapter
from model_explorer.node_data_builder import GraphNodeData, ModelNodeData

from pipelines import explore as cli
from tflq import explorer
from tflq.jobs import convert


@pytest.fixture(scope="module")
def converted(tmp_path_factory, tiny_keras_path):
    import numpy as np
    from conftest import tiny_data

    folder = tmp_path_factory.mktemp("explore")
    x, y = tiny_data(60, seed=2)
    np.savez(folder / "data.npz", x=x, y=y)
    out = folder / "out"
    job = convert.ConvertJob(model=tiny_keras_path, data=str(folder / "data.npz"), out=str(out),
                             modes=("float32", "int8", "int16x8"), num_calibration_samples=30,
                             latency_runs=2, layer_error_samples=5, progress=False)
    assert convert.run_job(job).exit_code == 0
    return out


def run_cli(capsys, **values):
    with flagsaver.flagsaver(**values):
        code = cli.main(["explore"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("mode", ["int8", "int16x8"])
def test_node_data_loads_with_model_explorer_classes_and_ids_exist(capsys, converted, mode):
    code, out, err = run_cli(capsys, report=str(converted / "report.json"), mode=mode,
                             write_only=True)
    assert code == 0, err
    report = json.load(open(converted / "report.json"))
    row = next(m for m in report["modes"] if m["mode"] == mode)
    tflite = converted / row["path"]
    graph = BuiltinTfliteFlatbufferAdapter().convert(str(tflite), {})["graphCollections"][0]
    graph = graph.graphs[0]
    node_ids = {node["id"] for node in graph["nodes"]}
    for view, field in explorer.VIEWS.items():
        path = converted / f"{tflite.stem}.sqnr_{view}.json"
        assert str(path) in out
        raw = json.load(open(path))
        # Read back into Model Explorer's own dataclasses; writing them again gives the file.
        loaded = ModelNodeData(graphsData={
            key: dacite.from_dict(data_class=GraphNodeData, data=value)
            for key, value in raw.items()})
        assert json.loads(loaded.to_json_string()) == raw
        (graph_id, data), = loaded.graphsData.items()
        assert graph_id == graph["id"]
        assert set(data.results) <= node_ids and len(data.results) == len(row["layers"])
        for layer in row["layers"]:  # the node id is the op index; the value its SQNR
            assert data.results[str(layer["index"])].value == pytest.approx(
                min(float(layer[field]), explorer.SQNR_CAP_DB))
            node = next(n for n in graph["nodes"] if n["id"] == str(layer["index"]))
            assert node["label"] == layer["op"].lower()
        bounds = [t.value for t in data.thresholds]
        assert bounds == sorted(bounds) and bounds[-1] == explorer.SQNR_CAP_DB


def test_node_data_rejects_a_mode_without_layers_and_an_unknown_view(converted):
    report = json.load(open(converted / "report.json"))
    float32 = next(m for m in report["modes"] if m["mode"] == "float32")
    with pytest.raises(ValueError, match="has no per-layer error"):
        explorer.node_data(float32, "main", "cumulative")
    with pytest.raises(ValueError, match=r"Unknown view 'depth'. Available: \['cumulative', 'layer'\]"):
        explorer.node_data(report["modes"][1], "main", "depth")


def test_missing_model_explorer_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "model_explorer", None)
    with pytest.raises(ValueError, match=r"pip install 'tflq\[explore\]'"):
        explorer.node_data({"mode": "int8", "layers": []}, "main", "layer")


def _bad(tmp_path, converted):
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "other.json").write_text('{"findings": []}')


BAD = {
    "missing report": ({"report": "{tmp}/nope.json"}, "Report not found"),
    "not json": ({"report": "{tmp}/broken.json"}, "is not a tflq report.json"),
    "not a report": ({"report": "{tmp}/other.json"}, r"not a tflq report.json \(no 'modes'\)"),
    "unknown mode": ({"mode": "int4"}, r"Unknown mode 'int4' in the report. Available: "),
    "float32 has no layers": ({"mode": "float32"}, "has no per-layer error"),
    "bad port": ({"port": 0}, r"--port must be in 1..65535"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_exits_2_and_writes_nothing(capsys, tmp_path, converted, case):
    _bad(tmp_path, converted)
    before, before_out = snapshot(tmp_path), snapshot(converted)
    values, message = BAD[case]
    flags_ = {"report": str(converted / "report.json"), "mode": "int8", "write_only": True}
    flags_.update({k: v.format(tmp=tmp_path) if isinstance(v, str) else v
                   for k, v in values.items()})
    code, out, err = run_cli(capsys, **flags_)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert re.search(message, err), err
    assert snapshot(tmp_path) == before and snapshot(converted) == before_out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read()


@pytest.mark.slow
def test_server_serves_model_explorer_with_the_overlay_on_loopback(converted):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.explore", f"--report={converted / 'report.json'}",
         "--mode=int8", f"--port={port}"], cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONPATH": REPO})
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                status, page = _get(base + "/")
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() < deadline, "Model Explorer did not start in 120 s"
                time.sleep(1)
        assert status == 200 and b"Model Explorer" in page
        node_data = converted / "tiny_int8.sqnr_layer.json"
        query = urllib.parse.urlencode({"path": str(node_data)})
        status, body = _get(f"{base}/api/v1/read_text_file?{query}")
        assert status == 200 and json.loads(body)["content"] == node_data.read_text()
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=30)
    # The address printed for the user carries the model and both overlays.
    address = re.search(r"http://127\.0\.0\.1:\d+/\?data=(\S+)", output).group(1)
    data = json.loads(urllib.parse.unquote(address))
    assert data["models"] == [{"url": str(converted / "tiny_int8.tflite")}]
    assert data["nodeData"] == [str(converted / "tiny_int8.sqnr_cumulative.json"),
                                str(node_data)]

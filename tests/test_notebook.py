"""examples/quickstart.ipynb on a real Jupyter kernel (nbclient + ipykernel) running this
checkout's tflq with the test environment's Python: a one-cell smoke run in the default
suite, the whole notebook in the slow suite. The notebook is kept with its outputs stripped."""

import html
import json
import os
import sys

import nbformat
import pytest
from nbclient import NotebookClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "examples", "quickstart.ipynb")
KERNEL = "tflq-test"
CELL_TIMEOUT_S = 900  # the QAT cell on 2 shared cores


@pytest.fixture()
def kernel(tmp_path, monkeypatch):
    """A kernelspec in a temp dir that runs this Python with this checkout first on the path."""
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "tflq test", "language": "python",
        "env": {"PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"}}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    work = tmp_path / "work"
    work.mkdir()
    return str(work)


def _run(nb, workdir):
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name=KERNEL,
                            resources={"metadata": {"path": workdir}})
    client.execute()
    return nb


def _text(cell) -> str:
    parts = []
    for output in cell.outputs:
        if output.output_type == "stream" and output.name == "stdout":
            parts.append(output.text)
        elif output.output_type in ("execute_result", "display_data"):
            parts.append(output.data.get("text/plain", ""))
    return "".join(parts)


def test_the_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)


def test_smoke_cell_on_a_real_kernel(kernel):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import sys, numpy as np, tflq\n"
        "from tflq.models import tf_keras\n"
        "m = tf_keras.Sequential([tf_keras.Input((16,)), tf_keras.layers.Dense(4)])\n"
        "x = np.random.default_rng(0).normal(size=(40, 16)).astype('float32')\n"
        "r = tflq.convert(m, x, modes=('int8',), num_calibration_samples=20, latency_runs=1,\n"
        "                 progress=False, layer_error_samples=0)\n"
        "print(tflq.__file__, sys.executable)\n"
        "r")])
    cell = _run(nb, kernel).cells[0]
    assert not [o for o in cell.outputs if o.output_type == "error"]
    printed = _text(cell)
    assert os.path.join(REPO, "tflq", "__init__.py") in printed  # this checkout's tflq
    assert sys.executable in printed  # the test environment's Python
    shown = [o for o in cell.outputs if o.output_type == "execute_result"][0]
    page = html.unescape(shown.data["text/html"])  # report.html inside the frame's srcdoc
    assert '<table id="modes">' in page and "<b>int8</b>" in page
    assert "<tflq convert result: <in-memory model>, modes: int8" in shown.data["text/plain"]


@pytest.mark.slow
def test_quickstart_notebook_runs_end_to_end(kernel):
    nb = _run(nbformat.read(NOTEBOOK, as_version=4), kernel)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert errors == []
    code = [c for c in nb.cells if c.cell_type == "code"]
    converted = [c for c in code if "converted = tflq.convert" in c.source][0]
    page = html.unescape([o for o in converted.outputs
                          if o.output_type == "execute_result"][0].data["text/html"])
    assert '<table id="modes">' in page
    for mode in ("float32", "float16", "dynamic", "int8", "int16x8"):
        assert f"<b>{mode}</b>" in page
    compared = _text([c for c in code if "QAT pow2 int8" in c.source][0])
    assert "QAT pow2 int8" in compared and "convert int8" in compared
    saved = os.listdir(os.path.join(kernel, "quickstart_out", "convert"))
    assert "report.json" in saved and "fashion_mnist_cnn_int8.tflite" in saved
    assert "fashion_mnist_cnn_qat_int8.tflite" in os.listdir(
        os.path.join(kernel, "quickstart_out", "qat_pow2"))

"""What the commands print: only their own lines (TensorFlow's, the converter's and LiteRT's
chatter kept in <out>/tflq.log), progress as bars on a terminal and one line per stage
elsewhere, and the installed tflq-* commands."""

import fcntl
import json
import logging
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import warnings

import pytest
from conftest import REPO, snapshot

from tflq import console

# Lines tflq writes on stderr itself: a stage with its duration, and the contract's lines.
STAGE_LINE = re.compile(r"^[a-z][a-z ]*: \d+ [a-z]+ in \d+\.\d s$")
TFLQ_LINE = re.compile(r"^(error|internal error|quality gate failed|warning): ")
# The bundled example, small: 20 calibration and 40 evaluation images, two modes.
SMALL = ["--num_calibration_samples", "20", "--num_eval_samples", "40", "--latency_runs", "3",
         "--modes", "float32,int8"]
SCRIPTS = ("tflq-convert", "tflq-qat", "tflq-compress", "tflq-batch", "tflq-preflight",
           "tflq-device")


def script(name):
    return os.path.join(os.path.dirname(sys.executable), name)


def convert_example(out, *extra, stderr=subprocess.PIPE):
    return subprocess.run([sys.executable, "-m", "pipelines.convert", *SMALL, "--out", str(out),
                           *extra], cwd=REPO, stdout=subprocess.PIPE, stderr=stderr, text=True,
                          timeout=600)


def test_the_bundled_example_prints_only_its_own_lines(tmp_path):
    out = tmp_path / "out"
    result = convert_example(out)
    assert result.returncode == 0, result.stderr
    foreign = [ln for ln in result.stderr.splitlines()
               if not (STAGE_LINE.match(ln) or TFLQ_LINE.match(ln))]
    assert foreign == [], "stderr lines tflq did not write"
    # A latency warning ("int8: 1.3× slower than float32") depends on the shared machine's
    # noise over 3 runs; any other warning (float ops, islands) would be a regression.
    lines = [ln for ln in result.stderr.splitlines()
             if not re.fullmatch(r"warning: int8: [0-9.]+× slower than float32 \(.*\)", ln)]
    stages = [ln.split(":")[0] for ln in lines]
    assert stages == ["check eval data", "check calibration data", "convert", "validate"]
    assert "\r" not in result.stderr  # not a terminal: no bars
    written = sorted(p.name for p in out.iterdir() if p.name != "tflq.log")  # log comes last
    assert written == ["fashion_mnist_cnn_float32.tflite", "fashion_mnist_cnn_int8.tflite",
                       "report.html", "report.json", "report.md", "report.png"]
    assert "| int8 |" in result.stdout and f"wrote 6 files to {out}" in result.stdout
    assert "WARNING" not in result.stdout and "INFO" not in result.stdout
    # Nothing is lost: what TensorFlow, the converter and LiteRT printed is in tflq.log.
    log = (out / "tflq.log").read_text()
    assert log.startswith("# python -m pipelines.convert --num_calibration_samples 20")
    assert "absl::InitializeLog" in log or "XNNPACK" in log
    assert len(log.splitlines()) > 3


def test_verbose_shows_the_chatter_live_and_keeps_no_log(tmp_path):
    out = tmp_path / "out"
    result = convert_example(out, "--verbose", "--modes", "int8")
    assert result.returncode == 0, result.stderr
    foreign = [ln for ln in result.stderr.splitlines()
               if not (STAGE_LINE.match(ln) or TFLQ_LINE.match(ln))]
    assert foreign  # the very lines the quiet run keeps in tflq.log
    assert not (out / "tflq.log").exists()


def test_bad_input_leaves_an_existing_folder_byte_identical(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.tflite").write_bytes(b"an earlier model")
    before = snapshot(out)
    result = subprocess.run([sys.executable, "-m", "pipelines.convert", "--model",
                             str(tmp_path / "missing.keras"), "--data", "x.npz", "--out", str(out)],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.startswith("error: Model path not found") and result.stderr.count("\n") == 1
    assert snapshot(out) == before  # no tflq.log either


def test_progress_bars_on_a_terminal(tmp_path):
    master, slave = pty.openpty()
    # A real terminal has a size; tqdm draws nothing on a 0-column one.
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.convert", *SMALL,
                             "--out", str(tmp_path / "out")], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    stdout = proc.stdout.read().decode()
    assert proc.wait(timeout=600) == 0
    terminal = b"".join(chunks).decode(errors="replace")
    assert "\r" in terminal and re.search(r"convert: +\d+%\|", terminal)  # tqdm bars
    assert not any(STAGE_LINE.match(ln.strip()) for ln in terminal.splitlines())
    assert "absl::InitializeLog" not in terminal and "XNNPACK" not in terminal
    assert "| int8 |" in stdout


def test_progress_style_lines_and_bars(capsys):
    show = console.progress("lines", "convert", 3, unit="mode")
    assert list(show(iter("abc"))) == ["a", "b", "c"]
    err = capsys.readouterr().err
    assert STAGE_LINE.match(err.strip()) and err.startswith("convert: 3 modes in ")
    show = console.progress(True, "check", 1)  # capsys: stderr is no terminal → a line
    assert list(show([7])) == [7]
    assert capsys.readouterr().err.startswith("check: 1 sample in ")
    show = console.progress("bars", "validate", 2, unit="batch")  # --progress: bars anyway
    assert list(show([1, 2])) == [1, 2]
    err = capsys.readouterr().err
    assert "\rvalidate:   0%|" in err and "0/2 [" in err  # tqdm's bar
    assert list(console.progress("lines", "validate", 2, unit="batch")([1, 2])) == [1, 2]
    assert capsys.readouterr().err.startswith("validate: 2 batches in ")
    assert console.progress(False, "x", 1) is None
    with pytest.raises(ValueError, match="progress must be"):
        console.progress("sometimes", "x", 1)


def test_output_capture_keeps_descriptor_writes_warnings_and_logs(capfd):
    with console.OutputCapture() as capture:
        assert console.active_capture() is capture
        os.write(1, b"C++ stdout line\n")
        os.write(2, b"C++ stderr line\n")
        print("table row")
        print("error: a tflq line", file=sys.stderr)
        warnings.warn("a library warning", FutureWarning, stacklevel=1)
        logging.getLogger("tensorflow").warning("a TensorFlow log record")
    assert console.active_capture() is None
    captured = capfd.readouterr()
    assert captured.out == "table row\n"
    assert captured.err == "error: a tflq line\n"
    log = capture.text().decode()
    for line in ("C++ stdout line", "C++ stderr line", "a library warning",
                 "a TensorFlow log record"):
        assert line in log
    os.write(2, b"after the capture\n")  # the descriptors are back
    assert capfd.readouterr().err == "after the capture\n"


def test_output_capture_gives_a_handler_on_real_stderr_its_stream_back():
    # Found by the fuzz tests: a handler already writing to sys.__stderr__ came back from a
    # capture with stream None (setStream returns None for an unchanged stream), and every
    # later record on it printed a "--- Logging error ---" traceback.
    logger = logging.getLogger("tflq-test-capture")
    handler = logging.StreamHandler(sys.__stderr__)
    logger.addHandler(handler)
    try:
        for _ in range(2):
            with console.OutputCapture():
                logger.warning("inside the capture")
            assert handler.stream is sys.__stderr__
    finally:
        logger.removeHandler(handler)


def test_installed_commands_exist():
    for name in SCRIPTS:
        assert os.access(script(name), os.X_OK), f"{name} missing: run pip install -e ."


def test_installed_convert_prints_versions_and_converts(tmp_path):
    result = subprocess.run([script("tflq-convert"), "--version"], capture_output=True,
                            text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("tflq ")
    out = tmp_path / "out"
    result = subprocess.run([script("tflq-convert"), *SMALL, "--modes", "int8", "--out", str(out)],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert all(STAGE_LINE.match(ln) for ln in result.stderr.splitlines()), result.stderr
    report = json.load(open(out / "report.json"))
    assert [m["mode"] for m in report["modes"]] == ["int8"] and report["modes"][0]["float_ops"] == []
    assert (out / "tflq.log").read_text().startswith("# tflq-convert ")
    result = subprocess.run([script("tflq-batch"), "--workers", "x"], capture_output=True,
                            text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.startswith("error: flag --workers=x")

"""android_demo/: what can be checked without Google's Maven: resources and manifest compile
and link with Debian's aapt2, the Kotlin code uses only resources that exist, and the assets
exporter ships exactly the model the report names."""

import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from absl.testing import flagsaver
from conftest import EXAMPLE_DIR, REPO, snapshot
from PIL import Image

from pipelines import demo_assets
from tflq.data import read_idx

DEMO = os.path.join(REPO, "android_demo")
APP = os.path.join(DEMO, "app")
FRAMEWORK_RES = "/usr/share/android-framework-res/framework-res.apk"
EVAL = os.path.join(EXAMPLE_DIR, "evaluation-images-idx3-ubyte.gz")


def _namespace():
    text = open(os.path.join(APP, "build.gradle.kts")).read()
    return re.search(r'namespace = "([\w.]+)"', text).group(1)


def test_resources_and_manifest_link_with_aapt2(tmp_path):
    aapt2 = shutil.which("aapt2")
    assert aapt2, "aapt2 missing: apt-get install -y android-sdk-build-tools"
    assert os.path.exists(FRAMEWORK_RES), "apt-get install -y android-framework-res"
    res_zip = tmp_path / "res.zip"
    subprocess.run([aapt2, "compile", "--dir", os.path.join(APP, "src/main/res"), "-o",
                    str(res_zip)], check=True, capture_output=True, timeout=120)
    # Gradle's manifest merger injects the namespace as the package; do the same.
    manifest = open(os.path.join(APP, "src/main/AndroidManifest.xml")).read()
    merged = tmp_path / "AndroidManifest.xml"
    merged.write_text(manifest.replace("<manifest ", f'<manifest package="{_namespace()}" ', 1))
    gen = tmp_path / "gen"
    result = subprocess.run([aapt2, "link", "-o", str(tmp_path / "app.apk"), "-I", FRAMEWORK_RES,
                             "--manifest", str(merged), "--java", str(gen), str(res_zip)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    r_java = open(gen / "dev" / "tflq" / "demo" / "R.java").read()
    kotlin = "".join(open(os.path.join(root, f)).read()
                     for root, _, files in os.walk(os.path.join(APP, "src")) for f in files
                     if f.endswith(".kt"))
    used = set(re.findall(r"R\.(id|layout|string)\.(\w+)", kotlin))
    assert used, "the Kotlin sources reference no resources"
    for kind, name in used:
        assert re.search(rf"class {kind} \{{[^}}]*\b{name}\b", r_java, re.S), f"R.{kind}.{name}"


def test_kotlin_reads_the_assets_the_exporter_writes(tmp_path):
    # The names the app's Kotlin code opens are the names export_assets really writes.
    kotlin = open(os.path.join(APP, "src/main/java/dev/tflq/demo/Classifier.kt")).read()
    names = {key: re.search(rf'{key} = "([^"]+)"', kotlin).group(1)
             for key in ("MODEL_ASSET", "LABELS_ASSET", "SAMPLES_DIR")}
    assets = tmp_path / "assets"
    written = demo_assets.export_assets(_report(tmp_path), "int8", str(assets), EVAL, 2)
    relative = {os.path.relpath(p, assets) for p in written}
    assert names["MODEL_ASSET"] in relative and names["LABELS_ASSET"] in relative
    samples = [p for p in relative if os.path.dirname(p) == names["SAMPLES_DIR"]]
    assert len(samples) == 2 and all(p.endswith(".png") for p in samples)
    assert (assets / names["MODEL_ASSET"]).read_bytes() == b"int8 model bytes"
    gradle = open(os.path.join(APP, "build.gradle.kts")).read()
    assert "pipelines.demo_assets" in gradle and 'noCompress += "tflite"' in gradle


def _report(tmp_path, passed=True):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "m_int8.tflite").write_bytes(b"int8 model bytes")
    report = {"modes": [{"mode": "int8", "path": "m_int8.tflite"}],
              "gates": {"passed": passed, "failures": [] if passed else ["int8: drop"]}}
    (folder / "report.json").write_text(json.dumps(report))
    return str(folder / "report.json")


def test_export_assets(tmp_path):
    assets = tmp_path / "assets"
    written = demo_assets.export_assets(_report(tmp_path), "int8", str(assets), EVAL, 3)
    assert len(written) == 5
    assert (assets / "model.tflite").read_bytes() == b"int8 model bytes"
    assert (assets / "labels.txt").read_text().splitlines()[9] == "Ankle boot"
    labels = read_idx(EVAL.replace("images-idx3", "labels-idx1"))[:3]
    images = read_idx(EVAL)[:3]
    names = sorted(os.listdir(assets / "samples"))
    for i, name in enumerate(names):
        slug = demo_assets.FASHION_MNIST_LABELS[labels[i]].lower().replace("/", "_")
        assert name == f"{i:03d}_{slug.replace(' ', '_')}.png"
        np.testing.assert_array_equal(np.asarray(Image.open(assets / "samples" / name)), images[i])


def test_export_assets_cli_and_bad_input(capsys, tmp_path):
    report = _report(tmp_path)
    assets = tmp_path / "assets"
    with flagsaver.flagsaver(report=report, mode="int8", assets=str(assets), num_samples=1,
                             samples=EVAL):
        assert demo_assets.main(["x"]) == 0
    assert "wrote 3 files" in capsys.readouterr().out
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("a\nb\n")
    before = snapshot(assets)
    for values, message in [
        ({"report": str(tmp_path / "none.json")}, "Report not found"),
        ({"mode": "float16"}, "has no 'float16' model"),
        ({"num_samples": -1}, "num_samples must be >= 0"),
        ({"samples": str(tmp_path / "nope-images-idx3-ubyte")}, "cannot be read"),
    ]:
        with flagsaver.flagsaver(**{"report": report, "mode": "int8", "assets": str(assets),
                                    "samples": EVAL, **values}):
            assert demo_assets.main(["x"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and re.search(message, err), err
    assert snapshot(assets) == before
    failed = _report(tmp_path / "f", passed=False) if os.makedirs(tmp_path / "f") is None else None
    with pytest.raises(ValueError, match="failed its quality gates"):
        demo_assets.export_assets(failed, "int8", str(assets), EVAL, 1)
    with flagsaver.flagsaver(report=report, mode="int8", assets=str(assets), samples=EVAL,
                             num_samples=0, labels=str(labels_file)):
        assert demo_assets.main(["x"]) == 0
    assert (assets / "labels.txt").read_text() == "a\nb\n"

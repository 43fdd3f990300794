"""README benchmark regions against the committed JSON they are rendered from."""

from __future__ import annotations

import copy
import glob
import json
import os
import re
import shutil

import pytest

from benchmarks import readme_regions
from benchmarks import readme_tables as rt

RESULTS = rt.load_results()
with open(rt.README, encoding="utf-8") as _f:
    README = _f.read()


def _regions_of(name: str, regions: dict) -> dict:
    return {k: v for k, v in regions.items() if k.endswith(f":{name}")}


@pytest.mark.parametrize("name", sorted(rt.RENDERERS))
def test_readme_matches_its_json(name):
    rendered = _regions_of(name, rt.render_all({name: RESULTS[name]}))
    assert f"table:{name}" in rendered
    mismatches = readme_regions.compare(README, rendered)
    assert not mismatches, "README differs from " + name + ".json (fix it or run " \
        "`python -m benchmarks.readme_tables --write`):\n" + "\n".join(m.diff for m in mismatches)


def test_every_result_json_has_a_readme_table():
    names = {os.path.basename(p)[:-len(".json")]
             for p in glob.glob(os.path.join(rt.RESULTS_DIR, "*.json"))}
    expected = names - set(rt.UNRENDERED)
    assert expected, "no benchmark JSON found"
    assert expected <= set(rt.RENDERERS), f"no renderer for {sorted(expected - set(rt.RENDERERS))}"
    regions = readme_regions.read_regions(README)
    missing = sorted(n for n in expected if f"table:{n}" not in regions)
    assert not missing, f"benchmark JSON without a README table: {missing}"


def test_figures_against_raw_json_arithmetic():
    """Spot checks computed here from the raw JSON, independently of the renderer's helpers."""
    regions = readme_regions.read_regions(README)
    ptq = RESULTS["benchmark_ptq"]
    ratio = ptq["modes"]["int8"]["size_bytes"] / ptq["modes"]["float32"]["size_bytes"]
    assert f"= {round(ratio, 3)} |" in regions["table:benchmark_ptq"]
    speedup = (ptq["mobilenet_v2_224"]["float32_ms"]["median"]
               / ptq["mobilenet_v2_224"]["int8_ms"]["median"])
    assert f"{round(speedup, 2)}×" in regions["table:benchmark_ptq"]
    compress = RESULTS["benchmark_compress"]["results"]
    gzip_ratio = compress["dense_ptq"]["gzip_bytes"] / compress["sparse80_pqat"]["gzip_bytes"]
    assert f"= {round(gzip_ratio, 2)}×" in regions["notes:benchmark_compress"]
    qat = RESULTS["benchmark_qat"]["results"]
    assert f"{round(qat['ptq_int8']['size_bytes'] / qat['float']['size_bytes'], 3)}×" \
        in regions["notes:benchmark_qat"]
    coverage = RESULTS["benchmark_coverage"]
    minutes = sum(r["seconds"] for r in coverage["results"]) / 60
    assert f"({round(minutes, 1)} minutes" in regions["intro:benchmark_coverage"]
    table = regions["table:benchmark_coverage"].splitlines()
    assert len(table) == 2 + len(coverage["results"])
    calibration = RESULTS["benchmark_calibration"]["results"]
    assert f"| {100 * calibration['tflq_kl']['accuracy']:.2f} % |" in \
        regions["table:benchmark_calibration"]
    hard = RESULTS["benchmark_hard_ptq"]["models"]
    table = regions["table:benchmark_hard_ptq"]
    for name, model in hard.items():
        plain = model["results"]["converter_per_channel"]
        rerun = " †" if "commit" in plain else ""  # rows an --update reran are marked
        assert (f"| plain converter, per-channel{rerun} | {100 * plain['top1_agreement']:.1f} % | "
                f"{100 * plain['top2_agreement']:.1f} % |") in table
        for key, check in model["checks"].items():
            assert ((f"| {name} | met |" if check["met"] else f"| {name} | **not met** |")
                    in table), (name, key)
    met = sum(c["met"] for m in hard.values() for c in m["checks"].values())
    total = sum(len(m["checks"]) for m in hard.values())
    assert f"{met} of {total} target checks met." in regions["notes:benchmark_hard_ptq"]


CHANGES = [  # benchmark, path in its JSON, new value, {region that must differ: its new text}
    ("benchmark_ptq", ("modes", "int8", "accuracy"), 0.9211, {"table:benchmark_ptq": "92.11 %"}),
    ("benchmark_qat", ("results", "qat_pow2_4bit", "parity", "within_1_lsb"), 0.995,
     {"table:benchmark_qat": "99.50 %"}),
    ("benchmark_qat", ("results", "qat_pow2_4bit", "parity", "within_1_lsb"), 0.95,
     {"table:benchmark_qat": "95.00 %", "notes:benchmark_qat": "not met for the 4 variants"}),
    ("benchmark_coverage", ("results", 10, "size_bytes"), 5642113,
     {"table:benchmark_coverage": "5,642,113"}),
    ("benchmark_compress", ("results", "sparse80_pqat", "gzip_bytes"), 46170,
     {"table:benchmark_compress": "46,170", "notes:benchmark_compress": "46,170"}),
    ("benchmark_calibration", ("results", "tflq_kl", "sqnr_db"), 8.15,
     {"table:benchmark_calibration": "| 8.2 |", "notes:benchmark_calibration": "SQNR 8.2 dB"}),
    ("benchmark_hard_ptq", ("models", "resnet8_cifar10", "results", "mse", "top1_agreement"),
     0.1234, {"table:benchmark_hard_ptq": "| tflq `--range_estimator mse` | 12.3 % |"}),
]


def _changed(name, path, value):
    results = copy.deepcopy(RESULTS)
    node = results[name]
    for key in path[:-1]:
        node = node[key]
    assert node[path[-1]] != value
    node[path[-1]] = value
    return results


@pytest.mark.parametrize("name,path,value,expected", CHANGES, ids=[c[0] for c in CHANGES])
def test_compare_reports_a_changed_number(name, path, value, expected):
    mismatches = readme_regions.compare(README, rt.render_all(_changed(name, path, value)))
    assert {m.region for m in mismatches} == set(expected)
    for m in mismatches:
        added = " ".join(ln[1:] for ln in m.diff.splitlines()
                         if ln.startswith("+") and not ln.startswith("+++"))
        assert expected[m.region] in added, m.diff


def test_missing_region_is_reported():
    readme = README.replace("<!-- table:benchmark_qat -->", "").replace(
        "<!-- /table:benchmark_qat -->", "")
    mismatches = readme_regions.compare(readme, rt.render_all(RESULTS))
    assert [m.region for m in mismatches] == ["table:benchmark_qat"]
    assert mismatches[0].found is None
    assert "README has no region 'table:benchmark_qat'" in mismatches[0].diff


def test_coverage_renders_measured_tfmot_counts():
    data = copy.deepcopy(RESULTS["benchmark_coverage"])
    for r in data["results"]:
        r["tfmot_wrapped"] = r["architecture"] in ("MobileNet", "VGG16")
    data["results"][2]["tfmot_wrapped"] = None  # its process crashed before tfmot was tried
    data["tfmot_quantize_model_baseline_wrapped"] = 2
    parts = rt.render_coverage(data)
    assert "wraps 2 of them in the same run;" in parts["intro"]
    lines = parts["table"].splitlines()
    assert lines[0].startswith("| architecture | tfmot wraps | tflq wraps |")
    assert lines[2].startswith("| MobileNet | yes | yes |")
    assert lines[3].startswith("| MobileNetV2 | no | yes |")
    assert lines[4].startswith("| MobileNetV3Small | – | yes |")


def test_coverage_renders_a_failure_with_its_error():
    data = copy.deepcopy(RESULTS["benchmark_coverage"])
    data["results"][0].update(converted=False, float_ops=None, size_bytes=None,
                              error="ValueError: boom")
    assert "| MobileNet | yes | no: ValueError: boom | – | – | 58 |" in rt.render_coverage(data)["table"]


def test_render_all_names_a_missing_key():
    results = copy.deepcopy(RESULTS)
    del results["benchmark_qat"]["results"]["ptq_linear_4bit"]
    with pytest.raises(ValueError, match="benchmark_qat.json lacks a figure.*ptq_linear_4bit"):
        rt.render_all(results)
    with pytest.raises(ValueError, match="No README renderer for 'benchmark_x'"):
        rt.render_all({"benchmark_x": {}})


@pytest.mark.parametrize("text,message", [
    ("<!-- table:a -->\nx\n", "region 'table:a' is never closed"),
    ("x\n<!-- /table:a -->\n", "line 2: closing marker 'table:a' without its opening"),
    ("<!-- table:a -->\n<!-- notes:a -->\n", "line 2: marker 'notes:a' opens inside 'table:a'"),
    ("<!-- table:a -->\n<!-- /table:a -->\n<!-- table:a -->\n<!-- /table:a -->\n",
     "line 3: region 'table:a' appears twice"),
])
def test_read_regions_rejects_bad_markers(text, message):
    with pytest.raises(ValueError, match=message):
        readme_regions.read_regions(text)


def test_replace_regions_restores_the_readme():
    broken = README.replace("| 93.21 % → 93.11 %", "| 99.99 % → 93.11 %")
    assert broken != README
    assert readme_regions.replace_regions(broken, rt.render_all(RESULTS)) == README
    with pytest.raises(ValueError, match=r"README lacks the markers of \['table:benchmark_ptq'\]"):
        readme_regions.replace_regions(README.replace("<!-- table:benchmark_ptq -->", "").replace(
            "<!-- /table:benchmark_ptq -->", ""), rt.render_all(RESULTS))


@pytest.fixture
def copies(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(README, encoding="utf-8")
    results = tmp_path / "results"
    shutil.copytree(rt.RESULTS_DIR, results)
    return readme, results


def _run(capsys, *args):
    code = rt.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_check_passes_on_the_committed_readme(capsys):
    code, out, err = _run(capsys, "--check")
    assert code == 0, out + err
    assert f"all {len(rt.render_all(RESULTS))} benchmark regions match" in out


def test_cli_check_fails_on_a_changed_json_and_write_fixes_the_readme(capsys, copies):
    readme, results = copies
    path = results / "benchmark_compress.json"
    data = json.loads(path.read_text())
    data["results"]["dense_ptq"]["accuracy"] = 0.9407
    path.write_text(json.dumps(data))
    args = ("--readme", str(readme), "--results_dir", str(results))
    code, out, err = _run(capsys, "--check", *args)
    assert code == 1
    assert "1 README region(s) differ from the benchmark JSON: table:benchmark_compress." in err
    assert "+| dense int8 (PTQ) | 94.07 %" in out and "-| dense int8 (PTQ) | 93.07 %" in out
    assert readme.read_text(encoding="utf-8") == README  # --check never writes
    code, out, err = _run(capsys, "--write", *args)
    assert code == 0, err
    assert "| dense int8 (PTQ) | 94.07 %" in readme.read_text(encoding="utf-8")
    assert _run(capsys, *args)[0] == 0  # --check is the default


def test_cli_write_without_markers_writes_nothing(capsys, copies):
    readme, results = copies
    readme.write_text(README.replace("<!-- /notes:benchmark_qat -->", ""), encoding="utf-8")
    before = readme.read_bytes()
    code, out, err = _run(capsys, "--write", "--readme", str(readme), "--results_dir", str(results))
    assert code == 2
    assert err.count("\n") == 1 and "opens inside 'notes:benchmark_qat'" in err
    assert readme.read_bytes() == before


@pytest.mark.parametrize("breakage,message", [
    ("missing", "error: Benchmark result not found: .*benchmark_ptq.json"),
    ("malformed", "error: Cannot read benchmark result .*benchmark_ptq.json"),
    ("list", "error: Benchmark result .*benchmark_ptq.json' must hold a JSON object. Received: list"),
])
def test_cli_bad_results_exit_2(capsys, copies, breakage, message):
    readme, results = copies
    path = results / "benchmark_ptq.json"
    if breakage == "missing":
        path.unlink()
    else:
        path.write_text("{not json" if breakage == "malformed" else "[]")
    before = readme.read_bytes()
    code, out, err = _run(capsys, "--write", "--readme", str(readme), "--results_dir", str(results))
    assert code == 2
    assert err.count("\n") == 1
    assert re.match(message, err), err
    assert readme.read_bytes() == before


def test_cli_usage_errors_exit_2(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        rt.main(["--check", "--write"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: argument --write: not allowed with")
    code, out, err = _run(capsys, "--readme", str(tmp_path / "nope.md"))
    assert code == 2
    assert err.startswith("error: cannot read README") and err.count("\n") == 1


def test_hard_ptq_renders_failures_and_a_missing_peer():
    data = copy.deepcopy(RESULTS["benchmark_hard_ptq"])
    name = next(iter(data["models"]))
    model = data["models"][name]
    model["results"]["mse"] = {"error": "Conversion to int8 failed: ValueError: a|b", "seconds": 3.0}
    model["checks"]["auto_ge_mct_best"] = {"value": None, "met": False, "why": "MCT did not run"}
    parts = rt.render_all({"benchmark_hard_ptq": data})
    table = parts["table:benchmark_hard_ptq"]
    assert ("| tflq `--range_estimator mse` | failed: Conversion to int8 failed: ValueError: a/b "
            "| – | – | – | 3 |") in table
    assert f"| `--auto` ≥ MCT's best (agreement and SQNR) | {name} | **not met** | MCT did not " \
        "run |" in table
    assert f"`--auto` ≥ MCT's best (agreement and SQNR) on {name}" in \
        rt.RENDERERS["benchmark_hard_ptq"](data)["notes"]


def test_fuzz_counts_against_raw_json():
    """The fuzz table's counts from the raw JSON; the committed run kept the contract."""
    fuzz = RESULTS["benchmark_fuzz"]
    regions = readme_regions.read_regions(README)
    targets = fuzz["targets"]
    total = sum(sum(t["outcomes"].values()) for t in targets.values())
    assert total == fuzz["total_inputs"] and f"{total:,} inputs in all" in regions["notes:benchmark_fuzz"]
    table = regions["table:benchmark_fuzz"].splitlines()
    assert len(table) == 2 + len(targets)
    for name, target in targets.items():
        assert f"| {name} | {sum(target['outcomes'].values()):,} |" in regions["table:benchmark_fuzz"]
    assert fuzz["pytest_exit_code"] == 0
    assert not any(t["outcomes"].get("traceback") or t["outcomes"].get("exit 1") for t in targets.values())


def test_hard_ptq_renders_intervals_methods_not_run_and_evaluation_only_photos():
    data = copy.deepcopy(RESULTS["benchmark_hard_ptq"])
    name = next(iter(data["models"]))
    model = data["models"][name]
    model["checks"]["auto_ge_mct_best"] = {
        "value": {"agreement_pp": -0.5, "sqnr_db": 0.25}, "met": False,
        "interval_95": {"mct_gptq": {"agreement_pp": [-1.25, 0.5], "sqnr_db": [-0.5, 1.0],
                                     "groups": 31, "rounds": 2000}}}
    model["not_run"] = ["auto"]
    data["evaluation_only_photos"] = ["mate/Aqua.jpg", "mate/Dune.jpg"]
    data["evaluation_only_sources"] = [{"package": "mate-backgrounds", "version": "1.26.0-1",
                                        "license": "GPL-2+"}]
    parts = rt.render_all({"benchmark_hard_ptq": data})
    table = parts["table:benchmark_hard_ptq"]
    assert (f"| {name} | **not met** | −0.50 pp, +0.2 dB; 95 % interval by photo: vs MCT GPTQ "
            "−1.2…+0.5 pp, −0.50…+1.00 dB |") in table
    assert "Not run this time: tflq `--auto`." in table
    assert ("(2 of them evaluation-only nature photos from Debian mate-backgrounds 1.26.0-1, "
            "GPL-2+, so the calibration photos are those of earlier runs)") in \
        " ".join(parts["intro:benchmark_hard_ptq"].split())  # the README wraps lines


def test_hard_ptq_rows_rerun_by_an_update_are_marked_with_their_commit():
    from benchmarks.readme_hard_ptq import render_hard_ptq

    data = copy.deepcopy(RESULTS["benchmark_hard_ptq"])
    for each in data["models"].values():  # as after a full run, then one update of VWW
        each.pop("updates", None)
        for row in each["results"].values():
            row.pop("commit", None)
    model = data["models"]["vww_mobilenet_v1"]
    model["results"]["equalize_per_tensor"]["commit"] = "abc1234"
    model["updates"] = [{"commit": "abc1234", "methods": ["equalize_per_tensor"],
                         "converter_drift": {"converter_per_channel": {"agreement_pp": 0.2,
                                                                       "sqnr_db": -0.006}},
                         "wall_seconds": 60.0}]
    table = render_hard_ptq(data)["table"]
    vww = table.split("**vww_mobilenet_v1**")[1].split("**nsfwjs_mobilenet_v2**")[0]
    assert "| tflq `--equalize --per_tensor` † |" in vww
    assert "| tflq `--equalize` (CLE + bias corr.), per-channel |" in vww  # not rerun
    assert ("† rerun with `--update` at commit abc1234, the plain converter too (against the "
            "full run: per-channel +0.2 pp, \u22120.01 dB)") in vww
    assert "†" not in table.split("**vww_mobilenet_v1**")[0]


def test_hard_ptq_several_updates_each_name_their_commit_methods_and_drift():
    from benchmarks.readme_hard_ptq import render_hard_ptq

    data = copy.deepcopy(RESULTS["benchmark_hard_ptq"])
    model = data["models"]["vww_mobilenet_v1"]
    for row in model["results"].values():
        row.pop("commit", None)
    model["results"]["equalize_per_channel"]["commit"] = "aaa1111"
    model["results"]["equalize_per_tensor"]["commit"] = "bbb2222"
    model["updates"] = [
        {"commit": "aaa1111", "methods": ["converter_per_channel", "equalize_per_channel",
                                          "equalize_per_tensor"],  # its row replaced later
         "converter_drift": {"converter_per_channel": {"agreement_pp": 0.2, "sqnr_db": 0.01}},
         "wall_seconds": 60.0},
        {"commit": "bbb2222", "methods": ["converter_per_channel", "equalize_per_tensor"],
         "converter_drift": {"converter_per_channel": {"agreement_pp": -0.1, "sqnr_db": 0.0}},
         "wall_seconds": 60.0}]
    vww = render_hard_ptq(data)["table"].split("**vww_mobilenet_v1**")[1].split(
        "**nsfwjs_mobilenet_v2**")[0]
    assert ("† rerun with `--update`, the plain converter each time: at commit aaa1111: tflq "
            "`--equalize` (CLE + bias corr.), per-channel (plain converter against the rows it "
            "replaced: per-channel +0.2 pp, +0.01 dB); at commit bbb2222: tflq `--equalize "
            "--per_tensor` (plain converter against the rows it replaced: per-channel "
            "\u22120.1 pp, +0.00 dB). The other rows are from the full run.") in vww
    assert "| tflq `--equalize --per_tensor` † |" in vww
    assert "| tflq `--range_search` |" in vww

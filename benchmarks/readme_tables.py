"""The README's benchmark tables and the figures quoted around them, rendered from the JSON.

Each benchmark in ``benchmarks/results/`` (except ``benchmark_batch``, whose table is kept
by its own script) owns up to three regions of README.md, each between HTML comments that
GitHub does not show::

    <!-- intro:benchmark_ptq -->   what was run, on how many samples
    <!-- table:benchmark_ptq -->   the table
    <!-- notes:benchmark_ptq -->   the targets and the figures quoted in prose

A region ends at ``<!-- /table:benchmark_ptq -->``. Every figure inside a region is
computed here from the committed JSON alone; text outside the regions holds no benchmark
figure. Targets that the JSON does not record (the issue's parity and calibration
thresholds) are named constants below.

  python -m benchmarks.readme_tables --check   # exit 1 and a diff per differing region
  python -m benchmarks.readme_tables --write   # rewrite the regions of README.md in place
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from collections.abc import Callable, Mapping

from benchmarks.readme_basic_pitch import render_basic_pitch
from benchmarks.readme_conformance import render_conformance, render_corpus
from benchmarks.readme_distributed import render_distributed
from benchmarks.readme_fuzz import render_fuzz
from benchmarks.readme_hard_ptq import render_hard_ptq
from benchmarks.readme_regions import compare, replace_regions
from tflq.fileio import write_atomic

__all__ = [
    "README", "RESULTS_DIR", "RENDERERS", "UNRENDERED", "render_ptq", "render_qat",
    "render_coverage", "render_compress", "render_calibration", "load_results", "render_all", "main",
]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
RESULTS_DIR = os.path.join(ROOT, "benchmarks", "results")
# Its script and table are maintained separately.
UNRENDERED = ("benchmark_batch",)

# Targets of the QAT and calibration issues that the committed JSON does not record.
QAT_PARITY_AGREEMENT_MIN = 0.995
QAT_PARITY_WITHIN_1_LSB_MIN = 0.99
CALIBRATION_PER_TENSOR_DROP_PP_MAX = 1.0

MINUS = "\u2212"
WIDTH = 95  # prose line width, as in the rest of README.md


def _signed(value: float, digits: int = 2) -> str:
    return f"{value:+.{digits}f}".replace("-", MINUS)


def _plain(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f}".replace("-", MINUS)


def _pct(fraction: float, digits: int = 2) -> str:
    return f"{100 * fraction:.{digits}f} %"


def _met(met: bool) -> str:
    return "met" if met else "not met"


def _wrap(paragraph: str) -> str:
    return textwrap.fill(paragraph, width=WIDTH, break_long_words=False, break_on_hyphens=False)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _source(name: str, data: Mapping) -> str:
    versions = data["versions"]
    return (f"`benchmarks/results/{name}.json`; {data['machine']}, TensorFlow "
            f"{versions['tensorflow']}, LiteRT {versions['litert']}")


def render_ptq(data: Mapping) -> dict[str, str]:
    """Regions of the PTQ benchmark (benchmark_ptq.json)."""
    modes, checks, targets = data["modes"], data["checks"], data["targets"]
    int8, float32 = modes["int8"], modes["float32"]
    low, high = data["calibration_probes"][0], data["calibration_probes"][-1]
    mobilenet = data["mobilenet_v2_224"]
    side = mobilenet["input"][0]
    intro = (
        f"`python -m benchmarks.benchmark_ptq --out bench_ptq` (about 8 minutes here, "
        f"{data['model']['train_seconds']:.0f} s of it training; the total is a wall-clock "
        f"estimate, not in the JSON) trains a wider CNN ({data['model']['params']:,} parameters, "
        f"{data['model']['epochs']} epochs) on the full Fashion-MNIST train set, calibrates int8 "
        f"with {data['calibration_samples']:,} train images and evaluates every mode on all "
        f"{data['evaluation_samples']:,} test images ({_source('benchmark_ptq', data)}):")
    growth = data["calibration_peak_memory_growth"]
    rows = [
        [f"int8 accuracy drop ≤ {targets['int8_accuracy_drop_pp_max']:g} pp",
         f"{_pct(data['float_accuracy'])} → {_pct(int8['accuracy'])}: "
         f"{_plain(checks['int8_accuracy_drop_pp']['value'])} pp",
         checks["int8_accuracy_drop_pp"]["met"]],
        [f"int8 size ≤ {targets['int8_size_ratio_max']:g}× float32",
         f"{int8['size_bytes']:,} B / {float32['size_bytes']:,} B = "
         f"{checks['int8_size_ratio']['value']:.3f}", checks["int8_size_ratio"]["met"]],
        [f"{targets['int8_float_ops']} float ops in int8", str(checks["int8_float_ops"]["value"]),
         checks["int8_float_ops"]["met"]],
        [f"peak memory grows < {100 * targets['calibration_peak_memory_growth_max']:g} % from "
         f"{low['num_samples']:,} to {high['num_samples']:,} calibration samples",
         f"{low['peak_rss_during_convert_mb']:.1f} MiB → {high['peak_rss_during_convert_mb']:.1f} MiB "
         f"({_signed(100 * growth, 1)} %)", checks["calibration_peak_memory_growth"]["met"]],
        [f"MobileNetV2 {side}×{side} int8 ≥ {targets['mobilenet_int8_speedup_min']:g}× faster "
         f"than float32, {mobilenet['threads']} thread",
         f"{mobilenet['float32_ms']['median']:.2f} ms → {mobilenet['int8_ms']['median']:.2f} ms: "
         f"{checks['mobilenet_int8_speedup']['value']:.2f}×", checks["mobilenet_int8_speedup"]["met"]],
    ]
    table = _table(["target (core pipeline issue)", "measured", "met"],
                   [row[:2] + ["yes" if row[2] else "no"] for row in rows])
    notes = (
        f"The CNN's int8/float32 latency ratio was {data['latency_ratio_int8_over_float32']:.2f} "
        f"({int8['latency_ms']['median']:.3f} ms vs {float32['latency_ms']['median']:.3f} ms, "
        f"median of {int8['latency_ms']['runs']} runs). Calibrating and converting took "
        f"{low['calibrate_and_convert_seconds']:.1f} s with {low['num_samples']:,} samples and "
        f"{high['calibrate_and_convert_seconds']:.1f} s with {high['num_samples']:,}.")
    return {"intro": intro, "table": table, "notes": notes}


_QAT_SCHEMES = {"default_int8": "int8 (`default_int8`)", "pow2": "4-bit `pow2`",
                "linear": "4-bit `linear`"}


def _qat_label(key: str, row: Mapping) -> str:
    if key == "float":
        return "float (Keras)"
    if key == "ptq_int8":
        return "PTQ int8 (plain converter)"
    scheme = _QAT_SCHEMES.get(row["scheme"], f"`{row['scheme']}`")
    if row["strategy"] == "statistics":
        return f"PTQ {scheme} (statistics, weights frozen)"
    return f"QAT {scheme}" + (", distilled" if row["strategy"] == "distill" else "")


def render_qat(data: Mapping) -> dict[str, str]:
    """Regions of the QAT benchmark (benchmark_qat.json)."""
    results, checks, targets = data["results"], data["checks"], data["targets"]
    intro = (
        f"`python -m benchmarks.benchmark_qat --out bench_qat` (about 20 minutes here; wall time "
        f"is not in the JSON) starts from the bundled CNN, trains each QAT variant "
        f"{data['qat_epochs']} epochs on the full train set and evaluates the deployed int8 "
        f".tflite on all {data['evaluation_samples']:,} test images ({_source('benchmark_qat', data)}):")
    rows, qat_rows = [], {k: v for k, v in results.items() if "parity" in v}
    for key, row in results.items():
        if key not in qat_rows:
            drop = "–" if key == "float" else _signed(row["drop_pp"])
            rows.append([_qat_label(key, row), _pct(row["accuracy"]), drop, "–", "–"])
            continue
        parity = row["parity"]
        rows.append([_qat_label(key, row), _pct(row["accuracy"]), _signed(row["drop_pp"]),
                     f"{_pct(parity['top1_agreement'])} / {_pct(parity['within_1_lsb'])}",
                     "yes" if row["weights_exact"] else "no: re-quantized to int8"])
    table = _table(["variant", "int8 .tflite accuracy", "Δ pp vs float",
                    "parity: agreement / within 1 LSB", "weights exact"], rows)

    def parity_met(row):
        return (row["parity"]["top1_agreement"] >= QAT_PARITY_AGREEMENT_MIN
                and row["parity"]["within_1_lsb"] >= QAT_PARITY_WITHIN_1_LSB_MIN)

    exact = [r for r in qat_rows.values() if r["weights_exact"]]
    inexact = [r for r in qat_rows.values() if not r["weights_exact"]]
    parity = (f"{_met(all(map(parity_met, exact)))} for the {len(exact)} variants whose weights "
              f"deploy exactly")
    if inexact:
        lowest = min(r["parity"]["within_1_lsb"] for r in inexact)
        parity += (f", {_met(all(map(parity_met, inexact)))} for the {len(inexact)} whose weights "
                   f"the converter re-quantizes (within one LSB: {_pct(lowest)} at worst)")
    sizes = [r["size_bytes"] for r in qat_rows.values()]
    pow2, pow2_distill = results["qat_pow2_4bit"], results["qat_pow2_4bit_distill"]
    notes = (
        f"Targets of the QAT issue: QAT int8 drop ≤ {targets['qat_int8_drop_pp_max']:g} pp: "
        f"{_met(checks['qat_int8_drop_pp']['met'])} ({_plain(checks['qat_int8_drop_pp']['value'])}); "
        f"4-bit pow2 drop ≤ {targets['pow2_4bit_drop_pp_max']:g} pp: "
        f"{_met(checks['pow2_4bit_drop_pp']['met'])} ({_plain(pow2_distill['drop_pp'])} distilled, "
        f"{_plain(pow2['drop_pp'])} without); pow2 better than 4-bit linear PTQ: "
        f"{_met(checks['pow2_4bit_beats_linear_4bit_ptq']['met'])} "
        f"({_plain(checks['pow2_4bit_drop_pp']['value'])} vs "
        f"{_plain(results['ptq_linear_4bit']['drop_pp'])}); parity ≥ "
        f"{100 * QAT_PARITY_AGREEMENT_MIN:g} % agreement and ≥ {100 * QAT_PARITY_WITHIN_1_LSB_MIN:g} % "
        f"within one LSB: {parity}. All QAT .tflite files store 8-bit weights ({min(sizes):,} to "
        f"{max(sizes):,} bytes). The bundled CNN's plain-converter int8 is "
        f"{results['ptq_int8']['size_bytes'] / results['float']['size_bytes']:.3f}× its float32 "
        f"({results['ptq_int8']['size_bytes']:,} B / {results['float']['size_bytes']:,} B).")
    return {"intro": intro, "table": table, "notes": notes}


def render_coverage(data: Mapping) -> dict[str, str]:
    """Regions of the QAT coverage benchmark (benchmark_coverage.json)."""
    results = data["results"]
    measured = all("tfmot_wrapped" in r for r in results)
    minutes = sum(r["seconds"] for r in results) / 60
    baseline = data["tfmot_quantize_model_baseline_wrapped"]
    tfmot = (f"tfmot's own `quantize_model` wraps {baseline} of them in the same run"
             if measured else
             f"tfmot's own `quantize_model` wraps {baseline} of them (a count from an earlier "
             "measurement, written into this JSON as a constant; the benchmark now measures it)")
    intro = (
        f"`python -m benchmarks.benchmark_coverage --out bench_coverage` ({minutes:.1f} minutes "
        f"here: the sum of the per-architecture times in the JSON) wraps the {data['total']} "
        f"keras.applications architectures of tfmot's measured baseline (weights=None, "
        f"{data['input_size']}×{data['input_size']}, BatchNorm statistics refreshed) with the "
        f"`{data['scheme']}` scheme, fits one step and converts to int8 with the learned ranges "
        f"({_source('benchmark_coverage', data)}). {tfmot}; tflq wraps {data['wrapped']} and "
        f"converts **{data['fully_integer']}/{data['total']} with 0 float ops**:")
    header = ["architecture"] + (["tfmot wraps"] if measured else []) + [
        "tflq wraps", "converts", "float ops", "int8 bytes", "seconds"]
    rows = []
    for r in results:
        converted = "yes" if r["converted"] else f"no: {r['error']}"
        float_ops = "–" if r["float_ops"] is None else str(len(r["float_ops"]))
        size = f"{r['size_bytes']:,}" if r.get("size_bytes") else "–"
        seconds = f"{r['seconds']:.0f}" if r.get("seconds") is not None else "–"
        tfmot_cell = [{True: "yes", False: "no"}.get(r["tfmot_wrapped"], "–")] if measured else []
        rows.append([r["architecture"], *tfmot_cell, "yes" if r["wrapped"] else "no", converted,
                     float_ops, size, seconds])
    return {"intro": intro, "table": _table(header, rows)}


def _compress_label(row: Mapping) -> str:
    qat = row["quantization"] == "qat"
    if "sparsity" in row:
        return f"{100 * row['sparsity']:g} % sparse, {'PQAT' if qat else 'PTQ'}"
    if "clusters" in row:
        return f"{row['clusters']} clusters, {'CQAT' if qat else 'PTQ'}"
    return f"dense int8 ({'QAT' if qat else 'PTQ'})"


def render_compress(data: Mapping) -> dict[str, str]:
    """Regions of the pruning/clustering benchmark (benchmark_compress.json)."""
    results, checks, targets = data["results"], data["checks"], data["targets"]
    rates = data["learning_rates"]
    layers = sorted({r["layers"] for r in results.values() if "layers" in r})
    intro = (
        f"`python -m benchmarks.benchmark_compress --out bench_compress` (about 25 minutes here; "
        f"wall time is not in the JSON) starts from the bundled CNN (float "
        f"{_pct(data['float_accuracy'])} on all {data['evaluation_samples']:,} test images), "
        f"prunes or clusters it with {data['stage_epochs']} epochs of fine-tuning on the full "
        f"train set (Adam {rates['prune_cluster']:g}, cosine-decayed), then quantizes by PTQ or "
        f"by {data['qat_epochs']} more epochs of structure-preserving QAT (Adam {rates['qat']:g}); "
        f"pruning applies to the layers matching {', '.join(f'`{p}`' for p in layers)}, so not to "
        f"the first conv ({_source('benchmark_compress', data)}):")
    rows = []
    for row in results.values():
        sparse = row["sparse_encoding"]
        encoded = f"{sparse['size_bytes']:,} / {sparse['gzip_bytes']:,}"
        if sparse["sparse_tensors"] == 0:
            encoded += " (0 tensors)"
        rows.append([_compress_label(row), _pct(row["accuracy"]), _signed(row["drop_pp"]),
                     f"{row['size_bytes']:,}", f"{row['gzip_bytes']:,}",
                     _pct(row["weight_sparsity"], 1), str(row["max_unique_per_channel"]), encoded])
    table = _table(["variant", "accuracy", "Δ pp", "raw bytes", "gzip bytes", "sparsity",
                    "max unique int8 / channel", "sparse encoding raw / gzip"], rows)
    dense, pqat80 = results["dense_ptq"], results["sparse80_pqat"]
    pairs = [("sparse50_pqat", "sparse50_ptq"), ("sparse80_pqat", "sparse80_ptq"),
             ("clustered16_cqat", "clustered16_ptq")]
    gains = [checks[f"{q}_beats_{p}_pp"] for q, p in pairs]
    images = [round(g["value"] * data["evaluation_samples"] / 100) for g in gains]
    cqat, cptq = results["clustered16_cqat"], results["clustered16_ptq"]
    sparse80 = pqat80["sparse_encoding"]
    notes = (
        f"Targets of the pruning issue: {100 * pqat80['sparsity']:g} %-sparse PQAT int8 at least "
        f"{targets['pqat80_gzip_ratio_min']:g}× smaller gzipped than dense int8 with at most "
        f"{targets['pqat80_drop_pp_max']:g} pp loss: "
        f"{_met(checks['pqat80_gzip_ratio']['met'] and checks['pqat80_drop_pp']['met'])} "
        f"({dense['gzip_bytes']:,} / {pqat80['gzip_bytes']:,} = "
        f"{checks['pqat80_gzip_ratio']['value']:.2f}×, {_plain(checks['pqat80_drop_pp']['value'])} pp). "
        f"PQAT and CQAT beat their PTQ counterparts: {_met(all(g['met'] for g in gains))} at "
        f"{100 * results['sparse50_pqat']['sparsity']:g} % ({_signed(gains[0]['value'])} pp), "
        f"{100 * pqat80['sparsity']:g} % ({_signed(gains[1]['value'])} pp) and for "
        f"{cqat['clusters']} clusters ({_signed(gains[2]['value'])} pp), by "
        f"{', '.join(map(str, images[:-1]))} and {images[-1]} of the "
        f"{data['evaluation_samples']:,} test images. CQAT keeps at most "
        f"{cqat['max_unique_per_channel']} distinct int8 values per channel and gzips to "
        f"{cqat['gzip_bytes']:,} B against {cptq['gzip_bytes']:,} B for PTQ of the clustered model. "
        f"TFLite's sparse encoding (`EXPERIMENTAL_SPARSITY`) shrinks the raw "
        f"{100 * pqat80['sparsity']:g} % PQAT file from {pqat80['size_bytes']:,} B to "
        f"{sparse80['size_bytes']:,} B but gzips to {sparse80['gzip_bytes']:,} B against "
        f"{pqat80['gzip_bytes']:,} B for the dense layout.")
    return {"intro": intro, "table": table, "notes": notes}


def _calibration_label(row: Mapping, budget: float) -> str:
    layout = "per-channel" if row.get("per_channel", True) else "per-tensor"
    if row.get("selective"):
        kept = row["float_ops"]
        return f"selective, {budget:g} pp budget ({kept} op{'s' if kept != 1 else ''} kept in float)"
    if "range_estimator" in row:
        return f"tflq `{row['range_estimator']}`"
    if row.get("equalize"):
        return f"CLE + bias correction, {layout}"
    return f"converter, {layout}"


def render_calibration(data: Mapping) -> dict[str, str]:
    """Regions of the post-training calibration benchmark (benchmark_calibration.json)."""
    results, checks = data["results"], data["checks"]
    budget = data["selective_budget_pp"]
    intro = (
        f"`python -m benchmarks.benchmark_calibration --out bench_calibration` (about 15 minutes "
        f"here; wall time is not in the JSON) trains a `{data['model']}` (ReLU instead of "
        f"ReLU6, the 28×28 images zero-padded) for {data['train_epochs']} epochs on the "
        f"full train set (float {_pct(data['float_accuracy'])} on all "
        f"{data['evaluation_samples']:,} test images), then calibrates int8 on "
        f"{data['calibration_samples']:,} train images in every configuration, side by side in "
        f"one run ({_source('benchmark_calibration', data)}):")
    rows = [[_calibration_label(r, budget), _pct(r["accuracy"]), _signed(r["drop_pp"]),
             f"{r['sqnr_db']:.1f}", f"{r['size_bytes']:,}"] for r in results.values()]
    table = _table(["configuration", "accuracy", "Δ pp", "SQNR dB", "size bytes"], rows)
    per_channel = {k: r for k, r in results.items()
                   if k.startswith("tflq") and r.get("per_channel", True)}
    best = max(per_channel.values(), key=lambda r: r["accuracy"])
    best_name = (f"`{best['range_estimator']}`" if "range_estimator" in best
                 else _calibration_label(best, budget))
    cle = checks["per_tensor_cle_bc_drop_pp"]
    vs_channel = checks["best_tflq_vs_converter_per_channel_pp"]
    vs_tensor = checks["best_tflq_vs_converter_per_tensor_pp"]
    kl = results["tflq_kl"]
    notes = (
        f"Targets of the calibration issue: per-tensor int8 with CLE + bias correction within "
        f"{CALIBRATION_PER_TENSOR_DROP_PP_MAX:g} pp of float: {_met(cle['met'])} "
        f"({_plain(cle['value'])} pp); the best tflq result at least as accurate as the plain "
        f"converter: {_met(vs_channel['met'])} per-channel ({best_name}, "
        f"{_signed(vs_channel['value'])} pp) and {_met(vs_tensor['met'])} per-tensor (CLE + BC, "
        f"{_signed(vs_tensor['value'])} pp). The plain converter loses "
        f"{_plain(results['converter_per_tensor']['drop_pp'])} pp per-tensor on this ReLU "
        f"MobileNetV2; KL calibration loses {_plain(kl['drop_pp'], 1)} pp (SQNR "
        f"{kl['sqnr_db']:.1f} dB).")
    return {"intro": intro, "table": table, "notes": notes}


RENDERERS: dict[str, Callable[[Mapping], dict[str, str]]] = {
    "benchmark_ptq": render_ptq,
    "benchmark_qat": render_qat,
    "benchmark_coverage": render_coverage,
    "benchmark_compress": render_compress,
    "benchmark_calibration": render_calibration,
    "benchmark_hard_ptq": render_hard_ptq,
    "basic_pitch_outputs": render_basic_pitch,
    "benchmark_distributed": render_distributed,
    "benchmark_fuzz": render_fuzz,
    "benchmark_conformance": render_conformance,
}


def load_results(results_dir: str = RESULTS_DIR) -> dict[str, dict]:
    """{benchmark name: parsed JSON} for every rendered benchmark; ValueError naming the file
    when one is missing, unreadable or not a JSON object."""
    loaded = {}
    for name in RENDERERS:
        path = os.path.join(results_dir, f"{name}.json")
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise ValueError(f"Benchmark result not found: {path!r}") from None
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"Cannot read benchmark result {path!r}: {e}") from None
        if not isinstance(data, dict):
            raise ValueError(f"Benchmark result {path!r} must hold a JSON object. "
                             f"Received: {type(data).__name__}")
        loaded[name] = data
    return loaded


def render_all(results: Mapping[str, Mapping]) -> dict[str, str]:
    """{region id such as ``table:benchmark_ptq``: text} for every benchmark in ``results``.

    Raises ValueError naming the benchmark and the key when its JSON lacks a figure."""
    regions = {}
    for name, data in results.items():
        if name not in RENDERERS:
            raise ValueError(f"No README renderer for {name!r}. Available: {sorted(RENDERERS)}")
        try:
            parts = RENDERERS[name](data)
        except (KeyError, IndexError, TypeError) as e:
            raise ValueError(f"{name}.json lacks a figure the README quotes: "
                             f"{type(e).__name__}: {e}") from None
        regions.update({f"{kind}:{name}": text if kind == "table" else _wrap(text)
                        for kind, text in parts.items()})
    return regions


def _corpus_manifest() -> dict:
    """The corpus manifest (``benchmarks/corpus.json``), rendered as ``table:corpus``."""
    with open(os.path.join(ROOT, "benchmarks", "corpus.json"), encoding="utf-8") as f:
        return json.load(f)["models"]


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one `error:` line and exit 2, like every tflq command
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    """``--check`` (default): 0 when README matches, 1 with a diff per differing region.
    ``--write``: rewrites the regions in README.md. Bad input: one ``error:`` line, exit 2."""
    parser = _Parser(prog="python -m benchmarks.readme_tables", description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--check", action="store_true", help="compare README with the JSON (default)")
    action.add_argument("--write", action="store_true", help="rewrite README's regions from the JSON")
    parser.add_argument("--readme", default=README, help="README to check or rewrite")
    parser.add_argument("--results_dir", default=RESULTS_DIR, help="folder of benchmark_*.json")
    args = parser.parse_args(argv)
    try:
        with open(args.readme, encoding="utf-8") as f:
            readme = f.read()
    except OSError as e:
        print(f"error: cannot read README {args.readme!r}: {e.strerror}", file=sys.stderr)
        return 2
    try:
        rendered = render_all(load_results(args.results_dir))
        benchmarks = len(rendered)
        rendered.update(render_corpus(_corpus_manifest()))
        if args.write:
            updated = replace_regions(readme, rendered)
            if updated != readme:
                write_atomic(args.readme, updated.encode("utf-8"))
            print(f"{args.readme}: {len(rendered)} regions rendered from {args.results_dir}")
            return 0
        mismatches = compare(readme, rendered)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for mismatch in mismatches:
        print(mismatch.diff)
    if mismatches:
        print(f"{len(mismatches)} README region(s) differ from the benchmark JSON: "
              f"{', '.join(m.region for m in mismatches)}. Fix the README or run --write.",
              file=sys.stderr)
        return 1
    print(f"{args.readme}: all {benchmarks} benchmark regions match the JSON, and the corpus "
          "table matches benchmarks/corpus.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())

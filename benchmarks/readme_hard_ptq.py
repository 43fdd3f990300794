"""README regions of the hard PTQ benchmark (benchmark_hard_ptq.json), rendered from the JSON.

Registered in :data:`benchmarks.readme_tables.RENDERERS`; kept apart only for module size.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["LABELS", "CHECK_LABELS", "render_hard_ptq"]

LABELS = {
    "converter_per_channel": "plain converter, per-channel",
    "converter_per_tensor": "plain converter, per-tensor",
    "minmax": "tflq `--range_estimator minmax`",
    "percentile": "tflq `--range_estimator percentile`",
    "mse": "tflq `--range_estimator mse`",
    "equalize_per_channel": "tflq `--equalize` (CLE + bias corr.), per-channel",
    "equalize_per_tensor": "tflq `--equalize --per_tensor`",
    "adaround_8bit": "tflq `--adaround` (8-bit weights)",
    "adaround_4bit": "tflq `--adaround --adaround_bits 4`",
    "range_search": "tflq `--range_search`",
    "equalize_range_search": "tflq `--equalize --range_search`",
    "auto": "tflq `--auto`",
    "mct_ptq": "Sony MCT 2.6.1 default PTQ",
    "mct_gptq": "Sony MCT 2.6.1 GPTQ",
}
CHECK_LABELS = {
    "per_tensor_cle_within_3pp": "per-tensor CLE + BC within 3 pp of the per-channel converter",
    "auto_ge_mct_best": "`--auto` ≥ MCT's best (agreement and SQNR)",
    "auto_not_below_converter": "`--auto` not below the converter (agreement and SQNR)",
    "adaround_4bit_within_5pp": "AdaRound 4-bit within 5 pp of the int8 converter",
    "warning_fires_when_2pp_below": "every method > 2 pp below the converter is warned about",
}
MINUS = "\u2212"


def _num(value: float, digits: int = 2, signed: bool = False) -> str:
    return (f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}").replace("-", MINUS)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _row(name: str, row: Mapping) -> list[str]:
    label = LABELS.get(name, name)
    if "error" in row:
        return [label, "failed: " + row["error"][:80].replace("|", "/"), "–", "–", "–",
                f"{row['seconds']:.0f}"]
    if name == "auto":
        label += f" → {row['winner']}"
    if "commit" in row:
        label += " †"
    return [label, f"{100 * row['top1_agreement']:.1f} %", f"{100 * row['top2_agreement']:.1f} %",
            _num(row["sqnr_db"], 1), _num(row["mean_total_variation"], 4), f"{row['seconds']:.0f}"]


def _check_value(key: str, check: Mapping) -> str:
    value = check["value"]
    if value is None:
        return check.get("why", "–")
    if key == "warning_fires_when_2pp_below":
        below = ", ".join(value["below"]) or "none"
        return f"below by > 2 pp: {below}; warned: {', '.join(value['warned']) or 'none'}"
    if isinstance(value, Mapping):
        text = f"{_num(value['agreement_pp'], signed=True)} pp, {_num(value['sqnr_db'], 1, True)} dB"
        intervals = check.get("interval_95", {})
        if intervals:
            text += "; 95 % interval by photo: " + "; ".join(
                f"vs {LABELS.get(peer, peer).replace('Sony MCT 2.6.1 ', 'MCT ')} "
                f"{_num(i['agreement_pp'][0], 1, True)}…{_num(i['agreement_pp'][1], 1, True)} pp, "
                f"{_num(i['sqnr_db'][0], 2, True)}…{_num(i['sqnr_db'][1], 2, True)} dB"
                for peer, i in intervals.items())
        return text
    return f"{_num(value)} pp below" if value >= 0 else f"{_num(-value)} pp above"


def _evaluation_only(data: Mapping) -> str:
    only = data.get("evaluation_only_photos", [])
    if not only:
        return ""
    sources = "; ".join(f"Debian {s['package']} {s['version']}, {s['license']}"
                        for s in data.get("evaluation_only_sources", []))
    return (f" ({len(only)} of them evaluation-only nature photos from {sources}, so the "
            "calibration photos are those of earlier runs)")


def _drift_text(update: dict) -> str:
    return "; ".join(
        f"{LABELS[k].replace('plain converter, ', '')} {_num(d['agreement_pp'], 1, True)} pp, "
        f"{_num(d['sqnr_db'], 2, True)} dB" for k, d in update.get("converter_drift", {}).items())


def _updates_text(updates: list, results: Mapping) -> str:
    """The † sentence: one update as before; several, each with its commit, the methods
    whose rows it wrote (and that no later update replaced) and the plain converter's drift
    against the rows it replaced."""
    if not updates:
        return ""
    if len({u["commit"] for u in updates}) == 1:
        drift = "; ".join(filter(None, (_drift_text(u) for u in updates)))
        return (f" † rerun with `--update` at commit {updates[0]['commit']}, the plain "
                f"converter too (against the full run: {drift or 'no earlier rows'}); the "
                "other rows are from the full run.")
    runs = []
    for u in updates:
        rerun = [LABELS.get(k, k) for k in u.get("methods", [])
                 if not k.startswith("converter_")
                 and results.get(k, {}).get("commit") == u["commit"]]
        runs.append(f"at commit {u['commit']}: {', '.join(rerun) or 'no row kept from it'}"
                    f" (plain converter against the rows it replaced: "
                    f"{_drift_text(u) or 'no earlier rows'})")
    return (" † rerun with `--update`, the plain converter each time: " + "; ".join(runs)
            + ". The other rows are from the full run.")


def render_hard_ptq(data: Mapping) -> dict[str, str]:
    """Regions of the hard PTQ benchmark: intro, one table per model, the targets."""
    models = data["models"]
    minutes = sum(r["seconds"] for m in models.values() for r in m["results"].values()) / 60
    intro = (
        f"`python -m benchmarks.benchmark_hard_ptq --out bench_hard_ptq` ({minutes:.0f} minutes "
        f"of conversion time summed over all methods, on 2 cores shared with other jobs) runs "
        f"{len(models)} real pretrained models "
        f"fetched from registry packages by `benchmarks/corpus.py` (sha256 checked): "
        + "; ".join(f"`{name}` ({m['source']['registry']} {m['source']['package']} "
                    f"{m['source']['version']}, {m['source']['license']})"
                    for name, m in models.items())
        + f". Photos are split by photo: {len(data['calibration_photos'])} for calibration, "
        f"{len(data['evaluation_photos'])} for evaluation{_evaluation_only(data)}, none in both; "
        f"each side is multiplied "
        f"by seeded random square crops ({data['crops']['min_side_fraction']:g}–1 of the "
        f"shorter side), horizontal flips and a resize: {data['calibration_samples']} "
        f"calibration and {data['evaluation_samples']} evaluation crops (crops of one photo are "
        f"correlated, so the counts overstate the independent evidence). Every method "
        f"calibrates on the same crops (MCT through an .npz in its own TensorFlow 2.15 "
        f"virtualenv; GPTQ {data['gptq_epochs']} epochs without Hessian weights); AdaRound "
        f"{data['adaround_iterations']} steps per layer. Every full-int8 .tflite is scored by "
        f"the same LiteRT run against the float model: top-1 and ordered top-2 agreement, "
        f"output SQNR, mean total variation of the class probabilities. These photos have no "
        f"labels for these tasks, so there is no accuracy. Time is per method, calibration "
        f"and conversion included. Source: `benchmarks/results/benchmark_hard_ptq.json`; "
        f"{data['machine']}, TensorFlow {data['versions']['tensorflow']}.")
    parts = []
    for name, m in models.items():
        histogram = ", ".join(str(c) for c in m["float_top1_histogram"])
        not_run = (f" Not run this time: {', '.join(LABELS.get(k, k) for k in m['not_run'])}."
                   if m.get("not_run") else "")
        updated = _updates_text(m.get("updates", []), m["results"])
        parts.append(f"**{name}**: {m['source']['description']}; float top-1 over the "
                     f"evaluation crops by class: [{histogram}].{not_run}{updated}\n\n"
                     + _table(["method", "top-1 agr.", "top-2 agr.", "SQNR dB", "mean TV", "s"],
                              [_row(k, r) for k, r in m["results"].items()]))
    rows = [[CHECK_LABELS[key], name, "met" if check["met"] else "**not met**",
             _check_value(key, check)]
            for key in CHECK_LABELS for name, m in models.items()
            for check in [m["checks"][key]]]
    parts.append("Targets of issue 12, per model:\n\n"
                 + _table(["target", "model", "result", "measured"], rows))
    missed = [f"{CHECK_LABELS[row_key]} on {name}"
              for row_key in CHECK_LABELS for name, m in models.items()
              if not m["checks"][row_key]["met"]]
    total = len(CHECK_LABELS) * len(models)
    notes = (f"{total - len(missed)} of {total} target checks met. "
             + (f"Not met: {'; '.join(missed)}." if missed else "None missed."))
    autos = [f"{name} → {m['results']['auto']['winner']}" for name, m in models.items()
             if "winner" in m["results"].get("auto", {})]
    if autos:
        notes += f" `--auto` chose (on held-out calibration crops): {', '.join(autos)}."
    return {"intro": intro, "table": "\n\n".join(parts), "notes": notes}

"""Per-output validation of a real multi-output audio model (not a timed test; not in CI).

The model: Spotify's Basic Pitch note transcription SavedModel from the PyPI package
``basic-pitch`` 0.4.0 (Apache-2.0; ``basic_pitch/saved_models/icassp_2022/nmp``), input
[N, 43844, 1] (2 s of 22,050 Hz audio), outputs ``contour`` [N, 172, 264], ``note`` and
``onset`` [N, 172, 88], per-frame sigmoid maps.

The audio: the five music-on-hold tracks of Debian's ``asterisk-moh-opsound-wav``
(CC-BY-SA-3.0 music, 8 kHz mono; ``apt-get install asterisk-moh-opsound-wav``), resampled to
22,050 Hz (scipy ``resample_poly``), cut into non-overlapping 2 s windows, near-silent
windows dropped, shuffled with a fixed seed; the first ``--num_calibration`` windows
calibrate, the next ``--num_eval`` evaluate.

  python -m benchmarks.basic_pitch_outputs --out bench_basic_pitch    # about 5 minutes

Runs ``pipelines.convert`` (float32, float16, dynamic, int8 with --allow_float_ops) in a
subprocess and writes the per-output table, the warnings and the machine to
``benchmarks/results/basic_pitch_outputs.json``.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import numpy as np
from absl import app

from pipelines.common import define

_OUT = define("string", "out", None, "Output folder (default: bench_basic_pitch).")
_MODEL = define("string", "basic_pitch_model", "/work/corpus/files/basic_pitch_nmp/nmp",
                "The Basic Pitch nmp SavedModel folder.")
_AUDIO = define("string", "audio_glob", "/usr/share/asterisk/moh/*.wav",
                "16-bit mono WAV files to cut into windows.")
_NUM_CALIBRATION = define("integer", "num_calibration", 64, "Calibration windows.")
_NUM_EVAL = define("integer", "num_eval", 96, "Evaluation windows.")

RATE = 22050
WINDOW = 43844
SILENCE_RMS = 0.01
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                       "basic_pitch_outputs.json")


def read_windows(paths: list[str], seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Every non-silent 2 s window of the files at 22,050 Hz, shuffled: ``[N, 43844, 1]``."""
    import wave

    from scipy.signal import resample_poly

    windows, sources = [], []
    for path in sorted(paths):
        with wave.open(path) as f:
            if f.getsampwidth() != 2 or f.getnchannels() != 1:
                raise ValueError(f"{path}: expected 16-bit mono WAV")
            rate = f.getframerate()
            audio = np.frombuffer(f.readframes(f.getnframes()), "<i2").astype(np.float32) / 32768
        gcd = np.gcd(RATE, rate)
        audio = resample_poly(audio, RATE // gcd, rate // gcd).astype(np.float32)
        for start in range(0, len(audio) - WINDOW + 1, WINDOW):
            piece = audio[start:start + WINDOW]
            if np.sqrt(np.mean(piece**2)) >= SILENCE_RMS:
                windows.append(piece)
                sources.append(f"{os.path.basename(path)}@{start / RATE:.1f}s")
    order = np.random.default_rng(seed).permutation(len(windows))
    return np.stack(windows)[order][..., None], [sources[i] for i in order]


def main(argv) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    out = _OUT.value or "bench_basic_pitch"
    os.makedirs(out, exist_ok=True)
    x, sources = read_windows(glob.glob(_AUDIO.value))
    calib, evaluation = _NUM_CALIBRATION.value, _NUM_EVAL.value
    if len(x) < calib + evaluation:
        raise ValueError(f"only {len(x)} windows; need {calib + evaluation}")
    np.savez(os.path.join(out, "calibration.npz"), x=x[:calib])
    np.savez(os.path.join(out, "evaluation.npz"), x=x[calib:calib + evaluation])
    command = [sys.executable, "-m", "pipelines.convert", "--model", _MODEL.value,
               "--data", os.path.join(out, "calibration.npz"),
               "--eval_data", os.path.join(out, "evaluation.npz"),
               "--modes", "float32,float16,dynamic,int8", "--allow_float_ops",
               "--num_calibration_samples", str(calib), "--batch_size", "16",
               "--out", os.path.join(out, "convert"), "--quiet"]
    load_average = os.getloadavg()  # other work on the machine moves the latency figures
    done = subprocess.run(command, capture_output=True, text=True)
    sys.stderr.write(done.stderr[-4000:])
    if done.returncode not in (0, 3):
        return done.returncode
    with open(os.path.join(out, "convert", "report.json")) as f:
        report = json.load(f)
    summary = {
        "model": "basic-pitch 0.4.0 icassp_2022/nmp SavedModel (Apache-2.0)",
        "audio": {"files": sorted(os.path.basename(p) for p in glob.glob(_AUDIO.value)),
                  "package": "asterisk-moh-opsound-wav (CC-BY-SA-3.0)", "windows": len(x),
                  "calibration": calib, "evaluation": evaluation,
                  "first_eval_windows": sources[calib:calib + 5]},
        "machine": report["machine"], "created_utc": report["created_utc"],
        "load_average": [round(v, 2) for v in load_average],
        "versions": report["versions"], "output_tasks": report["output_tasks"],
        "modes": [{k: m.get(k) for k in ("mode", "size_bytes", "float_ops", "top1_agreement",
                                          "sqnr_db", "latency_ms", "per_output", "performance",
                                          "headline_output")} for m in report["modes"]],
        "warnings": report.get("warnings", []), "command": command[1:],
    }
    from tflq.fileio import write_atomic
    from tflq.report import to_json

    write_atomic(RESULTS, to_json(summary))
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    app.run(main)

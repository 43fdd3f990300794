r"""Copy a converted model, its labels and sample images into the Android demo's assets.

  python -m pipelines.demo_assets --report tflq_out/report.json --mode int8

Writes ``model.tflite``, ``labels.txt`` and ``samples/NNN_<label>.png`` (from an IDX images
file, the bundled evaluation slice by default). Every file is written atomically. Exit
codes: 0 success; 1 internal error (the traceback goes to a temporary file, never into the
app's assets); 2 bad input or flags, or a report whose gates failed (nothing written).
"""

from __future__ import annotations

import io
import json
import os

from absl import flags

from pipelines.common import check_no_arguments, define, guard, run_main

HERE = os.path.dirname(os.path.abspath(__file__))
FASHION_MNIST_LABELS = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                        "Shirt", "Sneaker", "Bag", "Ankle boot")

_REPORT = define("string", "report", None, "A tflq report.json (default: tflq_out/report.json).")
_MODE = define("string", "mode", "int8", "Which converted model of the report to ship (pipelines.explore: "
               "to show).")
_ASSETS = flags.DEFINE_string(
    "assets", os.path.join(os.path.dirname(HERE), "android_demo", "app", "src", "main", "assets"),
    "The app's assets folder.")
_SAMPLES = flags.DEFINE_string(
    "samples", os.path.join(HERE, "example", "evaluation-images-idx3-ubyte.gz"),
    "IDX images file to take sample images from (labels from its sibling file).")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 8, "How many sample images.")
_LABELS = flags.DEFINE_string("labels", None, "A labels file (one per line); default: the "
                              "Fashion-MNIST class names.")


def export_assets(report_path: str, mode: str, assets: str, samples: str, num_samples: int,
                  labels_path: str | None = None) -> list[str]:
    """Copies the chosen model, labels and sample PNGs into ``assets``; returns the paths.

    Raises:
      ValueError: missing or invalid report, unknown mode, a gate that failed, bad samples.
    """
    from PIL import Image

    from tflq.data import idx_labels_path, read_idx
    from tflq.fileio import write_atomic
    from tflq.runtime import check_output_dir

    try:
        with open(report_path) as f:
            report = json.load(f)
    except FileNotFoundError as e:
        raise ValueError(f"Report not found: {report_path!r}") from e
    except json.JSONDecodeError as e:
        raise ValueError(f"Report {report_path!r} is not valid JSON: {e}") from e
    modes = {m["mode"]: m for m in report.get("modes", [])}
    if mode not in modes:
        raise ValueError(f"Report {report_path!r} has no {mode!r} model. Available: {sorted(modes)}")
    if not report.get("gates", {}).get("passed", True):
        raise ValueError(f"Report {report_path!r} failed its quality gates "
                         f"({'; '.join(report['gates']['failures'])}); refusing to ship it.")
    if not isinstance(modes[mode].get("path"), str):
        raise ValueError(f"Report {report_path!r}: the {mode!r} model has no 'path'.")
    model_path = os.path.join(os.path.dirname(os.path.abspath(report_path)), modes[mode]["path"])
    if not os.path.isfile(model_path):
        raise ValueError(f"Model {model_path!r} named by the report is missing.")
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0. Received: {num_samples}")
    if labels_path:
        try:
            with open(labels_path) as f:
                labels = [ln.strip() for ln in f if ln.strip()]
        except FileNotFoundError as e:
            raise ValueError(f"Labels file not found: {labels_path!r} (--labels).") from e
        except UnicodeDecodeError as e:
            raise ValueError(f"Labels file {labels_path!r} is not text: {e}") from e
        if not labels:
            raise ValueError(f"Labels file {labels_path!r} is empty (one label per line).")
    else:
        labels = list(FASHION_MNIST_LABELS)
    images = read_idx(samples)[:num_samples] if num_samples else []
    sample_labels_file = idx_labels_path(samples)
    sample_labels = read_idx(sample_labels_file)[:num_samples] if sample_labels_file else None
    check_output_dir(assets)
    files = {"model.tflite": open(model_path, "rb").read(),
             "labels.txt": ("\n".join(labels) + "\n").encode()}
    for i, image in enumerate(images):
        name = f"{i:03d}"
        if sample_labels is not None and int(sample_labels[i]) < len(labels):
            slug = labels[int(sample_labels[i])].lower().replace("/", "_").replace(" ", "_")
            name += f"_{slug}"
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        files[os.path.join("samples", name + ".png")] = buffer.getvalue()
    written = []
    for relative, content in files.items():
        path = os.path.join(assets, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_atomic(path, content)
        written.append(path)
    return written


def main(argv) -> int:
    """Runs the command under the exit-code contract (see :func:`pipelines.common.guard`).

    The assets folder is packaged into the app, so error.log and tflq.log never go there.
    """
    return guard(lambda: _export(argv), None)


def _export(argv) -> int:
    check_no_arguments(argv)
    written = export_assets(_REPORT.value or "tflq_out/report.json", _MODE.value, _ASSETS.value,
                            _SAMPLES.value, _NUM_SAMPLES.value, _LABELS.value)
    print(f"wrote {len(written)} files to {os.path.abspath(_ASSETS.value)}")
    return 0


def run() -> None:
    """``python -m pipelines.demo_assets``."""
    run_main(main, lambda: None)


if __name__ == "__main__":
    run()

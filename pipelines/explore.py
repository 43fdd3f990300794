"""Show a quantized .tflite in Google's Model Explorer with its per-layer error overlaid.

  python -m pipelines.explore --report tflq_out/report.json --mode int8
  python -m pipelines.explore --report tflq_out/report.json --mode int16x8 --write_only

Writes ``<model>.sqnr_cumulative.json`` and ``<model>.sqnr_layer.json`` (Model Explorer node
data: every op coloured by its SQNR, the real model and each op alone) beside the mode's
.tflite, then starts Model Explorer on http://127.0.0.1:PORT (loopback only) with the model
and both overlays until Ctrl+C. Needs ``pip install 'tflq[explore]'``.

Exit codes: 0 success; 2 bad input (missing report, unknown mode, no per-layer error, Model
Explorer missing): one ``error:`` line, nothing written.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags, logging

from pipelines.common import define

HOST = "127.0.0.1"  # never listen beyond this machine

_REPORT = define("string", "report", None, "A tflq report.json (default: tflq_out/report.json).")
_MODE = define("string", "mode", "int8", "Which converted model of the report to ship (pipelines.explore: "
               "to show).")
_PORT = flags.DEFINE_integer("port", 8080, "Model Explorer port on 127.0.0.1.")
_WRITE_ONLY = flags.DEFINE_bool("write_only", False, "Write the node data files and exit "
                                "(load them in a Model Explorer of your own).")


def load_report(path: str) -> dict:
    """report.json as a dict (ValueError naming the file when it is missing or not JSON)."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError as e:
        raise ValueError(f"Report not found: {path}") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not a tflq report.json: {e}") from e


def main(argv) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}", exitcode=2)
    logging.set_verbosity(logging.WARNING)
    from tflq import explorer

    path = _REPORT.value or os.path.join("tflq_out", "report.json")
    try:
        if not 0 < _PORT.value < 65536:
            raise ValueError(f"--port must be in 1..65535. Received: {_PORT.value}")
        report = load_report(path)
        if not isinstance(report, dict) or "modes" not in report:
            raise ValueError(f"{path} is not a tflq report.json (no 'modes').")
        tflite, written = explorer.write_node_data(report, os.path.dirname(os.path.abspath(path)),
                                                   _MODE.value)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("wrote " + ", ".join(written))
    if _WRITE_ONLY.value:
        return 0
    import model_explorer

    model_explorer.visualize_from_config(explorer.explorer_config(tflite, written), host=HOST,
                                         port=_PORT.value, no_open_in_browser=True)
    return 0


if __name__ == "__main__":
    app.run(main)

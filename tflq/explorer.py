"""Per-layer error as Model Explorer overlays: node data files that colour every op of a
.tflite by its SQNR, and the Model Explorer configuration that shows the model with them.

Uses Google's Model Explorer (``pip install 'tflq[explore]'``, PyPI
``ai-edge-model-explorer``): its ``node_data_builder`` classes write the files and its
built-in TFLite adapter supplies the graph the node ids are checked against (an op's node
id is its index in the .tflite's first subgraph, the ``index`` of a ``layers`` row).
No TensorFlow.
"""

from __future__ import annotations

import math
import os

__all__ = ["VIEWS", "SQNR_CAP_DB", "THRESHOLDS", "load_graph", "node_data", "write_node_data",
           "explorer_config"]

VIEWS = {"cumulative": "sqnr_db", "layer": "layer_sqnr_db"}  # file suffix -> row field

# Model Explorer values are plain JSON numbers: an exact op (infinite SQNR) is written as this.
SQNR_CAP_DB = 200.0

# (upper bound in dB, colour): ≤10 dB red … ≤40 dB yellow, above that green.
THRESHOLDS = ((10.0, "#b91c1c"), (20.0, "#ef4444"), (30.0, "#f97316"), (40.0, "#facc15"),
              (SQNR_CAP_DB, "#4ade80"))


def _require():
    try:
        from model_explorer import node_data_builder
    except ImportError as e:
        raise ValueError("Model Explorer is not installed: pip install 'tflq[explore]' "
                         "(ai-edge-model-explorer).") from e
    return node_data_builder


def load_graph(tflite_path: str) -> tuple[str, set[str]]:
    """``(graph id, node ids)`` of the .tflite's main graph as Model Explorer's own TFLite
    adapter builds it."""
    _require()
    from model_explorer.builtin_tflite_flatbuffer_adapter import BuiltinTfliteFlatbufferAdapter

    collections = BuiltinTfliteFlatbufferAdapter().convert(tflite_path, {})["graphCollections"]
    graph = collections[0].graphs[0]
    return graph["id"], {node["id"] for node in graph["nodes"]}


def _value(value) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):  # "inf" / "-inf" as report.json writes them
        value = float(value)
    return max(min(float(value), SQNR_CAP_DB), -SQNR_CAP_DB) if not math.isnan(value) else None


def node_data(mode_row: dict, graph_id: str, view: str):
    """A ``node_data_builder.GraphNodeData`` colouring each matched op of a mode row by SQNR.

    Args:
      mode_row: a ``report["modes"]`` row with ``layers``.
      graph_id: the Model Explorer graph id (see :func:`load_graph`).
      view: ``cumulative`` (the real model) or ``layer`` (each op alone).

    Returns:
      ``(ModelNodeData, GraphNodeData)``.

    Raises:
      ValueError: unknown view, or a row without per-layer error.
    """
    builder = _require()
    if view not in VIEWS:
        raise ValueError(f"Unknown view {view!r}. Available: {sorted(VIEWS)}")
    if "layers" not in mode_row:
        raise ValueError(f"Mode {mode_row.get('mode')!r} has no per-layer error in the report "
                         "(float32, or run with --layer_error_samples > 0).")
    results = {}
    for row in mode_row["layers"]:
        value = _value(row.get(VIEWS[view])) if row.get("matched") else None
        if value is not None:
            results[str(row["index"])] = builder.NodeDataResult(value=value)
    graph = builder.GraphNodeData(
        results=results, name=f"{mode_row['mode']} SQNR dB ({view})",
        thresholds=[builder.ThresholdItem(value=v, bgColor=c) for v, c in THRESHOLDS])
    return builder.ModelNodeData(graphsData={graph_id: graph}), graph


def write_node_data(report: dict, report_dir: str, mode: str) -> tuple[str, list[str]]:
    """Writes ``<model>.sqnr_<view>.json`` beside the mode's .tflite for both views.

    Every node id written is checked against the graph Model Explorer builds from the file;
    a missing id is tflq's bug (RuntimeError).

    Returns:
      ``(.tflite path, [node data paths])``.

    Raises:
      ValueError: unknown mode, missing .tflite or no per-layer error for the mode.
    """
    from tflq.fileio import write_atomic

    rows = {m["mode"]: m for m in report["modes"]}
    if mode not in rows:
        raise ValueError(f"Unknown mode {mode!r} in the report. Available: {sorted(rows)}")
    tflite = os.path.join(report_dir, rows[mode]["path"])
    if not os.path.isfile(tflite):
        raise ValueError(f"The report's .tflite for mode {mode!r} is missing: {tflite}")
    graph_id, node_ids = load_graph(tflite)
    paths = []
    for view in VIEWS:
        model_data, graph = node_data(rows[mode], graph_id, view)
        unknown = sorted(set(graph.results) - node_ids)
        if unknown:
            raise RuntimeError(f"internal error: node ids {unknown} are not in {tflite}'s graph")
        path = f"{os.path.splitext(tflite)[0]}.sqnr_{view}.json"
        write_atomic(path, model_data.to_json_string(indent=1).encode())
        paths.append(path)
    return tflite, paths


def explorer_config(tflite: str, node_data_paths: list[str]):
    """A Model Explorer config with the model and its node data files."""
    _require()
    import model_explorer

    config = model_explorer.config().add_model_from_path(tflite)
    for path in node_data_paths:
        config.add_node_data_from_path(path)
    return config

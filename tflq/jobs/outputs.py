"""Per-output validation and performance warnings of a job's modes.

Every output of every mode gets its own group (``row["per_output"][name]``): the common
errors and the metrics of the output's task (:mod:`tflq.task_metrics`), the task chosen by
``output_tasks`` or inferred from the output's shape and final activation
(:mod:`tflq.output_tasks`), with the reason written in the report. A quantized mode slower
than float32 at the same thread count, or float ops splitting it into quantize/dequantize
islands, gets a warning naming the ops (:func:`tflq.tflite_inspect.quantize_islands`).
"""

from __future__ import annotations

from tflq import task_metrics

__all__ = ["SLOWER_MARGIN", "SLOWER_MIN_MS", "OutputObserver", "choose_tasks", "headline_output",
           "tasks_section", "add_per_output", "performance_warnings", "check_names", "start",
           "complete"]

# Interleaved medians on a shared machine move by a few percent between runs: a mode counts as
# slower than float32 when its median latency exceeds float32's by more than this factor.
SLOWER_MARGIN = 1.05
# ... and by more than this many milliseconds (below it, tiny models' medians are timer noise).
SLOWER_MIN_MS = 0.05


def choose_tasks(model, output_tasks) -> tuple[list, list[dict]]:
    """``(tasks, activations)`` of a :class:`tflq.models.LoadedModel`'s outputs;
    ``output_tasks``: the job's ``(name, task)`` pairs.

    Raises:
      ValueError: ``output_tasks`` names no output of the model or an unknown task.
    """
    from tflq import output_tasks as found_tasks

    names = list(model.output_names)
    overrides = dict(output_tasks or ())
    task_metrics.check_output_names(list(overrides), names, "output_tasks")
    activations = found_tasks.output_activations(model)
    tasks = task_metrics.choose_tasks(names, [a["shape"] for a in activations],
                                      [a["activation"] for a in activations], overrides)
    return tasks, activations


def headline_output(tasks) -> int:
    """The output the mode rows' headline columns (accuracy, top-1 agreement) count: the
    first classification output, else output 0."""
    return next((i for i, t in enumerate(tasks) if t.task == "classification"), 0)


def tasks_section(tasks, activations, headline: int, why: str | None = None) -> dict:
    """report["output_tasks"]: per output, its task, why, threshold, shape and the activation
    read from the graph; and which output the headline columns measure."""
    outputs = {t.name: {**t.to_dict(), "shape": None if a["shape"] is None else list(a["shape"]),
                        "activation": a["activation"], "activation_source": a["source"]}
               for t, a in zip(tasks, activations, strict=True)}
    for row in outputs.values():
        row.pop("name")
    name = tasks[headline].name
    if why is None and tasks[headline].task == "classification":
        why = "its first classification output"
    elif why is None:
        why = (f"output {headline}, measured as {tasks[headline].task}, not classification: the "
               "headline top-1 agreement is an arg-max over it; read its task metrics instead")
    return {"outputs": outputs, "headline": {"output": name, "why": why}}


class OutputObserver:
    """Observer of :func:`tflq.jobs.common.evaluate`: every runner's outputs against the float
    model's, output by output, streamed; class labels count for the headline output."""

    def __init__(self, tasks, keys, headline: int):
        self.tasks, self.headline = list(tasks), headline
        self.metrics = {key: [task_metrics.OutputMetrics(t) for t in self.tasks] for key in keys}

    def __call__(self, batch, labels, reference, outputs):
        for key, found in outputs.items():
            key = getattr(key, "value", key)  # a tflq.options.Mode
            if key not in self.metrics:
                continue
            for i, accumulator in enumerate(self.metrics[key]):
                accumulator.update(reference[i], found[i],
                                   labels if i == self.headline else None)

    def result(self, key) -> dict:
        """``{output name: group}`` for one runner."""
        return {t.name: m.result() for t, m in zip(self.tasks, self.metrics[key], strict=True)}


def add_per_output(mode_rows: list[dict], observer: OutputObserver, headline: str) -> None:
    """Puts each mode's per-output groups and the headline output's name in its row."""
    for row in mode_rows:
        if row["mode"] in observer.metrics:
            row["per_output"] = observer.result(row["mode"])
            row["headline_output"] = headline


def performance_warnings(mode_rows: list[dict], contents: dict[str, bytes], num_threads: int,
                         float32_latency: dict | None = None) -> list[str]:
    """Adds ``row["performance"]`` to every mode but float32 and returns one warning line per
    mode slower than float32 (median latency, same threads, beyond :data:`SLOWER_MARGIN` and
    :data:`SLOWER_MIN_MS`; ``float32_latency`` when no row is float32) or
    split by float ops into quantize/dequantize islands, naming the ops responsible."""
    from tflq import tflite_inspect

    base = next((r for r in mode_rows if r["mode"] == "float32"), None)
    if base is None and float32_latency is not None:
        base = {"latency_ms": float32_latency}
    warnings = []
    for row in mode_rows:
        if row["mode"] == "float32" or row["mode"] not in contents:
            continue
        islands = tflite_inspect.quantize_islands(contents[row["mode"]])
        ratio = (row["latency_ms"]["median"] / base["latency_ms"]["median"]
                 if base and base["latency_ms"]["median"] > 0 else None)
        slower = ratio is not None and ratio > SLOWER_MARGIN and (
            row["latency_ms"]["median"] - base["latency_ms"]["median"] > SLOWER_MIN_MS)
        row["performance"] = {**islands, "latency_vs_float32": ratio, "slower": slower,
                              "num_threads": num_threads}
        inserted = islands["quantize"] + islands["dequantize"]
        if not slower and not inserted:
            continue
        ops = ", ".join(f"{op}×{n}" for op, n in sorted(
            islands["by_type"].items(), key=lambda item: -item[1])) or "none found"
        line = f"{row['mode']}: "
        if slower:
            line += (f"{ratio:.2f}× slower than float32 ({row['latency_ms']['median']:.3f} vs "
                     f"{base['latency_ms']['median']:.3f} ms median, batch 1, {num_threads} "
                     "thread(s))")
        if inserted:
            line += ("; " if slower else "") + (
                f"float ops split the graph: {islands['quantize']} QUANTIZE and "
                f"{islands['dequantize']} DEQUANTIZE op(s) inserted around {ops}")
        elif row["float_ops"]:
            line += f"; {len(row['float_ops'])} op(s) run in float"
        warnings.append(line)
    return warnings


def check_names(model, output_tasks, gates) -> None:
    """Raises ValueError when ``output_tasks`` or a gate rule names an output the model does
    not have (cheap: run it before anything long)."""
    from tflq import output_gates

    names = list(model.output_names)
    task_metrics.check_output_names([n for n, _ in output_tasks or ()], names, "output_tasks")
    named = [output_gates.parse_gate(rule).output for rule in gates.gate]
    task_metrics.check_output_names([n for n in named if n], names, "--gate")


def start(model, output_tasks, gates, keys, headline: int | None = None) -> OutputObserver:
    """Chooses every output's task and checks that the gates name outputs the model has
    (ValueError otherwise, before anything runs); returns the observer for
    :func:`tflq.jobs.common.evaluate` (its ``headline`` is the output the headline columns
    count: ``headline``, or the first classification output; ``section`` is the report's
    ``output_tasks``)."""
    check_names(model, output_tasks, gates)
    tasks, activations = choose_tasks(model, output_tasks)
    given = headline is not None
    headline = headline_output(tasks) if headline is None else headline
    why = ("the first classification head of the training losses"
           if given and tasks[headline].task == "classification" else None)
    observer = OutputObserver(tasks, keys, headline)
    observer.section = tasks_section(tasks, activations, headline, why)
    return observer


def complete(mode_rows: list[dict], observer: OutputObserver, contents: dict[str, bytes],
             num_threads: int, float32_latency: dict | None = None) -> list[str]:
    """Puts the per-output groups and performance figures in the mode rows; returns the
    performance warnings (``float32_latency``: float32's, when no row is float32)."""
    add_per_output(mode_rows, observer, observer.section["headline"]["output"])
    return performance_warnings(mode_rows, contents, num_threads, float32_latency)

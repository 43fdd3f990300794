"""What :func:`tflq.convert`, :func:`tflq.qat`, :func:`tflq.compress` and
:func:`tflq.preflight` return: the report, every output file as bytes, per-mode results, a
way to pick the best mode, to save what the command line writes, and a rendering of the
report for Jupyter (``_repr_html_``: report.html; ``_repr_markdown_``: report.md)."""

from __future__ import annotations

import dataclasses
import html

from tflq import report, report_html, runtime
from tflq.jobs.common import JobResult, write_files

__all__ = ["ModeResult", "Result", "HIGHER_IS_BETTER", "LOWER_IS_BETTER"]

# Metrics of a report["modes"] row that :meth:`Result.best` ranks, by direction.
HIGHER_IS_BETTER = ("top1_agreement", "accuracy", "sqnr_db", "cosine")
LOWER_IS_BETTER = ("max_abs_error", "accuracy_drop_pp", "size_bytes", "latency_ms")

# Height of the frame the report page is shown in inside a notebook (it scrolls inside).
_FRAME_HEIGHT_PX = 720


@dataclasses.dataclass(frozen=True)
class ModeResult:
    """One converted model: its mode, file name, .tflite bytes and report row.

    Attributes:
      mode: ``int8``, ``float16``, ``litert:static_wi8_ai8``, ...
      name: the .tflite file name the command line writes.
      tflite: the .tflite model bytes.
      metrics: the report.json row (size, accuracy, agreement, SQNR, cosine, latency, ...).
    """

    mode: str
    name: str
    tflite: bytes = dataclasses.field(repr=False)
    metrics: dict = dataclasses.field(repr=False)

    @property
    def size_bytes(self) -> int:
        return len(self.tflite)

    @property
    def float_ops(self) -> list:
        """Ops left in float in the .tflite."""
        return list(self.metrics["float_ops"])

    @property
    def latency_ms(self) -> dict:
        """Batch-1 latency on this machine: median, p90, ... in milliseconds."""
        return dict(self.metrics["latency_ms"])

    def save(self, path: str) -> str:
        """Writes the .tflite to ``path`` atomically; returns the path."""
        from tflq.fileio import write_atomic

        write_atomic(path, self.tflite)
        return path


class Result:
    """A job run in memory: nothing is written until :meth:`save`.

    Attributes:
      report: the report.json dict.
      files: every output file by name, as bytes (what :meth:`save` writes).
      modes: ``{mode: ModeResult}`` in report order (empty for preflight).
      exit_code: what the command line would exit with (0, or 3 when a gate failed).
      gate_failures: one line per failed quality gate.
    """

    def __init__(self, job_result: JobResult, kind: str = "convert"):
        self.kind = kind
        self.report = job_result.report
        self.files = dict(job_result.contents)
        self.exit_code = job_result.exit_code
        self.gate_failures = job_result.gate_failures
        self.modes = {row["mode"]: ModeResult(row["mode"], row["path"], self.files[row["path"]],
                                              row)
                      for row in self.report.get("modes", ())}

    def __repr__(self) -> str:
        modes = ", ".join(self.modes) or "none"
        gates = "passed" if not self.gate_failures else f"FAILED: {'; '.join(self.gate_failures)}"
        source = self.report["model"]["source"] if isinstance(self.report.get("model"), dict) \
            else self.report.get("model")
        return f"<tflq {self.kind} result: {source}, modes: {modes}, gates {gates}>"

    def best(self, metric: str = "top1_agreement", max_size: int | None = None) -> ModeResult:
        """The mode best on ``metric`` among those of at most ``max_size`` bytes.

        Args:
          metric: one of :data:`HIGHER_IS_BETTER` or :data:`LOWER_IS_BETTER` (``latency_ms``
            ranks the median). Modes without a value (accuracy without labels) are skipped.
          max_size: largest .tflite size in bytes (None: any).

        Raises:
          ValueError: an unknown metric, or no mode has a value within ``max_size``.
        """
        if metric not in HIGHER_IS_BETTER + LOWER_IS_BETTER:
            raise ValueError(f"Unknown metric {metric!r}. Available: "
                             f"{sorted(HIGHER_IS_BETTER + LOWER_IS_BETTER)}")
        if not self.modes:
            raise ValueError(f"A {self.kind} result has no converted modes to choose from.")

        def value(mode: ModeResult):
            found = mode.metrics.get(metric)
            return found["median"] if metric == "latency_ms" and found is not None else found

        fitting = [m for m in self.modes.values()
                   if value(m) is not None and (max_size is None or m.size_bytes <= max_size)]
        if not fitting:
            sizes = {m.mode: m.size_bytes for m in self.modes.values()}
            raise ValueError(f"No mode has {metric} within max_size={max_size} bytes. "
                             f"Received modes and sizes: {sizes}")
        sign = 1.0 if metric in HIGHER_IS_BETTER else -1.0
        return max(fitting, key=lambda m: sign * float(value(m)))

    def save(self, out: str) -> list[str]:
        """Writes exactly what the command line writes for this run into ``out``, each file
        atomically; returns the paths.

        Raises:
          ValueError: ``out`` is a file, sits under a file, or is not writable (nothing is
            written).
        """
        runtime.check_output_dir(out)
        return write_files(out, self.files)

    def _repr_markdown_(self) -> str:
        if "modes" not in self.report:  # preflight
            return self.files["preflight.md"].decode()
        return report.to_markdown(self.report)

    def _repr_html_(self) -> str | None:
        """report.html in a frame (its styles stay inside), as Jupyter shows it."""
        if "modes" not in self.report:
            return None  # Jupyter falls back to the Markdown
        page = report_html.to_html(self.report)
        return (f'<iframe srcdoc="{html.escape(page, quote=True)}" title="tflq report" '
                f'style="width:100%;height:{_FRAME_HEIGHT_PX}px;border:1px solid #d9dee7">'
                "</iframe>")

"""Quality gates written as expressions: ``[output:]metric OP value`` (``onset:f1>=0.95``,
``sqnr_db>=30``), checked against the per-mode rows of a report.

With an output name the metric is read from that output's group (``row["per_output"]``:
every task metric of :mod:`tflq.task_metrics` and the common errors); without one, from the
mode row's headline columns (:data:`ROW_METRICS`). Pure Python, no TensorFlow.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import re

from tflq.task_metrics import COMMON_METRICS, TASK_METRICS

__all__ = ["ROW_METRICS", "OUTPUT_METRICS", "GateRule", "parse_gate", "check_rules"]

ROW_METRICS = ("top1_agreement", "accuracy", "accuracy_drop_pp", "sqnr_db", "cosine",
               "max_abs_error")
OUTPUT_METRICS = tuple(sorted({*COMMON_METRICS, *(m for ms in TASK_METRICS.values() for m in ms)}))
_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
_RULE = re.compile(r"^\s*(?:([^:<>=\s][^:<>=]*?)\s*:\s*)?([A-Za-z0-9_]+)\s*(>=|<=|>|<)\s*"
                   r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


@dataclasses.dataclass(frozen=True)
class GateRule:
    """One parsed gate: ``output`` (None: the mode row), ``metric``, ``op``, ``value``."""

    output: str | None
    metric: str
    op: str
    value: float
    text: str


def parse_gate(text: str) -> GateRule:
    """Parses ``[output:]metric OP value`` with OP one of >=, <=, >, <.

    Raises:
      ValueError: malformed text, or a metric that no row (no output) has.
    """
    found = _RULE.match(text) if isinstance(text, str) else None
    if not found:
        raise ValueError("A gate must read [output:]metric OP value with OP one of >=, <=, >, < "
                         f"(e.g. 'onset:f1>=0.95' or 'sqnr_db>=30'). Received: {text!r}")
    output, metric, op, value = found.groups()
    known = OUTPUT_METRICS if output else ROW_METRICS
    if metric not in known:
        where = f"output {output!r}" if output else "a mode row (name an output for task metrics)"
        raise ValueError(f"Unknown gate metric {metric!r} for {where}. Available: {list(known)}")
    return GateRule(output, metric, op, float(value), text.strip())


def check_rules(rules, modes: list[dict]) -> list[str]:
    """One line per rule a mode breaks, or cannot be checked on (the metric missing for that
    mode or output, e.g. accuracy without labels or an output measured as another task)."""
    failures = []
    for m in modes:
        for rule in rules:
            if rule.output is None:
                value = m.get(rule.metric)
            else:
                group = m.get("per_output", {}).get(rule.output)
                if group is None:
                    failures.append(f"{m['mode']}: gate {rule.text}: no per-output metrics for "
                                    f"output {rule.output!r}")
                    continue
                value = group.get(rule.metric)
            if value is None or (isinstance(value, float) and math.isnan(value)):
                failures.append(f"{m['mode']}: gate {rule.text}: {rule.metric} was not measured "
                                "(no labels, or the output is measured as another task)")
            elif not _OPS[rule.op](float(value), rule.value):
                failures.append(f"{m['mode']}: gate {rule.text} failed: {rule.metric} = "
                                f"{float(value):.4g}")
    return failures

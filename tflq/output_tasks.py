"""The task of each output of a loaded model (:mod:`tflq.task_metrics`), from its shape and
the final activation found in the model's graph.

The graph is read, not the Keras layers, so a SavedModel without Keras metadata is read the
same way as a Keras model: the op that produces each output is followed back through ops
that only move values around (Identity, Reshape, Squeeze, Transpose, …) to the first op that
computes; Softmax and Sigmoid name the activation, other activations (Relu, Tanh, …) name
theirs, anything else is linear.
"""

from __future__ import annotations

from tflq import task_metrics

__all__ = ["PASS_THROUGH_OPS", "ACTIVATION_OPS", "output_activations", "model_tasks"]

PASS_THROUGH_OPS = frozenset({"Identity", "IdentityN", "Reshape", "Squeeze", "ExpandDims",
                              "Transpose", "StopGradient", "Cast", "EnsureShape"})
ACTIVATION_OPS = {"Softmax": "softmax", "LogSoftmax": "log_softmax", "Sigmoid": "sigmoid",
                  "Relu": "relu", "Relu6": "relu6", "Elu": "elu", "Selu": "selu",
                  "Softplus": "softplus", "Tanh": "tanh", "LeakyRelu": "leaky_relu"}
_MAX_STEPS = 32


def _activation_of(tensor) -> tuple[str, str]:
    """``(activation, the op it was read from)`` for one graph tensor."""
    for _ in range(_MAX_STEPS):
        op = tensor.op
        if op.type in ACTIVATION_OPS:
            return ACTIVATION_OPS[op.type], f"{op.type} op {op.name!r}"
        if op.type not in PASS_THROUGH_OPS or not op.inputs:
            return "linear", f"{op.type} op {op.name!r}"
        tensor = op.inputs[tensor.value_index if op.type == "IdentityN" else 0]
    return "linear", "no activation within 32 ops"


def output_activations(model) -> list[dict]:
    """Per output of a :class:`tflq.models.LoadedModel`, in ``output_names`` order:
    ``{"shape": (None, …), "activation": str or None, "source": where it was read}``.

    The graph is frozen first (function calls inlined); a graph that cannot be traced or
    frozen gives shape and activation None, which :func:`tflq.task_metrics.infer_task` takes
    as regression and says so.
    """
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    try:
        function = model.graph_function()
        shapes = [tuple(None if d is None else int(d) for d in t.shape) for t in function.outputs]
        tensors = list(convert_variables_to_constants_v2(function).outputs)
    except Exception as e:  # noqa: BLE001 - an unreadable graph only loses the inference
        reason = f"graph not readable ({type(e).__name__})"
        return [{"shape": None, "activation": None, "source": reason}
                for _ in model.output_names]
    found = []
    for shape, tensor in zip(shapes, tensors, strict=True):
        activation, source = _activation_of(tensor)
        found.append({"shape": shape, "activation": activation, "source": source})
    return found


def model_tasks(model, overrides=None) -> list[task_metrics.OutputTask]:
    """The :class:`tflq.task_metrics.OutputTask` of every output (``overrides``:
    ``{output name: task}``, e.g. from ``--output_tasks``).

    Raises:
      ValueError: an override names no output of the model, or an unknown task.
    """
    names = list(model.output_names)
    task_metrics.check_output_names(list(dict(overrides or {})), names, "output_tasks")
    found = output_activations(model)
    return task_metrics.choose_tasks(names, [f["shape"] for f in found],
                                     [f["activation"] for f in found], overrides)

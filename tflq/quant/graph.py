"""Rebuilding a tf_keras Functional graph layer by layer, before QAT wrapping.

``tf_keras.models.clone_model`` maps one layer to one layer. Some models need more than
that before tfmot can wrap them:

* models nested inside models (ConvNeXt's stem and downsampling blocks) are inlined, so
  every inner layer is wrapped like any other;
* a fused activation that TFLite does not fuse (``swish``, ``elu``, ``relu6`` outside
  tfmot's list, …) is split off its Conv/Dense into an ``Activation`` layer, so both the
  pre-activation and the activation output get quantized (TFLite runs ``x·sigmoid(x)`` as
  LOGISTIC + MUL, each needing int8 inputs);
* ``LayerNormalization`` over the last axis is decomposed into quantizable steps
  (mean, centre, variance, rsqrt, scale and shift), the same ops TFLite runs;
* a Dense layer on a 4-D tensor becomes the equivalent 1×1 Conv2D;
* ConvNeXt's ``LayerScale`` (x·γ per channel) becomes a 1×1 depthwise convolution, and a
  TFOpLambda adding, multiplying or subtracting two Keras tensors becomes an
  Add/Multiply/Subtract layer (tfmot cannot wrap TFOpLambda).

:func:`rebuild` copies every layer (fresh layers from their configs; a layer shared by
several calls stays shared) and its weights; float outputs are unchanged up to float
rounding.
"""

from __future__ import annotations

import numpy as np

from tflq.quant.fold import fold_batch_norms, replace_scalar_op_lambdas
from tflq.quant.layers import LayerNormStep, ScalarOp
from tflq.saved_model_graph import is_revived

__all__ = ["KEEP_FUSED", "needs_split", "decomposable_layer_norm", "binary_merge",
    "dense_on_feature_map", "is_layer_scale", "is_separable_2d", "locate_by_name", "nested_models",
    "needs_rebuild", "rebuild", "prepare", "REWRITE_RTOL", "synthetic_samples", "opaque_layers"]

# tfmot's QuantizeAwareActivation handles these fused activations itself (TFLite fuses
# ReLU, and gives sigmoid/softmax/tanh outputs a fixed scale); any other is split off.
KEEP_FUSED = {"linear", "relu", "sigmoid", "softmax", "tanh", "gelu"}
_WEIGHT_LAYERS = {"Conv1D", "Conv2D", "Conv2DTranspose", "DepthwiseConv2D", "Dense",
                  "SeparableConv1D", "SeparableConv2D"}


def _activation_name(layer) -> str:
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", "linear") if activation is not None else "linear"


def needs_split(layer) -> bool:
    """A weight layer whose fused activation tfmot cannot quantize on both sides."""
    return type(layer).__name__ in _WEIGHT_LAYERS and _activation_name(layer) not in KEEP_FUSED


def decomposable_layer_norm(layer) -> bool:
    if type(layer).__name__ != "LayerNormalization":
        return False
    rank = len(layer.input_shape)
    return list(layer.axis) in ([-1], [rank - 1])


_BINARY_OPS = {"__operators__.add": "Add", "math.add": "Add", "math.multiply": "Multiply",
               "__operators__.sub": "Subtract", "math.subtract": "Subtract"}


def binary_merge(layer, node=None) -> str | None:
    """The Keras merge layer (Add/Multiply/Subtract) for a TFOpLambda that combines two
    Keras tensors (``inputs + x`` in ConvNeXt), which tfmot cannot wrap; None otherwise."""
    if type(layer).__name__ != "TFOpLambda":
        return None
    kind = _BINARY_OPS.get(layer.get_config().get("function"))
    nodes = [node] if node is not None else layer._inbound_nodes
    if kind is None or not nodes:
        return None
    for n in nodes:
        if len(n._keras_inputs_ids_and_indices) != 2 or len(_operands(n.call_args,
                                                                       n.call_kwargs)) != 2:
            return None
    return kind


def _operands(args, kwargs) -> list:
    return list(args) + [v for k, v in kwargs.items() if k != "name"]


def dense_on_feature_map(layer) -> bool:
    """A Dense layer applied to a 4-D tensor (ConvNeXt's pointwise layers): it becomes a 1×1
    Conv2D with the same weights, which TFLite runs as one int8 CONV_2D (a Dense there
    leaves its reshape and bias add in float)."""
    if type(layer).__name__ != "Dense" or len(layer._inbound_nodes) < 1:
        return False
    shape = layer.input_shape
    return isinstance(shape, tuple) and len(shape) == 4


def is_layer_scale(layer) -> bool:
    """ConvNeXt's LayerScale: ``x · γ`` with one γ per channel."""
    return type(layer).__name__ == "LayerScale" and getattr(layer, "gamma", None) is not None


def nested_models(model) -> list[str]:
    from tflq.models import tf_keras

    return [layer.name for layer in model.layers if isinstance(layer, tf_keras.Model)]


def is_separable_2d(layer) -> bool:
    """A SeparableConv2D: split here into DepthwiseConv2D + 1×1 Conv2D with names of its own
    (tfmot's own split names its new layers ``conv2d_N``, which can collide with the model's
    layer names and rewire the graph)."""
    return type(layer).__name__ == "SeparableConv2D"


def needs_rebuild(model) -> bool:
    return bool(nested_models(model)) or any(is_separable_2d(layer) or
        needs_split(layer) or decomposable_layer_norm(layer) or is_layer_scale(layer)
        or dense_on_feature_map(layer)
        or binary_merge(layer) for layer in model.layers)


def _per_channel(name, input_shape, scale, shift, claim, weight_plan):
    """x·scale (+ shift) per channel as a 1×1 DepthwiseConv2D (int8 weights under QAT),
    reshaping inputs that are not 4-D to (N, everything else, 1, C) and back."""
    from tflq.models import tf_keras

    layers = tf_keras.layers
    shape = tuple(input_shape[1:])
    channels = shape[-1]
    conv = layers.DepthwiseConv2D(1, use_bias=shift is not None, name=claim(f"{name}_affine"))
    kernel = np.asarray(scale, np.float32).reshape(1, 1, channels, 1)
    weight_plan.append((conv, [kernel] if shift is None else [kernel, np.asarray(shift)]))
    if len(shape) == 3:
        return conv
    to_4d = layers.Reshape((int(np.prod(shape[:-1])), 1, channels), name=claim(f"{name}_to_4d"))
    back = layers.Reshape(shape, name=claim(f"{name}_back"))
    return lambda x, *args, **kwargs: back(conv(to_4d(x)))


def _map_node(node, values: dict):
    """The node's call arguments with every Keras tensor replaced by its rebuilt value."""
    import tensorflow as tf

    flat = list(node._flat_arguments)
    for kt_id, index in node._keras_inputs_ids_and_indices:
        flat[index] = values[kt_id]
    args, kwargs = tf.nest.pack_sequence_as((node.call_args, node.call_kwargs.values()), flat)
    return args, dict(zip(node.call_kwargs.keys(), kwargs, strict=True))


def rebuild(model, split_also=frozenset()):
    """A copy of a Functional/Sequential tf_keras model with nested models inlined, non-fusable
    fused activations split off, and LayerNormalization decomposed (see module docstring).
    ``split_also`` names more fused activations to split off (``{"sigmoid", "softmax"}``
    gives their pre-activation tensors their own layer output, for calibration).

    Raises:
      ValueError: a nested subclassed model, or two inlined layers with the same name.
    """
    from tflq.models import tf, tf_keras

    layers = tf_keras.layers
    copies = {}  # id(original layer) -> (callable, [(new layer, original weights)])
    weight_plan = []  # (new layer, weights) set after building
    names = set()

    def claim(name: str) -> str:
        if name in names:
            raise ValueError(f"Two layers are named {name!r} after inlining nested models; "
                             "rename one before QAT.")
        names.add(name)
        return name

    def copy_of(layer):
        key = id(layer)
        if key in copies:
            return copies[key]
        if needs_split(layer) or (type(layer).__name__ in _WEIGHT_LAYERS
                                  and _activation_name(layer) in split_also):
            config = layer.get_config()
            activation = config["activation"]
            config["activation"] = "linear"
            base = layer.__class__.from_config({**config, "name": claim(layer.name)})
            act = layers.Activation(activation, name=claim(f"{layer.name}_activation"))
            weight_plan.append((base, layer.get_weights()))

            def run(*args, **kwargs):
                return act(base(*args, **kwargs))
        elif is_separable_2d(layer):
            config = layer.get_config()
            depthwise = layers.DepthwiseConv2D(
                config["kernel_size"], strides=config["strides"], padding=config["padding"],
                depth_multiplier=config["depth_multiplier"], data_format=config["data_format"],
                dilation_rate=config["dilation_rate"], use_bias=False,
                name=claim(f"{layer.name}_depthwise"))
            split = needs_split(layer) or _activation_name(layer) in split_also
            pointwise = layers.Conv2D(
                config["filters"], 1, data_format=config["data_format"],
                activation="linear" if split else config["activation"],
                use_bias=config["use_bias"], name=claim(layer.name))
            act = layers.Activation(config["activation"],
                                    name=claim(f"{layer.name}_activation")) if split else None
            weights = layer.get_weights()
            weight_plan.append((depthwise, weights[:1]))
            weight_plan.append((pointwise, weights[1:]))

            def run(*args, **kwargs):
                out = pointwise(depthwise(*args, **kwargs))
                return act(out) if act is not None else out
        elif decomposable_layer_norm(layer):
            n, eps = layer.name, float(layer.epsilon)

            steps = {s: LayerNormStep(s, floor=eps if s == "rsqrt" else 0.0,
                                      name=claim(f"{n}_{s}"))
                     for s in ("mean", "sub", "square", "rsqrt", "mul")}
            variance = LayerNormStep("mean", name=claim(f"{n}_variance"))
            add_eps = ScalarOp("add", eps, name=claim(f"{n}_epsilon"))
            channels = layer.input_shape[-1]
            gamma = layer.gamma.numpy() if layer.scale else np.ones(channels, np.float32)
            beta = layer.beta.numpy() if layer.center else np.zeros(channels, np.float32)
            affine = _per_channel(n, layer.input_shape, gamma, beta, claim, weight_plan)

            def run(x, *args, **kwargs):
                centred = steps["sub"]([x, steps["mean"](x)])
                var = variance(steps["square"](centred))
                return affine(steps["mul"]([centred, steps["rsqrt"](add_eps(var))]))
        elif dense_on_feature_map(layer):
            config = layer.get_config()
            conv = layers.Conv2D(config["units"], 1, activation=config["activation"],
                                 use_bias=config["use_bias"], name=claim(layer.name))
            kernel = layer.kernel.numpy()
            weights = [kernel.reshape(1, 1, *kernel.shape)] + (
                [layer.bias.numpy()] if config["use_bias"] else [])
            weight_plan.append((conv, weights))
            if needs_split(layer):
                conv.activation = tf_keras.activations.get("linear")
                act = layers.Activation(config["activation"],
                                        name=claim(f"{layer.name}_activation"))

                def run(*args, **kwargs):
                    return act(conv(*args, **kwargs))
            else:
                run = conv
        elif is_layer_scale(layer):
            gamma = layer.gamma.numpy()
            run = _per_channel(layer.name, layer.input_shape, gamma, None, claim, weight_plan)
        else:
            copy = layer.__class__.from_config({**layer.get_config(), "name": claim(layer.name)})
            weight_plan.append((copy, layer.get_weights()))
            run = copy
        copies[key] = run
        return run

    def trace(graph, inputs: list):
        """Runs ``graph``'s nodes on ``inputs`` (new tensors); returns its new outputs."""
        values = {str(id(t)): v for t, v in zip(graph.inputs, inputs, strict=True)}
        for depth in sorted(graph._nodes_by_depth, reverse=True):
            for node in graph._nodes_by_depth[depth]:
                if node.is_input:
                    continue
                args, kwargs = _map_node(node, values)
                layer = node.layer
                if isinstance(layer, tf_keras.Model):
                    if not (isinstance(layer, tf_keras.Sequential) or layer._is_graph_network):
                        raise ValueError(f"Nested model {layer.name!r} is subclassed; rebuild "
                                         "it with the Functional API.")
                    outputs = trace(layer, tf.nest.flatten(args)[:len(layer.inputs)])
                    outputs = outputs[0] if len(outputs) == 1 else outputs
                elif binary_merge(layer, node):
                    merge = getattr(layers, binary_merge(layer, node))(name=claim(layer.name))
                    outputs = merge(_operands(args, kwargs))
                else:
                    outputs = copy_of(layer)(*args, **kwargs)
                for kt_id, value in zip(node.flat_output_ids, tf.nest.flatten(outputs),
                                        strict=True):
                    values[kt_id] = value
        return [values[str(id(t))] for t in graph.outputs]

    new_inputs = []
    for tensor, input_layer in zip(model.inputs, model._input_layers, strict=True):
        new_inputs.append(layers.Input(type_spec=tensor.type_spec,
                                       name=claim(input_layer.name)))
    outputs = trace(model, new_inputs)
    rebuilt = tf_keras.Model(new_inputs, outputs[0] if len(outputs) == 1 else outputs,
                             name=model.name)
    for layer, weights in weight_plan:
        if weights:
            layer.set_weights(weights)
    return rebuilt


# BatchNorm folding and LayerNorm decomposition regroup float32 arithmetic: outputs move by
# float rounding, far below 1e-4 of their range; a wiring or weight bug moves them by far more.
REWRITE_RTOL = 1e-4


def synthetic_samples(model, count: int = 4, seed: int = 0) -> list:
    """Standard-normal inputs (zeros for integer inputs; unknown dims 8) to check a rewrite on
    when no real data is at hand."""
    rng = np.random.default_rng(seed)
    batch = []
    for tensor in model.inputs:
        shape = [count] + [8 if d is None else int(d) for d in tensor.shape[1:]]
        dtype = np.dtype(getattr(tensor.dtype, "as_numpy_dtype", tensor.dtype))
        batch.append(np.zeros(shape, dtype) if np.issubdtype(dtype, np.integer)
                     else rng.normal(size=shape).astype(dtype))
    return [batch[0] if len(batch) == 1 else batch]


def locate_by_name(before, after, sample) -> str:
    """Names the first layer of ``before`` (in graph order) whose output differs from the
    same-named layer's output in ``after`` (its ``_activation`` half when an activation was
    split off; a layer whose BatchNormalization was folded into it is judged at the BN)."""
    from tflq.keras3 import max_relative_error
    from tflq.models import tf_keras

    after_layers = {layer.name: layer for layer in after.layers}
    pairs = []
    for layer in before.layers:
        if type(layer).__name__ == "InputLayer" or len(layer._inbound_nodes) != 1:
            continue
        consumers = [n.outbound_layer for n in layer._outbound_nodes]
        if (len(consumers) == 1 and type(consumers[0]).__name__ == "BatchNormalization"
                and type(after_layers.get(consumers[0].name)).__name__ == "Activation"):
            continue  # folded into: its own output legitimately changed
        twin = after_layers.get(f"{layer.name}_activation") or after_layers.get(layer.name)
        if twin is not None and len(twin._inbound_nodes) == 1:
            pairs.append((layer, twin))
    if not pairs:
        return "No layer of the original is left to compare by name."
    mine = tf_keras.Model(before.inputs, [a.output for a, _ in pairs])(sample, training=False)
    theirs = tf_keras.Model(after.inputs, [b.output for _, b in pairs])(sample, training=False)
    mine, theirs = (list(v) if isinstance(v, (list, tuple)) else [v] for v in (mine, theirs))
    for (layer, _), a, b in zip(pairs, mine, theirs, strict=True):
        error, _ = max_relative_error([np.asarray(a)], [np.asarray(b)])
        if error > REWRITE_RTOL:
            return (f"First layer that differs: {layer.name!r} ({type(layer).__name__}), by "
                    f"{error:.3g} of its output range.")
    return "No single layer differs by name."


def prepare(model, samples: list | None = None, notes: list | None = None):
    """The float graph :func:`tflq.quant.qat.quantize_model` wraps, layer for layer (same
    names): rebuilt (:func:`rebuild`), scalar TFOpLambda ops replaced, BatchNorm folded.

    Every step is checked: the rewritten model must reproduce the model before it on
    ``samples`` (model inputs; :func:`synthetic_samples` when None) within
    :data:`REWRITE_RTOL` of each output's range.

    Args:
      notes: when given, one line per rewrite that changed something is appended.

    Raises:
      tflq.keras3.RewriteError: a rewrite changed the outputs (names the step and layer).
    """
    from tflq.keras3 import check_outputs

    samples = samples if samples is not None else synthetic_samples(model)
    steps = [("graph rebuild (nested models inlined, separable convolutions, activations and "
              "LayerNormalization split)", rebuild if needs_rebuild(model) else None),
             ("scalar TFOpLambda replacement", replace_scalar_op_lambdas),
             ("BatchNorm folding", fold_batch_norms)]
    for what, step in steps:
        if step is None:
            continue
        rewritten = step(model)
        if rewritten is model:
            continue
        before = model
        worst = check_outputs(what, lambda x, m=before: m(x, training=False),
                              lambda x, m=rewritten: m(x, training=False), samples, REWRITE_RTOL,
                              lambda x, b=before, a=rewritten: locate_by_name(b, a, x))
        if notes is not None:
            notes.append(f"{what}: {len(before.layers)} → {len(rewritten.layers)} layers, "
                         f"outputs checked (max error {worst:.2g} of range)")
        model = rewritten
    return model


# Layer classes whose ops tflq's QAT graph knows: Keras's own, tfmot's and tflq's.
_KNOWN_MODULES = ("tf_keras.", "keras.", "tensorflow.", "tensorflow_model_optimization.", "tflq.")


def opaque_layers(model) -> list[str]:
    """Names of the layers of ``model`` (nested models and tfmot wrappers searched) whose
    class is the user's own, not Keras's: tflq's QAT graph quantizes their outputs but
    cannot see the ops inside (Basic Pitch's CQT front end), which a .tflite converted from
    that graph would leave in float."""
    found = []

    def visit(layer, prefix):
        inner = getattr(layer, "layer", None)
        own = inner if inner is not None and "Quantize" in type(layer).__name__ else layer
        kind = type(own)
        if getattr(layer, "layers", None) is not None and layer is not model:
            for child in layer.layers:
                visit(child, f"{prefix}{layer.name}/")
        elif layer is not model and (not kind.__module__.startswith(_KNOWN_MODULES)
                                     or is_revived(own)):
            found.append(prefix + layer.name)

    for child in model.layers:
        visit(child, "")
    return found

"""Quantization-aware training over Keras models with tflq's quantizers.

One table-driven :class:`LayerQuantizeConfig` serves every layer: it names the weight
attributes to quantize (each with its quantizer), the activation attributes, and whether
the layer's output is quantized. Schemes build these tables per layer type.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from tflq import recurrent
from tflq.quant import quantizers
from tflq.quant.graph import opaque_layers, prepare
from tflq.quant.layers import ScalarOp
from tflq.quant.quantizers import tfmot
from tflq.quant.schemes import LayerQuantizeConfig
from tflq.saved_model_graph import is_revived

__all__ = ["custom_objects", "quantize_scope", "InputQuantize", "quantize_model", "refuse_recurrent",
           "token_inputs", "trains_lstm",
           "STRATEGIES", "quantization_error", "make_trainer", "check_teacher"]


def custom_objects() -> dict:
    """Everything needed to deserialize a tflq QAT model (``quantize_scope``/load_model)."""
    objects = {cls.__name__: cls for cls in quantizers.registered().values()}
    objects["LayerQuantizeConfig"] = LayerQuantizeConfig
    objects["InputQuantize"] = InputQuantize
    objects["ScalarOp"] = ScalarOp
    from tflq.quant.layers import LayerNormStep

    objects["LayerNormStep"] = LayerNormStep
    return objects


def quantize_scope(model=None):
    """``with quantize_scope():`` to load or apply tflq QAT models; with ``model``, its own
    layer classes too (tfmot rebuilds the model from its config, by class name)."""
    objects = custom_objects()
    for layer in (model.layers if model is not None else ()):
        inner = getattr(layer, "layer", layer)  # inside tfmot's annotation wrapper
        kind = type(inner)
        if not kind.__module__.startswith(("tf_keras.", "keras.", "tensorflow")) or \
                is_revived(inner):  # revived: rebuilds as itself
            objects.setdefault(kind.__name__, kind)
    return tfmot.quantization.keras.quantize_scope(objects)


from tensorflow_model_optimization.python.core.quantization.keras import (  # noqa: E402
    quantize_layer as _tfmot_quantize_layer,
)


class InputQuantize(_tfmot_quantize_layer.QuantizeLayer):
    """tfmot's QuantizeLayer, built once: loading a ``.keras`` file calls ``build`` again,
    which made tfmot's layer create its range variables twice and fail to load."""

    def build(self, input_shape):
        if self.built:
            return
        super().build(input_shape)
        self.built = True  # tfmot's build never sets it


class _KeepLayoutScheme(tfmot.quantization.keras.QuantizeScheme):
    """Applies every layer's own config; the only layout rewrites are quantizing the model's
    inputs and splitting separable convolutions into depthwise + 1×1 convolutions. tfmot's
    other rewrites fail on many real models (BatchNormalization not after a conv,
    TFOpLambda); tflq folds BatchNormalization itself (:func:`fold_batch_norms`)."""

    def __init__(self, token_inputs=()):
        self.token_inputs = set(token_inputs)

    class _InputsOnly:
        def __init__(self, token_inputs):
            self.token_inputs = token_inputs

        def apply(self, model, layer_quantize_map):
            from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
                default_8bit_transforms,
            )
            from tensorflow_model_optimization.python.core.quantization.keras.graph_transformations import (  # noqa: E501
                model_transformer,
                transforms,
            )

            class NonTokenInputs(default_8bit_transforms.InputLayerQuantize):
                """Every model input but the token ids (inputs read only by Embedding
                lookups), which stay exact: int8 would round them to other table rows."""

                def __init__(self, skip):
                    self.skip = sorted(skip)

                def pattern(self):
                    if not self.skip:
                        return super().pattern()
                    names = "|".join(re.escape(n) for n in self.skip)
                    return transforms.LayerPattern("InputLayer", {"name": f"(?!(?:{names})$).*"})

            return model_transformer.ModelTransformer(
                model, [NonTokenInputs(self.token_inputs),
                        default_8bit_transforms.SeparableConv1DQuantize()],
                set(layer_quantize_map), layer_quantize_map).transform()

    def get_layout_transformer(self):
        return self._InputsOnly(self.token_inputs)

    def get_quantize_registry(self):
        from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
            default_8bit_quantize_registry,
        )

        return default_8bit_quantize_registry.Default8BitQuantizeRegistry()


def token_inputs(model) -> list[str]:
    """Names of the model inputs read only by Embedding layers (token ids)."""
    found = []
    for layer in model._input_layers:  # a Sequential model does not list its InputLayer
        readers = [node.outbound_layer for node in layer._outbound_nodes]
        kinds = {type(getattr(r, "layer", r)).__name__ for r in readers}
        if kinds == {"Embedding"}:
            found.append(layer.name)
    return found


def trains_lstm(layer) -> bool:
    """True for an LSTM tflq's QAT trains: one TFLite fuses into its int8
    ``UNIDIRECTIONAL_SEQUENCE_LSTM`` (tanh/sigmoid, a bias, not unrolled; recurrent dropout
    only acts in training and is dropped for conversion)."""
    config = layer.get_config()
    return (type(layer).__name__ == "LSTM" and config.get("activation") == "tanh"
            and config.get("recurrent_activation") == "sigmoid"
            and config.get("use_bias", True) and not config.get("unroll"))


def refuse_recurrent(model, lstm_ok: bool = False) -> None:
    """Refuses recurrent layers tflq's QAT graph cannot hold: all of them for a graph the
    converter converts as trained (``--adaround`` with a range estimator), and with
    ``lstm_ok`` (QAT and compress, deployed by :mod:`tflq.ptq.deploy`) all but the LSTMs
    of :func:`trains_lstm` at the model's top level.

    Raises:
      ValueError: names the recurrent layers and says why.
    """
    found = recurrent.find_recurrent_layers(model)
    if not lstm_ok and found:
        raise ValueError(
            f"Recurrent layer(s) {found} cannot go into tflq's QAT-graph conversion "
            "(--adaround with a range estimator): the converter quantizes an LSTM only when it "
            "calibrates it. Use --adaround or a range estimator alone (both work on the "
            "converter's calibrated model), or --selective.")
    top = {layer.name: layer for layer in model.layers}
    refused = [name for name in found if name not in top or not trains_lstm(top[name])]
    if refused:
        raise ValueError(
            f"Recurrent layer(s) {refused} cannot be trained by tflq's QAT: it trains LSTM "
            "layers TFLite fuses into its int8 UNIDIRECTIONAL_SEQUENCE_LSTM (tanh/sigmoid, a "
            "bias, not unrolled, not inside a wrapper such as Bidirectional); GRU and "
            "SimpleRNN have no int8 kernel in TFLite. Use int8 with --range_estimator or "
            "--selective.")


def _checked_rebuild(model, samples):
    """The tf_keras rebuild of a Keras 3 model, checked against it on ``samples``."""
    from tflq import keras3
    from tflq.quant.graph import synthetic_samples

    rebuilt = keras3.rebuild_keras3(model)
    keras3.check_outputs("the Keras 3 → tf_keras rebuild", lambda x: model(x),
                         lambda x: rebuilt.model(x), samples or synthetic_samples(model),
                         keras3.KERAS3_RTOL,
                         lambda x: keras3.locate_keras3_difference(model, rebuilt, x))
    return rebuilt.model


def quantize_model(model, scheme: str = "default_int8", overrides: Sequence = (),
                   activation_ranges: str | None = None, range_k: float = 3.0,
                   samples: list | None = None, notes: list | None = None,
                   lstm_ok: bool = False, prepared: list | None = None):
    """Wraps every layer of a tf_keras Sequential or Functional model for QAT.

    Args:
      model: a built tf_keras Sequential or Functional model.
      scheme: a name from :data:`tflq.quant.schemes.SCHEMES`.
      overrides: :class:`tflq.quant.schemes.Override` objects or dicts.
      activation_ranges: None (tfmot's moving min/max), ``minmax`` or ``meanstd``
        (moving averages of mean ± ``range_k``·σ), see :class:`tflq.quant.quantizers.ActivationQuantizer`.
      samples: model inputs the float rewrites are checked on (:func:`tflq.quant.graph.prepare`).
      notes: a list that receives one line per float rewrite applied.
      lstm_ok: wrap fused LSTMs (:func:`refuse_recurrent`); the caller deploys the trained
        model with :func:`tflq.ptq.deploy.convert_student`, which calibrates models with
        LSTMs or with layers of their own classes (weights then train on that grid).
      prepared: a list that receives the float model after the rewrites (what was wrapped).

    Returns:
      The QAT model (float weights copied from ``model``).

    Raises:
      ValueError: unknown scheme, an override that matches nothing, a subclassed or Keras 3
        model (also nested inside the model), recurrent layers (:func:`refuse_recurrent`).
    """
    from tflq.models import is_keras3, tf_keras
    from tflq.quant import schemes

    chosen = schemes.get_scheme(scheme) if isinstance(scheme, str) else scheme
    overrides = [o if isinstance(o, schemes.Override) else schemes.Override.from_dict(o)
                 for o in overrides]
    if is_keras3(model):
        model = _checked_rebuild(model, samples)
    if not isinstance(model, tf_keras.Model) or not (
            isinstance(model, tf_keras.Sequential) or model._is_graph_network):
        raise ValueError(f"QAT needs a Sequential or Functional tf_keras model. Received: "
                         f"{type(model).__name__} (subclassed models have no layer graph to "
                         "wrap: rebuild it with the Functional API).")
    refuse_recurrent(model, lstm_ok)
    model = prepare(model, samples, notes)
    if prepared is not None:
        prepared.append(model)
    # Deployed by the converter's calibration (tflq.ptq.deploy): recurrent layers, or the
    # model's own layer classes whose inner ops the QAT graph cannot quantize.
    calibrated = lstm_ok and bool(recurrent.find_recurrent_layers(model) or opaque_layers(model))
    schemes.check_overrides(model.layers, overrides)
    schemes.activation_quantizer(activation_ranges, range_k)  # checks the arguments

    def make_activation():
        return schemes.activation_quantizer(activation_ranges, range_k)

    annotate = tfmot.quantization.keras.quantize_annotate_layer

    def clone(layer):
        copy = layer.__class__.from_config(layer.get_config())
        if type(layer).__name__ in schemes.SPLIT_BY_TFMOT:
            return annotate(copy)  # tfmot splits it into depthwise + 1x1 conv (int8 weights)
        config = schemes.config_for(layer, chosen, overrides, make_activation, calibrated)
        return copy if config is None else annotate(copy, config)

    annotated = tf_keras.models.clone_model(model, clone_function=clone)
    annotated.set_weights(model.get_weights())
    with quantize_scope(annotated):
        applied = tfmot.quantization.keras.quantize_apply(
            annotated, scheme=_KeepLayoutScheme(token_inputs(annotated)))

        def swap_input_layer(layer):  # quantize_apply rebuilds QuantizeLayer as tfmot's own
            if type(layer) is _tfmot_quantize_layer.QuantizeLayer:
                return InputQuantize.from_config(layer.get_config())
            return layer.__class__.from_config(layer.get_config())

        result = tf_keras.models.clone_model(applied, clone_function=swap_input_layer)
    for layer in result.layers:  # by name: trainable quantizer variables change the order
        source = {w.name.split("/")[-1]: w for w in applied.get_layer(layer.name).weights}
        for variable in layer.weights:
            key = variable.name.split("/")[-1]
            if key not in source:
                raise RuntimeError(f"QAT clone lost variable {variable.name!r}.")
            variable.assign(source[key])
    return result


# ---------------------------------------------------------------------------------------
# training strategies
# ---------------------------------------------------------------------------------------

STRATEGIES = ("gradient", "statistics", "distill")


def quantization_error(model):
    """Σ over wrapped layers and quantized weights of mean((w − Q(w))²): how far the float
    weights sit from their quantization grid (a loss term pulling them onto it)."""
    from tflq.models import tf

    total = tf.constant(0.0)
    for layer in model.layers:
        for weight, quantizer, quantizer_vars in getattr(layer, "_weight_vars", []):
            quantized = quantizer(weight, training=False, weights=quantizer_vars)
            total += tf.reduce_mean(tf.square(weight - tf.stop_gradient(quantized)))
    return total


def make_trainer(student, teacher=None, quant_error_weight: float = 0.0,
                 temperature: float = 4.0, alpha: float = 0.5, heads: Sequence | None = None,
                 labelled: bool = True):
    """A Keras model that trains ``student`` through ``fit`` with tflq's losses.

    Per output i (a :class:`tflq.quant.heads.Head`; None: one classification head on logits):
      classification: α·CE(yᵢ, sᵢ) + (1 − α)·T²·KL(softmax(tᵢ/T) ‖ softmax(sᵢ/T))
      regression:     α·MSE(yᵢ, sᵢ) + (1 − α)·MSE(tᵢ, sᵢ)
    summed over outputs, + λ·quantization_error(student) [λ = quant_error_weight].
    α is 1 without a teacher and 0 without labels (``labelled=False``: ``fit(x)`` with no y).
    Softmax outputs are turned back into logits (log p) before the temperature is applied.

    Raises:
      ValueError: bad λ, T or α, neither labels nor teacher, or ``heads`` not one per output.
    """
    from tflq.models import tf, tf_keras
    from tflq.quant.heads import Head

    if quant_error_weight < 0:
        raise ValueError(f"quant_error_weight must be >= 0. Received: {quant_error_weight}")
    if not temperature > 0 or not 0 <= alpha <= 1:
        raise ValueError(f"temperature must be > 0 and alpha in [0, 1]. Received: "
                         f"temperature={temperature}, alpha={alpha}")
    if not labelled and teacher is None:
        raise ValueError("Training without labels needs a teacher to supply the targets.")
    heads = list(heads) if heads is not None else [Head("output_0", "kl", False, "default")]
    if len(heads) != len(student.outputs):
        raise ValueError(f"{len(heads)} output head(s) for a model with "
                         f"{len(student.outputs)} output(s).")
    alpha = alpha if (teacher is not None and labelled) else (1.0 if labelled else 0.0)
    primary = next((i for i, h in enumerate(heads) if h.kind == "kl"), None)

    def logits_of(output, head):
        return tf.math.log(tf.maximum(output, 1e-12)) if head.softmax else output

    def per_sample_mse(a, b):
        diff = tf.reshape(tf.cast(a, tf.float32) - b, [tf.shape(b)[0], -1])
        return tf.reduce_mean(tf.square(diff), axis=1)

    class Trainer(tf_keras.Model):
        def __init__(self):
            super().__init__()
            self.student, self.teacher = student, teacher
            # Per-example losses averaged explicitly: correct under tf.distribute strategies.
            self.ce = tf_keras.losses.SparseCategoricalCrossentropy(
                from_logits=True, reduction=tf_keras.losses.Reduction.NONE)
            self.kl = tf_keras.losses.KLDivergence(reduction=tf_keras.losses.Reduction.NONE)
            self.loss_tracker = tf_keras.metrics.Mean(name="loss")
            self.accuracy = tf_keras.metrics.SparseCategoricalAccuracy(name="accuracy")

        def call(self, inputs, training=False):
            return self.student(inputs, training=training)

        @property
        def metrics(self):
            tracked = labelled and primary is not None
            return [self.loss_tracker, self.accuracy] if tracked else [self.loss_tracker]

        def losses_of(self, x, y, training):
            outputs = tf.nest.flatten(self.student(x, training=training))
            labels = tf.nest.flatten(y) if labelled else [None] * len(outputs)
            targets = ([None] * len(outputs) if self.teacher is None else
                       [tf.stop_gradient(t) for t in
                        tf.nest.flatten(self.teacher(x, training=False))])
            total = 0.0
            for head, s, label, t in zip(heads, outputs, labels, targets, strict=True):
                loss = 0.0
                if head.kind == "kl":
                    z = logits_of(s, head)
                    if label is not None and alpha > 0:
                        loss += alpha * self.ce(label, z)
                    if t is not None and alpha < 1:
                        kd = self.kl(tf.nn.softmax(logits_of(t, head) / temperature),
                                     tf.nn.softmax(z / temperature))
                        loss += (1 - alpha) * temperature**2 * kd
                else:
                    if label is not None and alpha > 0:
                        loss += alpha * per_sample_mse(label, s)
                    if t is not None and alpha < 1:
                        loss += (1 - alpha) * per_sample_mse(t, s)
                total += loss
            return total, outputs, labels

        def track(self, loss, outputs, labels):
            self.loss_tracker.update_state(loss)
            if labelled and primary is not None:
                self.accuracy.update_state(labels[primary],
                                           logits_of(outputs[primary], heads[primary]))
            return {m.name: m.result() for m in self.metrics}

        def train_step(self, data):
            x, y, _ = tf_keras.utils.unpack_x_y_sample_weight(data)
            with tf.GradientTape() as tape:
                per_example, outputs, labels = self.losses_of(x, y, True)
                loss = tf.nn.compute_average_loss(per_example)
                if quant_error_weight:
                    loss += quant_error_weight * quantization_error(self.student)
            variables = self.student.trainable_variables
            self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
            return self.track(loss, outputs, labels)

        def test_step(self, data):
            x, y, _ = tf_keras.utils.unpack_x_y_sample_weight(data)
            per_example, outputs, labels = self.losses_of(x, y, False)
            return self.track(tf.reduce_mean(per_example), outputs, labels)

    return Trainer()


def check_teacher(teacher, student) -> None:
    """Refuses a teacher whose outputs cannot supervise the student."""
    def shapes(model):
        found = model.output_shape
        return [tuple(s) for s in found] if isinstance(found, list) else [tuple(found)]

    t_shapes, s_shapes = shapes(teacher), shapes(student)
    if [s[1:] for s in t_shapes] != [s[1:] for s in s_shapes]:
        def show(found):
            return ", ".join(map(str, found))

        raise ValueError(f"Teacher outputs {show(t_shapes)} do not match the student's "
                         f"{show(s_shapes)}.")
    t_in = [tuple(s[1:]) for s in (teacher.input_shape if isinstance(teacher.input_shape, list)
                                   else [teacher.input_shape])]
    s_in = [tuple(s[1:]) for s in (student.input_shape if isinstance(student.input_shape, list)
                                   else [student.input_shape])]
    if t_in != s_in:
        raise ValueError(f"Teacher inputs {t_in} do not match the student's {s_in}.")

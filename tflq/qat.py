"""Quantization-aware training over Keras models with tflq's quantizers.

One table-driven :class:`LayerQuantizeConfig` serves every layer: it names the weight
attributes to quantize (each with its quantizer), the activation attributes, and whether
the layer's output is quantized. Schemes build these tables per layer type.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np

from tflq import quantizers
from tflq.quantizers import tfmot


class LayerQuantizeConfig(tfmot.quantization.keras.QuantizeConfig):
    """A QuantizeConfig from a table.

    Args:
      weights: ``{attribute: quantizer}`` for the layer's weights (e.g. ``{"kernel": pow2}``).
      activations: ``{attribute: quantizer}`` for activation functions (``{"activation": …}``).
      output: quantizer for the layer's output, or None.

    Quantizers may be given as instances, aliases or serialized dicts.
    """

    def __init__(self, weights: Mapping | None = None, activations: Mapping | None = None,
                 output=None):
        self.weights = {k: quantizers.get(v) for k, v in (weights or {}).items()}
        self.activations = {k: quantizers.get(v) for k, v in (activations or {}).items()}
        self.output = quantizers.get(output)

    def get_weights_and_quantizers(self, layer):
        return [(self._attribute(layer, name), q) for name, q in self.weights.items()]

    def get_activations_and_quantizers(self, layer):
        return [(self._attribute(layer, name), q) for name, q in self.activations.items()]

    def set_quantize_weights(self, layer, quantize_weights: Sequence):
        self._set(layer, list(self.weights), quantize_weights, "weights")

    def set_quantize_activations(self, layer, quantize_activations: Sequence):
        self._set(layer, list(self.activations), quantize_activations, "activations")

    def get_output_quantizers(self, layer):
        return [self.output] if self.output is not None else []

    def get_config(self):
        return {"weights": {k: quantizers.serialize(q) for k, q in self.weights.items()},
                "activations": {k: quantizers.serialize(q) for k, q in self.activations.items()},
                "output": quantizers.serialize(self.output) if self.output is not None else None}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    @staticmethod
    def _attribute(layer, name):
        if not hasattr(layer, name):
            raise ValueError(f"Layer {layer.name!r} ({type(layer).__name__}) has no attribute "
                             f"{name!r} to quantize.")
        return getattr(layer, name)

    @staticmethod
    def _set(layer, names, values, what):
        if len(names) != len(values):
            raise ValueError(f"Layer {layer.name!r}: expected {len(names)} quantized {what}, "
                             f"got {len(values)}.")
        for name, value in zip(names, values, strict=True):
            setattr(layer, name, value)


def custom_objects() -> dict:
    """Everything needed to deserialize a tflq QAT model (``quantize_scope``/load_model)."""
    objects = {cls.__name__: cls for cls in quantizers._REGISTRY.values()}
    objects["LayerQuantizeConfig"] = LayerQuantizeConfig
    objects["InputQuantize"] = InputQuantize
    objects["ScalarOp"] = ScalarOp
    from tflq.graph import LayerNormStep

    objects["LayerNormStep"] = LayerNormStep
    return objects


def quantize_scope():
    """``with quantize_scope():`` to load or apply tflq QAT models."""
    return tfmot.quantization.keras.quantize_scope(custom_objects())


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

    class _InputsOnly:
        def apply(self, model, layer_quantize_map):
            from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
                default_8bit_transforms,
            )
            from tensorflow_model_optimization.python.core.quantization.keras.graph_transformations import (  # noqa: E501
                model_transformer,
            )

            return model_transformer.ModelTransformer(
                model, [default_8bit_transforms.InputLayerQuantize(),
                        default_8bit_transforms.SeparableConvQuantize(),
                        default_8bit_transforms.SeparableConv1DQuantize()],
                set(layer_quantize_map), layer_quantize_map).transform()

    def get_layout_transformer(self):
        return self._InputsOnly()

    def get_quantize_registry(self):
        from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
            default_8bit_quantize_registry,
        )

        return default_8bit_quantize_registry.Default8BitQuantizeRegistry()


def quantize_model(model, scheme: str = "default_int8", overrides: Sequence = (),
                   activation_ranges: str | None = None, range_k: float = 3.0):
    """Wraps every layer of a tf_keras Sequential or Functional model for QAT.

    Args:
      model: a built tf_keras Sequential or Functional model.
      scheme: a name from :data:`tflq.schemes.SCHEMES`.
      overrides: :class:`tflq.schemes.Override` objects or dicts.
      activation_ranges: None (tfmot's moving min/max), ``minmax`` or ``meanstd``
        (moving averages of mean ± ``range_k``·σ), see :class:`tflq.quantizers.ActivationQuantizer`.

    Returns:
      The QAT model (float weights copied from ``model``).

    Raises:
      ValueError: unknown scheme, an override that matches nothing, a subclassed or Keras 3
        model (also nested inside the model).
    """
    from tflq import schemes
    from tflq.keras_compat import _is_keras3, tf_keras

    chosen = schemes.get_scheme(scheme) if isinstance(scheme, str) else scheme
    overrides = [o if isinstance(o, schemes.Override) else schemes.Override.from_dict(o)
                 for o in overrides]
    if _is_keras3(model):
        raise ValueError("QAT needs a tf_keras model; this is a Keras 3 model. Rebuild it with "
                         "tf_keras (same layers) or convert it without QAT (PTQ works).")
    if not isinstance(model, tf_keras.Model) or not (
            isinstance(model, tf_keras.Sequential) or model._is_graph_network):
        raise ValueError(f"QAT needs a Sequential or Functional tf_keras model. Received: "
                         f"{type(model).__name__} (subclassed models have no layer graph to "
                         "wrap: rebuild it with the Functional API).")
    model = prepare(model)
    schemes.check_overrides(model.layers, overrides)
    schemes.activation_quantizer(activation_ranges, range_k)  # checks the arguments

    def make_activation():
        return schemes.activation_quantizer(activation_ranges, range_k)

    annotate = tfmot.quantization.keras.quantize_annotate_layer

    def clone(layer):
        copy = layer.__class__.from_config(layer.get_config())
        if type(layer).__name__ in schemes.SPLIT_BY_TFMOT:
            return annotate(copy)  # tfmot splits it into depthwise + 1x1 conv (int8 weights)
        config = schemes.config_for(layer, chosen, overrides, make_activation)
        return copy if config is None else annotate(copy, config)

    annotated = tf_keras.models.clone_model(model, clone_function=clone)
    annotated.set_weights(model.get_weights())
    with quantize_scope():
        applied = tfmot.quantization.keras.quantize_apply(annotated, scheme=_KeepLayoutScheme())

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


def prepare(model):
    """The float graph :func:`quantize_model` wraps, layer for layer (same names): rebuilt
    (:func:`tflq.graph.rebuild`), scalar TFOpLambda ops replaced, BatchNorm folded."""
    from tflq import graph

    if graph.needs_rebuild(model):  # nested models, unfusable activations, LayerNormalization
        model = graph.rebuild(model)
    return fold_batch_norms(replace_scalar_op_lambdas(model))


_FOLDABLE = {"Conv2D", "DepthwiseConv2D", "Dense", "Conv2DTranspose"}


def _bn_scale_shift(bn):
    gamma = bn.gamma.numpy() if bn.gamma is not None else 1.0
    beta = bn.beta.numpy() if bn.beta is not None else 0.0
    scale = gamma / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
    return scale, beta - bn.moving_mean.numpy() * scale


def _producer(layer):
    nodes = layer._inbound_nodes
    if len(nodes) != 1:
        return None
    inbound = nodes[0].inbound_layers
    return inbound if not isinstance(inbound, (list, tuple)) else (
        inbound[0] if len(inbound) == 1 else None)


def _normalization_affine(layer):
    """(scale, shift) per channel of a Keras ``Normalization`` layer over the last axis of a
    4-D tensor (x·scale + shift = (x − mean)/max(√var, ε)); None for any other layer."""
    if type(layer).__name__ != "Normalization" or len(layer.input_shape) != 4:
        return None
    axis = tuple(a % 4 for a in layer.axis)
    if axis != (3,) or getattr(layer, "invert", False):
        return None
    from tflq.keras_compat import tf_keras

    channels = layer.input_shape[-1]
    mean = np.broadcast_to(np.asarray(layer.mean, np.float32).reshape(-1), (channels,))
    variance = np.broadcast_to(np.asarray(layer.variance, np.float32).reshape(-1), (channels,))
    scale = 1.0 / np.maximum(np.sqrt(variance), tf_keras.backend.epsilon())
    return scale.astype(np.float32), (-mean * scale).astype(np.float32)


def fold_batch_norms(model):
    """Folds inference-mode BatchNormalization into the layer before it.

    ``Conv2D``/``DepthwiseConv2D``/``Conv2DTranspose``/``Dense`` followed only by a
    BatchNormalization (last axis) absorb its scale and shift into kernel and bias; the BN
    becomes a linear ``Activation`` (a pass-through). A BatchNormalization on a 4-D tensor
    after anything else, and a ``Rescaling`` or ``Normalization`` of a 4-D tensor, become a 1×1
    ``DepthwiseConv2D`` with the same per-channel affine map, so they quantize like any
    other weight layer (their float constants would otherwise stay in float). Float outputs
    are unchanged up to float rounding.
    """
    from tflq.keras_compat import tf_keras

    layers = tf_keras.layers
    plan = {}  # layer name -> ("fold_into", bn) | ("folded", producer) | ("depthwise", bn)
    for layer in model.layers:
        if type(layer).__name__ == "Rescaling" and len(layer.input_shape) == 4:
            plan[layer.name] = ("depthwise", layer)  # x·scale + offset: a per-channel affine
            continue
        if _normalization_affine(layer) is not None:
            plan[layer.name] = ("depthwise", layer)  # (x − mean)/std: a per-channel affine
            continue
        if type(layer).__name__ != "BatchNormalization":
            continue
        axis = layer.axis[0] if isinstance(layer.axis, (list, tuple)) else layer.axis
        rank = len(layer.input_shape)
        if axis not in (-1, rank - 1):
            continue
        producer = _producer(layer)
        if (producer is not None and type(producer).__name__ in _FOLDABLE
                and len(producer._outbound_nodes) == 1
                and getattr(producer.activation, "__name__", "linear") == "linear"
                and producer.name not in plan):
            plan[producer.name] = ("fold_into", layer)
            plan[layer.name] = ("folded", producer)
        elif rank == 4:
            plan[layer.name] = ("depthwise", layer)
    if not plan:
        return model

    def clone(layer):
        action = plan.get(layer.name, (None,))[0]
        if action == "fold_into":
            config = layer.get_config()
            config["use_bias"] = True
            return layer.__class__.from_config(config)
        if action == "folded":
            return layers.Activation("linear", name=layer.name)
        if action == "depthwise":
            return layers.DepthwiseConv2D(1, use_bias=True, name=layer.name)
        return layer.__class__.from_config(layer.get_config())

    folded = tf_keras.models.clone_model(model, clone_function=clone)
    for layer in model.layers:
        if type(layer).__name__ == "InputLayer":
            continue
        target = folded.get_layer(layer.name)
        action, other = plan.get(layer.name, (None, None))
        if action == "fold_into":
            scale, shift = _bn_scale_shift(other)
            weights = layer.get_weights()
            kernel = weights[0]
            bias = weights[1] if layer.use_bias else np.zeros_like(shift)
            kind = type(layer).__name__
            if kind == "DepthwiseConv2D":
                h, w, cin, mult = kernel.shape
                kernel = kernel * scale.reshape(cin, mult)
            elif kind == "Conv2DTranspose":
                kernel = kernel * scale.reshape(1, 1, -1, 1)
            else:
                kernel = kernel * scale
            target.set_weights([kernel, bias * scale + shift])
        elif action == "depthwise":
            if _normalization_affine(layer) is not None:
                scale, shift = _normalization_affine(layer)
            elif type(layer).__name__ == "Rescaling":
                channels = layer.input_shape[-1]
                scale = np.broadcast_to(np.asarray(layer.scale, np.float32), (channels,))
                shift = np.broadcast_to(np.asarray(layer.offset, np.float32), (channels,))
            else:
                scale, shift = _bn_scale_shift(layer)
            target.set_weights([np.reshape(scale, (1, 1, -1, 1)), np.asarray(shift)])
        elif action != "folded":
            target.set_weights(layer.get_weights())
    return folded


# ---------------------------------------------------------------------------------------
# training strategies
# ---------------------------------------------------------------------------------------

STRATEGIES = ("gradient", "statistics", "distill")


def quantization_error(model):
    """Σ over wrapped layers and quantized weights of mean((w − Q(w))²): how far the float
    weights sit from their quantization grid (a loss term pulling them onto it)."""
    from tflq.keras_compat import tf

    total = tf.constant(0.0)
    for layer in model.layers:
        for weight, quantizer, quantizer_vars in getattr(layer, "_weight_vars", []):
            quantized = quantizer(weight, training=False, weights=quantizer_vars)
            total += tf.reduce_mean(tf.square(weight - tf.stop_gradient(quantized)))
    return total


def make_trainer(student, teacher=None, quant_error_weight: float = 0.0,
                 temperature: float = 4.0, alpha: float = 0.5):
    """A Keras model that trains ``student`` through ``fit`` with tflq's losses.

    loss = α·CE(y, s) + (1 − α)·T²·KL(softmax(t/T) ‖ softmax(s/T)) [with a teacher]
           + λ·quantization_error(student)                          [λ = quant_error_weight]
    (α is 1 without a teacher.)
    """
    from tflq.keras_compat import tf, tf_keras

    if quant_error_weight < 0:
        raise ValueError(f"quant_error_weight must be >= 0. Received: {quant_error_weight}")
    if not temperature > 0 or not 0 <= alpha <= 1:
        raise ValueError(f"temperature must be > 0 and alpha in [0, 1]. Received: "
                         f"temperature={temperature}, alpha={alpha}")

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
            return [self.loss_tracker, self.accuracy]

        def train_step(self, data):
            x, y = data
            with tf.GradientTape() as tape:
                logits = self.student(x, training=True)
                per_example = self.ce(y, logits)
                if self.teacher is not None:
                    t = tf.stop_gradient(self.teacher(x, training=False))
                    kd = self.kl(tf.nn.softmax(t / temperature), tf.nn.softmax(logits / temperature))
                    per_example = alpha * per_example + (1 - alpha) * temperature**2 * kd
                loss = tf.nn.compute_average_loss(per_example)
                if quant_error_weight:
                    loss += quant_error_weight * quantization_error(self.student)
            variables = self.student.trainable_variables
            self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
            self.loss_tracker.update_state(loss)
            self.accuracy.update_state(y, logits)
            return {m.name: m.result() for m in self.metrics}

        def test_step(self, data):
            x, y = data
            logits = self.student(x, training=False)
            self.loss_tracker.update_state(tf.reduce_mean(self.ce(y, logits)))
            self.accuracy.update_state(y, logits)
            return {m.name: m.result() for m in self.metrics}

    return Trainer()


def check_teacher(teacher, student) -> None:
    """Refuses a teacher whose outputs cannot supervise the student."""
    t_shape, s_shape = tuple(teacher.output_shape), tuple(student.output_shape)
    if t_shape[1:] != s_shape[1:]:
        raise ValueError(f"Teacher outputs {t_shape} do not match the student's {s_shape}.")
    t_in = [tuple(s[1:]) for s in (teacher.input_shape if isinstance(teacher.input_shape, list)
                                   else [teacher.input_shape])]
    s_in = [tuple(s[1:]) for s in (student.input_shape if isinstance(student.input_shape, list)
                                   else [student.input_shape])]
    if t_in != s_in:
        raise ValueError(f"Teacher inputs {t_in} do not match the student's {s_in}.")


def convert_qat(model, workdir: str, integer_io: bool = True) -> bytes:
    """Converts a QAT model with the ranges it learned (its FakeQuant ops); no calibration."""
    import warnings

    from tflq.keras_compat import tf, wrap_model

    converter = wrap_model(model, "qat").make_converter(workdir)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if integer_io:
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
        return converter.convert()


# ---------------------------------------------------------------------------------------
# the QAT job: train → convert → validate (float model, QAT Keras model, .tflite) → report
# ---------------------------------------------------------------------------------------

import dataclasses  # noqa: E402

DISTRIBUTIONS = ("default", "mirrored", "multi_worker")
# QAT Keras outputs and int8 TFLite outputs are compared in units of the output's
# quantization step, read from the interpreter; float rounding may add a hair on top.
LSB_SLACK = 1.001


@dataclasses.dataclass(frozen=True)
class QATJob:
    """Everything one QAT run needs; checked on creation."""

    model: str
    train_data: str
    eval_data: str
    out: str
    scheme: str = "default_int8"
    strategy: str = "gradient"
    teacher: str | None = None
    epochs: int = 2
    batch_size: int = 64
    learning_rate: float = 1e-4
    quant_error_weight: float = 0.0
    temperature: float = 4.0
    alpha: float = 0.5
    overrides: tuple = ()
    activation_ranges: str | None = None
    range_k: float = 3.0
    distribution: str = "default"
    num_train_samples: int | None = None
    seed: int = 0
    num_threads: int = 1
    latency_runs: int = 50
    verbose: int = 2

    def __post_init__(self):
        from tflq import schemes

        schemes.get_scheme(self.scheme)
        if self.strategy not in STRATEGIES:
            raise ValueError(f"Unknown strategy {self.strategy!r}. Available: {list(STRATEGIES)}")
        if self.strategy == "distill" and not self.teacher:
            raise ValueError("The distill strategy needs a teacher (--teacher).")
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(f"Unknown distribution {self.distribution!r}. "
                             f"Available: {list(DISTRIBUTIONS)}")
        for name in ("epochs", "batch_size", "num_threads", "latency_runs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive. Received: {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0. Received: {self.learning_rate}")
        for override in self.overrides:
            schemes.Override.from_dict(dict(override))
        schemes.activation_quantizer(self.activation_ranges, self.range_k)


def _distribution(name: str):
    from tflq.keras_compat import tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def run_qat_job(job: QATJob, callbacks: Sequence = ()) -> dict:
    """Runs a QAT job and writes the QAT model, the int8 .tflite and the reports.

    Args:
      job: the settings.
      callbacks: extra Keras callbacks for ``fit`` (after the per-epoch checkpoint).

    Returns the report dict. Raises ValueError on bad input before anything is written. An
    interrupted run leaves its checkpoint in ``out/.qat_backup``; running the same job again
    resumes from the last finished epoch.
    """
    import os
    import shutil
    import tempfile

    from tflq import calibration, convert, interpreter, metrics, pipeline, report, schemes
    from tflq.fileio import write_atomic
    from tflq.keras_compat import load_model, tf_keras

    pipeline.check_output_dir(job.out)
    out_existed = os.path.isdir(job.out)
    distribution = _distribution(job.distribution)
    with distribution.scope():  # every variable the trainer touches is created in the scope
        float_model = load_model(job.model)
        teacher_model = load_model(job.teacher) if job.teacher else None
    if float_model.flavor != "tf_keras":
        raise ValueError(f"QAT needs a tf_keras model; {job.model!r} is {float_model.flavor}.")
    teacher = None
    if teacher_model is not None:
        if teacher_model.flavor != "tf_keras":
            raise ValueError(f"The teacher must be a tf_keras model; {job.teacher!r} is "
                             f"{teacher_model.flavor}.")
        teacher = teacher_model.keras_model
        check_teacher(teacher, float_model.keras_model)
    names = float_model.input_names
    x_train, y_train = calibration.load_arrays(job.train_data, float_model.inputs,
                                               job.num_train_samples, job.seed, "Training data")
    x_eval, y_eval = calibration.load_arrays(job.eval_data, float_model.inputs, None, job.seed,
                                             "Evaluation data")
    feed = (lambda x: x[names[0]]) if len(names) == 1 else (lambda x: [x[n] for n in names])
    tf_keras.utils.set_random_seed(job.seed)
    scratch = tempfile.mkdtemp(prefix="tflq-qat-")
    try:
        with distribution.scope():
            student = quantize_model(float_model.keras_model, job.scheme, job.overrides,
                                     job.activation_ranges, job.range_k)
            trainer = make_trainer(
                student, teacher if job.strategy == "distill" else None,
                job.quant_error_weight if job.strategy == "gradient" else 0.0,
                job.temperature, job.alpha)
            # statistics: ranges from moving averages of batch min/max, weights left as they are.
            rate = 0.0 if job.strategy == "statistics" else job.learning_rate
            trainer.compile(optimizer=tf_keras.optimizers.Adam(rate) if rate else
                            tf_keras.optimizers.SGD(0.0))
            trainer(feed({n: v[:1] for n, v in x_train.items()}))  # build: BackupAndRestore needs it
        # Checkpoint every epoch; an interrupted run resumes from the last one.
        backup = tf_keras.callbacks.BackupAndRestore(os.path.join(job.out, ".qat_backup"))
        history = trainer.fit(feed(x_train), y_train, epochs=job.epochs,
                              batch_size=job.batch_size, verbose=job.verbose,
                              callbacks=[backup, tf_keras.callbacks.TerminateOnNaN(),
                                         *callbacks])
        losses = history.history.get("loss", [])
        if not all(np.isfinite(losses)):
            shutil.rmtree(os.path.join(job.out, ".qat_backup"), ignore_errors=True)
            if not out_existed and not os.listdir(job.out):
                os.rmdir(job.out)
            raise ValueError(f"QAT training diverged (loss {losses[-1]} in epoch {len(losses)}); "
                             "nothing was written. Lower --learning_rate or use --strategy "
                             "statistics.")
        content = convert_qat(student, scratch, integer_io=True)
        float32 = convert.convert_model(float_model, "float32", scratch).content
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    float_ops = convert.find_float_ops(content)
    requantization = weight_requantization(student, content)
    runner = interpreter.TfliteModel(content, num_threads=job.num_threads)
    out_name = runner.output_names[0]
    step = runner.output_scale(out_name)
    float_cmp, qat_cmp = metrics.Comparison(), metrics.Comparison()
    float_accuracy, qat_keras_accuracy = metrics.Comparison(), metrics.Comparison()
    within, total = 0, 0
    for start in range(0, len(y_eval), 256):  # one pass: float, QAT Keras and int8 side by side
        batch = {n: v[start:start + 256] for n, v in x_eval.items()}
        labels = y_eval[start:start + 256]
        reference = float_model.predict(batch)
        qat_out = [np.asarray(student(feed(batch), training=False), np.float32)]
        deployed = runner.run(batch)
        float_cmp.update(reference, deployed, labels)
        qat_cmp.update(qat_out, deployed, labels)
        float_accuracy.update(reference, reference, labels)
        qat_keras_accuracy.update(qat_out, qat_out, labels)
        diff = np.abs(qat_out[0] - deployed[0])
        within += int(np.sum(diff <= step * LSB_SLACK))
        total += diff.size
    float_result, qat_result = float_cmp.result(), qat_cmp.result()
    base = float_accuracy.result()["accuracy"]
    latency = interpreter.measure_latency(
        {"float32": interpreter.TfliteModel(float32, num_threads=job.num_threads),
         "int8": runner}, {n: v[:1] for n, v in x_eval.items()}, runs=job.latency_runs)
    chosen = schemes.get_scheme(job.scheme)
    notes = [f"QAT ({job.scheme}, {job.strategy}); ranges from training, no calibration"]
    if not chosen.exact:
        notes.append(f"{job.scheme} weights do not fit TFLite's int8 weight format: the converter "
                     "re-quantized them; the parity figures show what that cost")
    stem = float_model.stem
    row = report.mode_row("int8", f"{stem}_qat_int8.tflite", content, len(float32), float_ops,
                          float_result, base, latency["int8"], None, notes)
    full = {
        "schema_version": report.SCHEMA_VERSION, "versions": pipeline.versions(),
        "machine": pipeline.machine_description(),
        "model": report.model_section(float_model, job.model),
        "settings": {**dataclasses.asdict(job), "num_threads": job.num_threads,
                     "latency_runs": job.latency_runs},
        "data": {"calibration": {"source": job.train_data, "num_samples": int(len(y_train))},
                 "evaluation": {"source": job.eval_data, "num_samples": int(len(y_eval)),
                                "has_labels": True}},
        "float": {"accuracy": base, "float32_tflite_bytes": len(float32),
                  "latency_ms": latency["float32"]},
        "modes": [row],
        "qat": {
            "scheme": job.scheme, "strategy": job.strategy, "deploys_exactly": chosen.exact,
            "keras_qat_accuracy": qat_keras_accuracy.result()["accuracy"],
            "parity": {"top1_agreement": qat_result["top1_agreement"],
                       "within_1_lsb": within / total, "output_step": step,
                       "sqnr_db": qat_result["sqnr_db"]},
            "weights": requantization,
            "history": {k: [float(v) for v in vals] for k, vals in history.history.items()},
        },
        "gates": {"max_accuracy_drop": None, "min_agreement": None, "passed": True,
                  "failures": []},
    }
    os.makedirs(job.out, exist_ok=True)
    write_atomic(os.path.join(job.out, row["path"]), content)
    h5 = os.path.join(job.out, f"{stem}_qat.h5")
    student.save(h5 + ".part.h5")
    os.replace(h5 + ".part.h5", h5)
    write_atomic(os.path.join(job.out, "report.json"), report.to_json(full))
    write_atomic(os.path.join(job.out, "report.md"), report.to_markdown(full).encode())
    write_atomic(os.path.join(job.out, "report.png"), report.to_png(full))
    shutil.rmtree(os.path.join(job.out, ".qat_backup"), ignore_errors=True)
    return full


def _to_tflite_layout(kind: str, kernel: np.ndarray) -> np.ndarray:
    if kind in ("Conv2D",):
        return kernel.transpose(3, 0, 1, 2)
    if kind == "Conv2DTranspose":
        return kernel.transpose(2, 0, 1, 3)
    if kind == "DepthwiseConv2D":
        h, w, cin, mult = kernel.shape
        return kernel.reshape(1, h, w, cin * mult)
    if kind == "Dense":
        return kernel.T
    return kernel


def weight_requantization(model, content: bytes) -> list[dict]:
    """Per quantized kernel: the QAT model's fake-quantized weights against the int8 weights
    the .tflite actually holds (dequantized). ``max_abs_error`` 0 means the scheme deployed
    exactly; otherwise this is what the converter's re-quantization cost."""
    from ai_edge_litert.interpreter import Interpreter

    from tflq import metrics

    interp = Interpreter(model_content=content)
    tensors = [t for t in interp.get_tensor_details() if np.dtype(t["dtype"]) == np.int8]
    rows = []
    for layer in model.layers:
        inner = getattr(layer, "layer", None)
        if inner is None:
            continue
        for weight, quantizer, quantizer_vars in getattr(layer, "_weight_vars", []):
            kind = type(inner).__name__
            fake = np.asarray(quantizer(weight, training=False, weights=quantizer_vars))
            expected = _to_tflite_layout(kind, fake)
            tokens = lambda name: set(re.split(r"[/;:]", name))  # noqa: E731
            found = [t for t in tensors if layer.name in tokens(t["name"])
                     and tuple(t["shape"]) == expected.shape]
            row = {"layer": inner.name, "type": kind, "weight": weight.name.split("/")[-1],
                   "shape": list(expected.shape)}
            if len(found) != 1:
                row.update(found=False)
                rows.append(row)
                continue
            detail = found[0]
            params = detail["quantization_parameters"]
            codes = interp.get_tensor(detail["index"]).astype(np.float64)
            axis = params["quantized_dimension"]
            shape = [1] * codes.ndim
            shape[axis] = -1
            scales = np.asarray(params["scales"], np.float64)
            zeros = np.asarray(params["zero_points"], np.float64)
            if scales.size > 1:
                scales, zeros = scales.reshape(shape), zeros.reshape(shape)
            deployed = (codes - zeros) * scales
            error = np.abs(deployed - expected)
            row.update(found=True, max_abs_error=float(error.max()),
                       sqnr_db=metrics.sqnr_db(expected[None], deployed[None]),
                       exact=bool(np.allclose(deployed, expected, rtol=0, atol=1e-7 * max(
                           1.0, float(np.abs(expected).max())))))
            rows.append(row)
    return rows


_SCALAR_OPS = {"__operators__.add": "add", "math.add": "add", "math.multiply": "multiply",
               "math.subtract": "subtract", "__operators__.sub": "subtract",
               "math.truediv": "divide", "__operators__.truediv": "divide"}


def _make_scalar_op_class():
    from tflq.keras_compat import tf, tf_keras

    class ScalarOp(tf_keras.layers.Layer):
        """``x (op) constant`` as a Keras layer: what a TFOpLambda such as MobileNetV3's
        ``x + 3.0`` computes, in a form tfmot's QuantizeWrapper can call."""

        def __init__(self, op: str, constant: float, **kwargs):
            super().__init__(**kwargs)
            self.op, self.constant = op, float(constant)

        def call(self, inputs, *args, **kwargs):  # the original call's constant is ignored
            c = tf.cast(self.constant, inputs.dtype)
            return {"add": lambda: inputs + c, "multiply": lambda: inputs * c,
                    "subtract": lambda: inputs - c, "divide": lambda: inputs / c}[self.op]()

        def get_config(self):
            return {**super().get_config(), "op": self.op, "constant": self.constant}

    return ScalarOp


ScalarOp = _make_scalar_op_class()


def _scalar_op_for(layer):
    if type(layer).__name__ != "TFOpLambda" or len(layer._inbound_nodes) != 1:
        return None
    op = _SCALAR_OPS.get(layer.get_config().get("function"))
    node = layer._inbound_nodes[0]
    args = list(node.call_args)
    constant = args[1] if len(args) == 2 else node.call_kwargs.get("y")
    if op is None or not isinstance(constant, (int, float)) or isinstance(constant, bool):
        return None
    return ScalarOp(op, constant, name=layer.name)


def replace_scalar_op_lambdas(model):
    """Replaces TFOpLambda layers of the form ``x (+ − × ÷) constant`` with :class:`ScalarOp`
    layers (same function, wrappable for QAT). Other TFOpLambda layers stay as they are."""
    from tflq.keras_compat import tf_keras

    if not any(_scalar_op_for(layer) is not None for layer in model.layers):
        return model

    def clone(layer):
        replacement = _scalar_op_for(layer)
        return replacement if replacement is not None else layer.__class__.from_config(
            layer.get_config())

    replaced = tf_keras.models.clone_model(model, clone_function=clone)
    replaced.set_weights(model.get_weights())
    return replaced

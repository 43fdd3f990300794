"""The int8 .tflite of a trained QAT model.

A QAT model converts with the ranges it learned (its FakeQuant ops,
:func:`tflq.ptq.convert.convert_qat`), unless it has recurrent layers or layers of the
user's own classes, whose inner ops the QAT graph cannot quantize. The converter quantizes
an LSTM only when it calibrates it (its MLIR quantizer's LSTM rules run on the post-training
path), so such a model deploys differently: its trained float weights go back into the float
model (:func:`trained_float`) and the converter calibrates that model to int8 on training
samples (:class:`CalibratedDeploy`). The LSTM kernels were trained on TFLite's int8 grid for
them (per gate, max|w| / 127, :class:`tflq.quant.quantizers.GateBlocks`), which the
converter's calibration reproduces; the activation ranges are the converter's calibration,
not the ones learned in training, and the report says so.
"""

from __future__ import annotations

import numpy as np

from tflq import recurrent

__all__ = ["CALIBRATION_SAMPLES", "deploys_by_calibration", "deploys_exactly", "ranges_note",
           "trained_float", "CalibratedDeploy", "convert_student"]

# Training samples the converter calibrates a recurrent QAT model on (batch 1 each).
CALIBRATION_SAMPLES = 200


def deploys_by_calibration(model) -> bool:
    """True when the (QAT or float) model holds recurrent layers, or layers of the user's own
    classes whose ops the QAT graph cannot quantize (:func:`tflq.quant.graph.opaque_layers`)."""
    from tflq.quant import graph

    return bool(recurrent.find_recurrent_layers(model) or graph.opaque_layers(model))


def deploys_exactly(scheme: str, student) -> bool:
    """Whether the .tflite holds exactly the QAT model's weights under ``scheme``: the scheme's
    own property (:class:`tflq.quant.schemes.Scheme`), except for a model deployed by
    calibration, where only ``default_int8`` (max|w| / 127, what the converter's calibration
    stores) is exact."""
    from tflq.quant import schemes

    if deploys_by_calibration(student):
        return scheme == "default_int8"
    return schemes.get_scheme(scheme).exact


def ranges_note(model) -> str:
    """Where the .tflite's activation ranges come from, for the report's first QAT line."""
    if deploys_by_calibration(model):
        return "ranges from the converter's calibration (see below why)"
    return "ranges from training, no calibration"


def _student_layer(student, name: str):
    for candidate in (f"quant_{name}", name):
        try:
            return student.get_layer(candidate)
        except ValueError:
            continue
    return None


def trained_float(student, prepared):
    """A copy of ``prepared`` (the float model the QAT model was wrapped from) holding the
    QAT model's trained float weights.

    Raises:
      RuntimeError: a layer with weights has no counterpart in the QAT model, or its weights
        differ in shape (the QAT graph is tflq's own: a bug of ours).
    """
    from tflq.models import tf_keras

    copy = tf_keras.models.clone_model(prepared)
    copy.set_weights(prepared.get_weights())
    for layer in copy.layers:
        if not layer.weights:
            continue
        wrapped = _student_layer(student, layer.name)
        # By name below the layer: the wrapper holds the inner layer's variables (the inner
        # layer's own list loses the kernels the wrapper replaced by their quantized values).
        trained = {w.name.split("/", 1)[-1]: w for w in getattr(wrapped, "weights", [])}
        values = []
        for weight in layer.weights:
            source = trained.get(weight.name.split("/", 1)[-1])
            if source is None or tuple(source.shape) != tuple(weight.shape):
                raise RuntimeError(f"The QAT model has no trained value for {weight.name!r} "
                                   f"(layer {layer.name!r}): tflq's QAT graph lost it.")
            values.append(source.numpy())
        layer.set_weights(values)
    return copy


class CalibratedDeploy:
    """What the converter calibrates for a QAT model :func:`deploys_by_calibration`: ``loaded`` (the float model
    with the trained weights), ``representative`` (up to :data:`CALIBRATION_SAMPLES` of the
    training samples, batch 1 each), ``options`` (integer I/O unless an input is token ids)
    and the report's ``note``."""

    def __init__(self, student, prepared, samples: dict, source: str):
        from tflq.models import wrap_model
        from tflq.options import ConvertOptions
        from tflq.quant.qat import token_inputs

        model = trained_float(student, prepared)
        self.loaded = wrap_model(model, source)
        total = len(next(iter(samples.values())))
        picks = np.random.default_rng(0).permutation(total)[:CALIBRATION_SAMPLES]
        names = self.loaded.input_names
        self.representative = lambda: ({n: samples[n][i:i + 1] for n in names} for i in picks)
        tokens = token_inputs(model)
        self.options = ConvertOptions(integer_io=not tokens)
        from tflq.quant import graph

        found = recurrent.find_recurrent_layers(model)
        why = (f"recurrent layer(s) {found}: the converter quantizes an LSTM only when it "
               "calibrates it" if found else
               f"layer(s) of the model's own classes {graph.opaque_layers(model)}: tflq's QAT "
               "graph quantizes their outputs, not the ops inside")
        self.note = (
            f"{why}, so the int8 .tflite is the converter's int8 of the QAT-trained float "
            f"weights, calibrated on {len(picks)} training sample(s); "
            + ("the LSTM kernels trained on TFLite's int8 grid (per gate), " if found else "")
            + "activation ranges are the calibration's, not the ones learned in training"
            + (f"; token-id input(s) {tokens} keep float I/O" if tokens else ""))

    def converter(self, workdir: str):
        """The configured converter (e.g. to convert again with sparse encoding)."""
        from tflq.options import Mode
        from tflq.ptq import convert

        converter = self.loaded.make_converter(workdir)
        convert.configure(converter, Mode.INT8, self.options, self.representative)
        return converter

    def convert(self, workdir: str, notes: list) -> bytes:
        """The int8 .tflite; appends the note (and the conversion's own notes) to ``notes``.

        Raises:
          ValueError: the converter refuses the model or leaves float ops.
        """
        from tflq.ptq import convert

        conversion = convert.convert_model(self.loaded, "int8", workdir, self.representative,
                                           self.options)
        notes.extend(n for n in (self.note, *conversion.notes) if n not in notes)
        return conversion.content


def convert_student(student, prepared, workdir: str, samples: dict, source: str,
                    notes: list) -> bytes:
    """The int8 .tflite of a trained QAT model: its learned ranges, or for recurrent models
    :class:`CalibratedDeploy` (which appends its note to ``notes``)."""
    from tflq.ptq import convert

    if deploys_by_calibration(student):
        return CalibratedDeploy(student, prepared, samples, source).convert(workdir, notes)
    return convert.convert_qat(student, workdir, integer_io=True)

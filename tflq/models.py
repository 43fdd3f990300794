"""The one place that picks tf_keras (Keras 2) or Keras 3 and loads models.

tfmot works only with tf_keras, and TensorFlow 2.21's default ``tf.keras`` is Keras 3.
``TF_USE_LEGACY_KERAS=1`` must therefore be set before TensorFlow is first imported;
importing this module does that (unless the user already chose otherwise). Keras 3 models
are still accepted: Keras 3 and tf_keras import side by side. A Keras 3 model is converted
from its tf_keras rebuild once :meth:`LoadedModel.prepare_conversion` has checked it on data
(the same graph, hence the same .tflite ops, as the tf_keras file of the model), otherwise
through ``model.export(dir)`` and ``TFLiteConverter.from_saved_model(dir)``.

Every model a user can bring is wrapped in a :class:`LoadedModel`, which knows its input
signature, runs the float reference and builds a TFLite converter.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Mapping

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

from tflq import keras3, recurrent, saved_model_graph  # noqa: E402
from tflq.factories import call_factory, import_callable, is_factory  # noqa: E402
from tflq.fileio import sha256_of  # noqa: E402
from tflq.signature import TensorSpec  # noqa: E402

FLAVOR_TF_KERAS = "tf_keras"
FLAVOR_KERAS3 = "keras3"
FLAVOR_SAVED_MODEL = "saved_model"

_KERAS_SUFFIXES = (".keras",)
_H5_SUFFIXES = (".h5", ".hdf5")


def legacy_keras_active() -> bool:
    """Returns True when ``tf.keras`` is tf_keras (needed by tfmot)."""
    return tf.keras.__name__.startswith("tf_keras")


class LoadedModel:
    """A float model of any supported flavor, with one interface for the pipeline.

    Attributes:
      source: what the user passed (path or ``module:function``).
      flavor: ``tf_keras``, ``keras3`` or ``saved_model``.
      inputs: input specs, in the model's own input order; data is always fed by name.
      output_names: output names as the converted .tflite's signature reports them.
      keras_model: the Keras object (None for a plain SavedModel).
    """

    def __init__(self, source, flavor, inputs, output_names, keras_model=None, signature=None,
                 saved_model_dir=None):
        self.source, self.flavor, self.keras_model = source, flavor, keras_model
        self.inputs, self.output_names = tuple(inputs), tuple(output_names)
        self._signature, self._saved_model_dir = signature, saved_model_dir
        self._predict_fn = self._tf_keras_copy = None
        self.rebuild_notes = None  # filled by to_tf_keras for Keras 3 models and SavedModels
        self.conversion_route = None  # filled by prepare_conversion: how it reaches the converter
        self._static_batch = None  # tflq.recurrent's plan (False: no recurrent layer)

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.inputs)

    @property
    def in_memory(self) -> bool:
        """True for a model object passed in memory (no file behind it)."""
        return self.source.startswith("<")

    @property
    def stem(self) -> str:
        """A short name for output files (an in-memory model's own name)."""
        if self.in_memory and self.keras_model is not None:
            name = "".join(c if c.isalnum() or c in "-_" else "_"
                           for c in str(getattr(self.keras_model, "name", "")))
            return name.strip("_") or "model"
        base = self.source.rstrip("/\\")
        if is_factory(base):
            return base.split(":")[-1]
        return os.path.splitext(os.path.basename(base))[0] or "model"

    def fingerprint(self) -> str:
        """sha256 of the model's bytes (files under a folder in sorted order); for an
        in-memory model, of its weights (shape, dtype and bytes of each, in order)."""
        if self.in_memory and self.keras_model is not None:
            digest = hashlib.sha256()
            for weight in self.keras_model.get_weights():
                array = np.ascontiguousarray(weight)
                digest.update(f"{array.dtype.str}{array.shape}".encode())
                digest.update(array.tobytes())
            return digest.hexdigest()
        if os.path.exists(self.source):
            return sha256_of(self.source)
        return hashlib.sha256(self.source.encode()).hexdigest()

    def predict(self, batch: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Runs the float model on one batch given by input name.

        Returns:
          The outputs as float numpy arrays, in ``output_names`` order.
        """
        if self._predict_fn is None:
            self._predict_fn = self._build_predict()
        outs = self._predict_fn({k: tf.convert_to_tensor(v) for k, v in batch.items()})
        return [np.asarray(o, dtype=np.float32) for o in outs]

    def _build_predict(self):
        if self.flavor == FLAVOR_SAVED_MODEL:
            sig = self._signature

            def run(feed):
                result = sig(**feed)
                return [result[name].numpy() for name in self.output_names]

            return run
        model = self.keras_model
        names = self.input_names

        @tf.function(reduce_retracing=True)
        def call(feed):
            args = [feed[n] for n in names]
            return output_list(model(args if len(args) > 1 else args[0], training=False))

        def run(feed):
            return [o.numpy() for o in call(feed)]

        return run

    def graph_function(self):
        """A concrete ``tf.function`` of the model, outputs in ``output_names`` order (a
        SavedModel's are its signature's, flattened by sorted name): for reading the graph."""
        if self.flavor == FLAVOR_SAVED_MODEL:
            return self._signature
        model, specs = self.keras_model, [
            tf.TensorSpec((None, *s.shape), s.dtype, name=s.name) for s in self.inputs]

        def call(*args):
            return output_list(model(list(args) if len(args) > 1 else args[0], training=False))

        return tf.function(call).get_concrete_function(*specs)

    def to_tf_keras(self, samples: list):
        """The model as a tf_keras model (tfmot and tflq's graph passes need one).

        A Keras 3 model is rebuilt layer for layer (:func:`tflq.keras3.rebuild_keras3`), a
        SavedModel's Keras graph (in ``saved_model.pb`` before TF 2.5) is read
        (:func:`tflq.saved_model_graph.layer_graph`); once per model, checked on ``samples``.

        Args:
          samples: model inputs (an array, or a list in input order) to check the copy on.

        Returns:
          The tf_keras model (the model itself for tf_keras models).

        Raises:
          ValueError: a SavedModel with no usable Keras graph or one that differs from its
            signature (:func:`tflq.saved_model_graph.layer_graph` says why), a subclassed
            Keras 3 model, or a layer tf_keras cannot build.
          tflq.keras3.RewriteError: the copy computes something else (names the layer).
        """
        if self.flavor == FLAVOR_TF_KERAS:
            return self.keras_model
        if self.flavor == FLAVOR_SAVED_MODEL and self._tf_keras_copy is None:
            self._tf_keras_copy, self.rebuild_notes = saved_model_graph.layer_graph(
                self.source, self._saved_model_dir, tf_keras.models.load_model, self.predict,
                self.input_names, samples)
        if self._tf_keras_copy is None:
            self._tf_keras_copy, self.rebuild_notes = keras3.checked_rebuild(
                self.keras_model, self.source, samples)
        return self._tf_keras_copy

    def prepare_conversion(self, samples: list[dict], limit: int = 64) -> str:
        """Chooses how the model reaches the converter and returns it as a report line
        (also kept in ``conversion_route``).

        A Keras 3 model is rebuilt as tf_keras, checked on the first ``limit`` ``samples``
        (batch dicts by input name), and later conversions start from the checked copy: the
        ops of its tf_keras twin (``model.export`` adds shape ops for the free batch). A
        model tf_keras cannot rebuild is exported instead, and the line says why.

        Raises:
          tflq.keras3.RewriteError: the rebuild computes something else (an internal error).
        """
        if self.flavor != FLAVOR_KERAS3:
            self.conversion_route = {FLAVOR_TF_KERAS: "tf_keras model, from_keras_model",
                                     FLAVOR_SAVED_MODEL: "SavedModel, from_saved_model"}[self.flavor]
            return self.conversion_route
        names, picked = self.input_names, samples[:limit]
        stacked = [np.concatenate([s[n] for s in picked]) for n in names]
        try:
            self.to_tf_keras([stacked[0] if len(names) == 1 else stacked])
        except ValueError as error:
            self.conversion_route = ("Keras 3 model, exported (model.export): no tf_keras rebuild "
                                     f"({_first_line(error)}); the .tflite may carry shape ops "
                                     "for the free batch dimension")
        else:
            self.conversion_route = (
                "Keras 3 model, converted from its tf_keras rebuild (outputs checked on "
                f"{self.rebuild_notes['checked_samples']} calibration samples, max error "
                f"{self.rebuild_notes['max_relative_error']:.2g} of range)")
        return self.conversion_route

    def static_batch(self) -> recurrent.StaticBatch | None:
        """How a model with recurrent layers converts (a static batch of 1, see
        :mod:`tflq.recurrent`); None for other models. Planned once per model."""
        if self._static_batch is None:
            self._static_batch = recurrent.plan_static_batch(self) or False
        return self._static_batch or None

    @property
    def conversion_notes(self) -> tuple[str, ...]:
        """Lines the report carries about how this model converts (empty for most)."""
        plan = self.static_batch()
        return (plan.note,) if plan is not None else ()

    def make_converter(self, workdir: str) -> tf.lite.TFLiteConverter:
        """Returns a fresh TFLite converter for this model.

        A model with recurrent layers is traced with a static batch of 1
        (:meth:`static_batch`; the reason is in :attr:`conversion_notes`).

        Args:
          workdir: a scratch folder; a Keras 3 model without a checked tf_keras rebuild (see
            :meth:`prepare_conversion`) is exported there once (again if the folder of the
            earlier export no longer exists).
        """
        if self.static_batch() is not None:
            return self.static_batch().converter(self.inputs, self.output_names)
        if self.flavor == FLAVOR_TF_KERAS:
            return tf.lite.TFLiteConverter.from_keras_model(self.keras_model)
        if self.flavor == FLAVOR_KERAS3 and self._tf_keras_copy is not None:
            return tf.lite.TFLiteConverter.from_keras_model(
                keras3.with_output_names(self._tf_keras_copy, self.output_names))
        if self.flavor == FLAVOR_KERAS3 and (self._saved_model_dir is None
                                             or not os.path.isdir(self._saved_model_dir)):
            # Exported again when the scratch folder of an earlier export is gone (a job
            # deletes its scratch folder; selective quantization then asks in a new one).
            export_dir = os.path.join(workdir, "keras3_export")
            self.keras_model.export(export_dir, verbose=False)
            self._saved_model_dir = export_dir
        return tf.lite.TFLiteConverter.from_saved_model(self._saved_model_dir)


def _spec_from_shape(name, shape, dtype) -> TensorSpec:
    dims = tuple(None if d is None else int(d) for d in list(shape)[1:])
    return TensorSpec(name=str(name), shape=dims, dtype=np.dtype(dtype).name)


def is_keras3(obj) -> bool:
    try:
        import keras
    except ImportError:  # pragma: no cover - keras ships with tensorflow 2.21
        return False
    return isinstance(obj, keras.Model) and not isinstance(obj, tf_keras.Model)


def wrap_model(model, source: str = "<in-memory model>") -> LoadedModel:
    """Wraps an in-memory tf_keras or Keras 3 model.

    Raises:
      ValueError: for objects that are not Keras models, or subclassed models whose inputs
        are unknown.
    """
    if isinstance(model, tf_keras.Model):
        if not model.inputs:
            raise ValueError(
                f"Model {source!r} is a subclassed tf_keras model with unknown inputs. "
                "Build it as a Sequential or Functional model (or call it once on data) "
                "before converting."
            )
        inputs = [
            _spec_from_shape(n, t.shape, t.dtype.as_numpy_dtype)
            for n, t in zip(model.input_names, model.inputs, strict=True)
        ]
        return LoadedModel(source, FLAVOR_TF_KERAS, inputs, list(model.output_names),
                           keras_model=model)
    if is_keras3(model):
        try:
            model_inputs = list(model.inputs)
        except (AttributeError, ValueError):
            model_inputs = []
        if not model_inputs:
            raise ValueError(
                f"Model {source!r} is a subclassed Keras 3 model with unknown inputs. "
                "Build it as a Sequential or Functional model before converting."
            )
        inputs = [_spec_from_shape(t.name, t.shape, t.dtype) for t in model_inputs]
        outputs = model.outputs if isinstance(model.outputs, (list, tuple)) else [model.outputs]
        output_names = [f"output_{i}" for i in range(len(outputs))]
        return LoadedModel(source, FLAVOR_KERAS3, inputs, output_names, keras_model=model)
    raise ValueError(
        f"Expected a tf_keras or Keras 3 model from {source!r}. "
        f"Received: {type(model).__module__}.{type(model).__name__}"
    )


def _keras_version_of(path: str) -> str:
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if "config.json" not in names:
                raise ValueError(
                    f"Model file {path!r} is a zip archive but not a Keras model "
                    "(no config.json inside)."
                )
            bad = archive.testzip()
            if bad is not None:
                raise ValueError(f"Model file {path!r} is corrupt (member {bad!r} fails CRC).")
            meta = json.loads(archive.read("metadata.json")) if "metadata.json" in names else {}
    except zipfile.BadZipFile as e:
        raise ValueError(f"Model file {path!r} is corrupt or truncated: {e}.") from e
    return str(meta.get("keras_version", "2"))


def _load_keras_file(path: str):
    version = _keras_version_of(path)
    try:
        if int(version.split(".")[0]) >= 3:
            import keras

            return keras.saving.load_model(path, compile=False)
        return tf_keras.models.load_model(path, compile=False)
    except Exception as e:  # the loaders raise many types for damaged files
        raise ValueError(
            f"Model file {path!r} (Keras {version}) could not be loaded: "
            f"{type(e).__name__}: {_first_line(e)}"
        ) from e


def _load_h5(path: str):
    import h5py

    if not h5py.is_hdf5(path):
        raise ValueError(f"Model file {path!r} is not a valid HDF5 file (corrupt or truncated).")
    try:
        with h5py.File(path, "r") as f:
            version = f.attrs.get("keras_version", "2")
    except OSError as e:
        raise ValueError(f"Model file {path!r} could not be loaded (corrupt or truncated HDF5): {e}.") from e
    version = version.decode() if isinstance(version, bytes) else str(version)
    keras3 = version.split(".")[0].isdigit() and int(version.split(".")[0]) >= 3
    try:
        if keras3:  # Keras 3 writes InputLayer batch_shape and dtype policies tf_keras rejects
            import keras

            return keras.saving.load_model(path, compile=False)
        return tf_keras.models.load_model(path, compile=False)
    except Exception as e:
        raise ValueError(
            f"Model file {path!r} (written by Keras {version}) could not be loaded with "
            f"{'Keras 3' if keras3 else 'tf_keras'}: {type(e).__name__}: {_first_line(e)}"
        ) from e


def output_list(out) -> list:
    """Keras outputs as a list in ``model.outputs`` order (a dict flattens by sorted key)."""
    if isinstance(out, dict):
        return tf.nest.flatten(out)
    return list(out) if isinstance(out, (list, tuple)) else [out]


def _load_saved_model_dir(path: str) -> LoadedModel:
    if not os.path.isfile(os.path.join(path, "saved_model.pb")):
        raise ValueError(
            f"Model folder {path!r} is not a SavedModel (no saved_model.pb inside)."
        )
    if os.path.isfile(os.path.join(path, "keras_metadata.pb")):
        try:
            return wrap_model(tf_keras.models.load_model(path, compile=False), source=path)
        except ValueError:
            raise
        except Exception:  # fall back to the plain SavedModel signature below
            pass
    try:
        loaded = tf.saved_model.load(path)
    except Exception as e:
        raise ValueError(
            f"SavedModel {path!r} could not be loaded: {type(e).__name__}: {_first_line(e)}"
        ) from e
    signatures = getattr(loaded, "signatures", {})
    if "serving_default" not in signatures:
        raise ValueError(
            f"SavedModel {path!r} has no 'serving_default' signature. "
            f"Received signatures: {sorted(signatures)}"
        )
    sig = signatures["serving_default"]
    _, kwargs = sig.structured_input_signature
    inputs = [
        TensorSpec(name, tuple(None if d is None else int(d) for d in spec.shape[1:]),
                   spec.dtype.as_numpy_dtype.__name__)
        for name, spec in sorted(kwargs.items())
    ]
    output_names = sorted(sig.structured_outputs)
    model = LoadedModel(path, FLAVOR_SAVED_MODEL, inputs, output_names, signature=sig,
                        saved_model_dir=path)
    model._loaded = loaded  # keep the trackable alive while the signature is used
    return model


def _load_factory(spec: str) -> LoadedModel:
    factory = import_callable(spec, "Model factory")
    return wrap_model(call_factory(factory, spec, "Model factory"), source=spec)


def load_model(spec) -> LoadedModel:
    """Loads a model from a path or a ``package.module:function`` factory, or wraps a model
    object held in memory (tf_keras or Keras 3, see :func:`wrap_model`; a
    :class:`LoadedModel` is returned as it is).

    Supported: ``.keras`` files written by Keras 3 or by tf_keras (told apart by the
    ``keras_version`` in the archive's metadata), ``.h5`` files written by tf_keras or by
    Keras 3 (told apart by the file's ``keras_version`` attribute), SavedModel folders
    (Keras or plain TF with a ``serving_default`` signature), and factories returning a
    model.

    Raises:
      ValueError: the path is missing, of an unknown kind, corrupt or truncated, or the
        factory cannot be imported or returns something that is not a model.
    """
    if isinstance(spec, LoadedModel):
        return spec
    if spec is not None and not isinstance(spec, str):
        return wrap_model(spec)  # refuses what is not a Keras model, naming its type
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"Expected a model path or 'module:function'. Received: model={spec!r}")
    if is_factory(spec):
        return _load_factory(spec)
    if not os.path.exists(spec):
        raise ValueError(f"Model path not found: {spec!r}")
    if os.path.isdir(spec):
        return _load_saved_model_dir(spec)
    if os.path.getsize(spec) == 0:
        raise ValueError(f"Model file {spec!r} is empty.")
    lower = spec.lower()
    if lower.endswith(_KERAS_SUFFIXES):
        return wrap_model(_load_keras_file(spec), source=spec)
    if lower.endswith(_H5_SUFFIXES):
        return wrap_model(_load_h5(spec), source=spec)
    raise ValueError(
        f"Unknown model format for {spec!r}. Expected a .keras or .h5 file, a SavedModel "
        "folder, or 'package.module:function'."
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else ""


__all__ = ["FLAVOR_KERAS3", "FLAVOR_SAVED_MODEL", "FLAVOR_TF_KERAS", "LoadedModel", "TensorSpec",
           "output_list", "legacy_keras_active", "load_model", "wrap_model"]

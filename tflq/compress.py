"""Quantization combined with pruning and clustering, with honest size accounting.

The chain (:func:`run_compress_job`):

1. **prune** (``sparsity`` > 0 or ``structure="2:4"``): tfmot's magnitude pruning with a
   constant or polynomial-decay schedule, or 2:4 structured sparsity (2 zeros in every 4
   consecutive input-channel weights), on the layers chosen by type and name pattern;
   fine-tuned for ``epochs``, then stripped;
2. **cluster** (``clusters`` ≥ 2): tfmot's weight clustering (k-means++ centroids, sparsity
   kept when the model was pruned), fine-tuned, stripped;
3. **quantize**: ``ptq`` — the plain TFLite converter with calibration data; ``qat`` — tflq's
   QAT (:func:`tflq.qat.quantize_model`, any scheme) with the structure *preserved*: after
   every training step pruned weights are set back to 0 and every clustered weight to its
   layer-wide cluster mean, measured in units of the weight's BatchNorm folding scale
   (PQAT/CQAT);
4. **validate and report**: accuracy of the int8 .tflite against the float model, and the
   size accounting of :func:`weight_stats` — raw and gzip size, per-layer sparsity and
   unique int8 values read from the .tflite itself, 2:4 compliance, and the size with
   TFLite's sparse tensor encoding.

Models must output logits (as :func:`tflq.qat.make_trainer` expects).
"""

from __future__ import annotations

import dataclasses
import gzip
import re

import numpy as np

STRUCTURES = ("unstructured", "2:4")
SCHEDULES = ("constant", "polynomial")
QUANTIZATIONS = ("qat", "ptq")
# Layer types tfmot prunes and clusters through their kernel.
COMPRESSIBLE = ("Conv2D", "Dense", "Conv1D", "Conv2DTranspose")
# 2:4 sparsity runs along input channels: TFLite (and tfmot) lay kernels out
# [out, ..., in], so the input-channel count must be a multiple of 4.
STRUCTURED_TYPES = ("Conv2D", "Dense")
_WEIGHT_INPUT = {"CONV_2D": 1, "DEPTHWISE_CONV_2D": 1, "FULLY_CONNECTED": 1, "TRANSPOSE_CONV": 1}


@dataclasses.dataclass(frozen=True)
class CompressJob:
    """Everything one compression run needs; checked on creation.

    Attributes:
      sparsity: target fraction of zero weights in [0, 1) (0: no pruning; 2:4 means 0.5).
      schedule: ``constant`` or ``polynomial`` (0 → sparsity over the first 3/4 of training).
      structure: ``unstructured`` or ``2:4``.
      clusters: centroids per layer (0: no clustering; otherwise ≥ 2).
      layers: regular expression on layer names choosing what to prune/cluster (None: all
        layers of ``layer_types``).
      layer_types: layer class names to prune/cluster.
      quantization: ``qat`` (structure-preserving QAT) or ``ptq`` (the converter).
      scheme: QAT weight scheme (:data:`tflq.schemes.SCHEMES`); ``ptq`` uses TFLite's int8.
      epochs: fine-tuning epochs of the prune and cluster stages.
      qat_epochs: QAT epochs (None: ``epochs``).
      distill: QAT learns from the original float model as teacher too
        (:func:`tflq.qat.make_trainer`: α·CE + (1 − α)·T²·KL, α 0.5, T 4).
    """

    model: str
    train_data: str
    eval_data: str
    out: str
    sparsity: float = 0.0
    schedule: str = "constant"
    structure: str = "unstructured"
    clusters: int = 0
    layers: str | None = None
    layer_types: tuple = ("Conv2D", "Dense")
    quantization: str = "qat"
    scheme: str = "default_int8"
    epochs: int = 2
    qat_epochs: int | None = None
    batch_size: int = 64
    learning_rate: float = 1e-4
    qat_learning_rate: float | None = None
    distill: bool = False
    num_train_samples: int | None = None
    num_calibration_samples: int = 500
    seed: int = 0
    num_threads: int = 1
    latency_runs: int = 50
    verbose: int = 2

    def __post_init__(self):
        from tflq import schemes

        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1). Received: sparsity={self.sparsity}")
        if self.structure not in STRUCTURES:
            raise ValueError(f"Unknown structure {self.structure!r}. Available: {list(STRUCTURES)}")
        if self.structure == "2:4" and self.sparsity not in (0.0, 0.5):
            raise ValueError(f"2:4 structure means 50% sparsity; sparsity={self.sparsity} "
                             "contradicts it (leave it at 0 or 0.5).")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"Unknown schedule {self.schedule!r}. Available: {list(SCHEDULES)}")
        if self.clusters == 1 or self.clusters < 0:
            raise ValueError(f"clusters must be at least 2 (or 0 for no clustering). "
                             f"Received: clusters={self.clusters}")
        if self.clusters > 256:
            raise ValueError(f"clusters must be at most 256 (int8 holds 256 values). "
                             f"Received: clusters={self.clusters}")
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(f"Unknown quantization {self.quantization!r}. "
                             f"Available: {list(QUANTIZATIONS)}")
        schemes.get_scheme(self.scheme)
        unknown = [t for t in self.layer_types if t not in COMPRESSIBLE]
        if unknown or not self.layer_types:
            raise ValueError(f"layer_types {list(self.layer_types)}: each must be one of "
                             f"{list(COMPRESSIBLE)}.")
        if self.structure == "2:4":
            unsupported = [t for t in self.layer_types if t not in STRUCTURED_TYPES]
            if unsupported:
                raise ValueError(f"2:4 sparsity is supported for {list(STRUCTURED_TYPES)}, not "
                                 f"{unsupported}; drop them from layer_types.")
        if self.layers is not None:
            try:
                re.compile(self.layers)
            except re.error as e:
                raise ValueError(f"layers {self.layers!r} is not a valid regex: {e}") from e
        if self.qat_epochs is not None and self.qat_epochs < 1:
            raise ValueError(f"qat_epochs must be positive. Received: {self.qat_epochs}")
        for name in ("epochs", "batch_size", "num_threads", "latency_runs",
                     "num_calibration_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive. Received: {getattr(self, name)}")
        for name in ("learning_rate", "qat_learning_rate"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0. Received: {value}")

    @property
    def prunes(self) -> bool:
        return self.sparsity > 0 or self.structure == "2:4"

    @property
    def clusters_weights(self) -> bool:
        return self.clusters >= 2


def select_layers(model, job: CompressJob) -> list:
    """The layers to prune/cluster; checks that the selection and the structure fit them.

    Raises:
      ValueError: the pattern matches no layer of the chosen types, or a chosen layer cannot
        hold the requested structure.
    """
    chosen = [layer for layer in model.layers if type(layer).__name__ in job.layer_types
              and (job.layers is None or re.search(job.layers, layer.name))]
    if (job.prunes or job.clusters_weights) and not chosen:
        candidates = [f"{layer.name} ({type(layer).__name__})" for layer in model.layers]
        raise ValueError(f"No layer of type {list(job.layer_types)} matches "
                         f"{job.layers!r}. Layers: {candidates}")
    if job.structure == "2:4":
        for layer in chosen:
            kind = type(layer).__name__
            if kind not in STRUCTURED_TYPES:
                raise ValueError(f"Layer {layer.name!r} ({kind}) does not support 2:4 "
                                 f"sparsity (only {list(STRUCTURED_TYPES)}); exclude it with "
                                 "--layers.")
            channels = int(layer.kernel.shape[-2])
            if channels % 4:
                raise ValueError(
                    f"Layer {layer.name!r} ({kind}, {channels} input channel(s)) cannot hold "
                    "2:4 sparsity: its input channels must be a multiple of 4. Exclude it "
                    "with --layers, e.g. --layers='^(?!" + re.escape(layer.name) + "$)'.")
    if job.clusters_weights:
        for layer in chosen:
            size = int(np.prod(layer.kernel.shape))
            if size < job.clusters:
                raise ValueError(f"Layer {layer.name!r} has {size} weights, fewer than "
                                 f"clusters={job.clusters}.")
    return chosen


# ---------------------------------------------------------------------------------------
# stages
# ---------------------------------------------------------------------------------------

def _fit(model, x, y, job: CompressJob, callbacks, learning_rate, epochs=None, teacher=None):
    from tflq import qat
    from tflq.keras_compat import tf_keras

    epochs = epochs or job.epochs
    trainer = qat.make_trainer(model, teacher)
    # Cosine decay to 0 over the stage: a trained model is disturbed at the start (pruning
    # steps, clustering) and settles at a small learning rate by the end.
    steps = epochs * -(-len(y) // job.batch_size)
    schedule = tf_keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=steps)
    trainer.compile(optimizer=tf_keras.optimizers.Adam(schedule))
    history = trainer.fit(x, y, epochs=epochs, batch_size=job.batch_size,
                          verbose=job.verbose,
                          callbacks=[tf_keras.callbacks.TerminateOnNaN(), *callbacks])
    losses = history.history.get("loss", [])
    if not all(np.isfinite(losses)):
        raise ValueError(f"Training diverged (loss {losses[-1]}); nothing was written. "
                         "Lower --learning_rate.")
    return {k: [float(v) for v in vals] for k, vals in history.history.items()}


def _fresh(model):
    """A copy with new layers (tfmot's wrap/strip share layer objects between models, which
    confuses graph walks such as BatchNorm folding)."""
    from tflq.keras_compat import tf_keras

    copy = tf_keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def prune(model, x, y, job: CompressJob, names: set):
    """Magnitude pruning of the named layers; returns (stripped model, training history)."""
    from tflq.keras_compat import tf_keras
    from tflq.quantizers import tfmot

    sparsity_api = tfmot.sparsity.keras
    steps = job.epochs * -(-len(y) // job.batch_size)
    target = 0.5 if job.structure == "2:4" else job.sparsity
    if job.schedule == "polynomial":
        schedule = sparsity_api.PolynomialDecay(0.0, target, begin_step=0,
                                                end_step=max(1, int(0.75 * steps)),
                                                frequency=max(1, steps // 20))
    else:
        schedule = sparsity_api.ConstantSparsity(target, begin_step=0,
                                                 frequency=max(1, steps // 20))
    extra = {"sparsity_m_by_n": (2, 4)} if job.structure == "2:4" else {}

    def clone(layer):
        if layer.name in names:
            return sparsity_api.prune_low_magnitude(layer, pruning_schedule=schedule, **extra)
        return layer

    wrapped = tf_keras.models.clone_model(_fresh(model), clone_function=clone)
    history = _fit(wrapped, x, y, job, [sparsity_api.UpdatePruningStep()], job.learning_rate)
    return _fresh(sparsity_api.strip_pruning(wrapped)), history


def cluster(model, x, y, job: CompressJob, names: set):
    """Weight clustering of the named layers; returns (stripped model, training history)."""
    from tflq.keras_compat import tf_keras
    from tflq.quantizers import tfmot

    api = tfmot.clustering.keras

    def clone(layer):
        if layer.name in names:
            return api.cluster_weights(
                layer, number_of_clusters=job.clusters,
                cluster_centroids_init=api.CentroidInitialization.KMEANS_PLUS_PLUS,
                preserve_sparsity=job.prunes)
        return layer

    wrapped = tf_keras.models.clone_model(_fresh(model), clone_function=clone)
    history = _fit(wrapped, x, y, job, [], job.learning_rate)
    return _fresh(api.strip_clustering(wrapped)), history


def _kernel_variable(layer):
    """The kernel variable of a QuantizeWrapper's layer (the wrapper replaces
    ``layer.kernel`` by its fake-quantized tensor; the variable is in ``_weight_vars``)."""
    for weight, _, _ in getattr(layer, "_weight_vars", []):
        if weight.name.split("/")[-1].startswith("kernel"):
            return weight
    return None


def _make_preserve_callback():
    from tflq.keras_compat import tf_keras

    class PreserveStructure(tf_keras.callbacks.Callback):
        """After every training step: pruned weights back to 0, clustered weights to the
        mean of their cluster (PQAT / CQAT).

        Structure is read when the callback is made: zeros are the pruned weights. With
        ``clusters`` and the layer's clustered kernel *before* BatchNorm folding in
        ``reference``, clusters are layer-wide: each weight is the shared centroid times
        its fixed folding scale (kernel / reference), so every channel keeps the same
        centroids, as after tfmot's clustering. Without a reference, the distinct values
        of each output channel are its clusters.
        """

        def __init__(self, qat_model, names: set, clusters: bool, reference: dict | None = None):
            super().__init__()
            self.entries = []
            reference = reference or {}
            for layer in qat_model.layers:
                inner = getattr(layer, "layer", None)
                variable = _kernel_variable(layer) if inner is not None else None
                if variable is None or inner.name not in names:
                    continue
                kernel = variable.numpy().astype(np.float64)
                mask = kernel != 0
                ids, scale = None, np.ones_like(kernel)
                if clusters and inner.name in reference and \
                        reference[inner.name].shape == kernel.shape:
                    base = reference[inner.name].astype(np.float64)
                    scale = np.where(base != 0, kernel / np.where(base != 0, base, 1.0), 1.0)
                    _, ids = np.unique(base, return_inverse=True)
                    ids = ids.reshape(kernel.shape)
                elif clusters:
                    flat = kernel.reshape(-1, kernel.shape[-1])
                    groups = np.zeros(flat.shape, np.int64)
                    for c in range(flat.shape[1]):
                        _, groups[:, c] = np.unique(flat[:, c], return_inverse=True)
                    ids = (groups + np.arange(flat.shape[1]) * flat.shape[0]).reshape(kernel.shape)
                self.entries.append((variable, mask, ids, scale))

        def on_train_batch_end(self, batch, logs=None):
            self.apply()

        def apply(self):
            for variable, mask, ids, scale in self.entries:
                kernel = variable.numpy().astype(np.float64)
                if ids is not None:
                    unit = (kernel / scale).ravel()
                    flat_ids = ids.ravel()
                    sums = np.bincount(flat_ids, weights=unit, minlength=flat_ids.max() + 1)
                    counts = np.bincount(flat_ids, minlength=flat_ids.max() + 1)
                    kernel = (sums / np.maximum(counts, 1))[ids] * scale
                variable.assign((kernel * mask).astype(np.float32))

    return PreserveStructure


PreserveStructure = _make_preserve_callback()


# ---------------------------------------------------------------------------------------
# size accounting, read from the .tflite
# ---------------------------------------------------------------------------------------

def gzip_size(content: bytes) -> int:
    """Size after ``gzip -9``: what a compressed download or APK asset costs."""
    return len(gzip.compress(content, compresslevel=9, mtime=0))


def weight_stats(content: bytes) -> list[dict]:
    """Per int8 weight tensor of CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED /
    TRANSPOSE_CONV in a .tflite: sparsity (codes equal to the zero point), unique codes in
    the tensor and at most in one output channel, and 2:4 compliance along input channels.
    Read through the interpreter: this is what ships, not what Keras held."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=content)
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    rows, seen = [], set()
    for op in interp._get_ops_details():
        slot = _WEIGHT_INPUT.get(op["op_name"])
        if slot is None or len(op["inputs"]) <= slot:
            continue
        index = int(op["inputs"][slot])
        detail = tensors.get(index)
        if detail is None or np.dtype(detail["dtype"]) != np.int8 or index in seen:
            continue
        seen.add(index)
        try:
            codes = interp.get_tensor(index)
        except ValueError:  # not a constant buffer
            continue
        zero_points = np.asarray(detail["quantization_parameters"]["zero_points"])
        zero = int(zero_points.ravel()[0]) if zero_points.size else 0
        channel_axis = 3 if op["op_name"] == "DEPTHWISE_CONV_2D" else 0
        per_channel = np.moveaxis(codes, channel_axis, 0).reshape(codes.shape[channel_axis], -1)
        row = {
            "op": f"{op['op_name']}#{op['index']}", "tensor": detail["name"],
            "shape": [int(s) for s in codes.shape], "weights": int(codes.size),
            "sparsity": float(np.mean(codes == zero)),
            "unique_values": int(np.unique(codes).size),
            "max_unique_per_channel": int(max(np.unique(c).size for c in per_channel)),
        }
        if op["op_name"] in ("CONV_2D", "FULLY_CONNECTED") and codes.shape[-1] % 4 == 0:
            groups = (codes == zero).reshape(-1, 4).sum(axis=1)
            row["two_four_compliant"] = bool(np.all(groups >= 2))
        rows.append(row)
    return rows


def sparse_encoded_size(make_converter) -> dict:
    """Converts again with TFLite's sparse tensor encoding (``EXPERIMENTAL_SPARSITY``) and
    says how many tensors it actually encoded; the encoding only pays for (block-)sparse
    weights of the ops that have sparse kernels."""
    from ai_edge_litert.interpreter import Interpreter

    from tflq.keras_compat import tf

    converter = make_converter()
    converter.optimizations = [tf.lite.Optimize.DEFAULT, tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    content = converter.convert()
    encoded = [t["name"] for t in Interpreter(model_content=content).get_tensor_details()
               if t.get("sparsity_parameters")]
    return {"size_bytes": len(content), "gzip_bytes": gzip_size(content),
            "sparse_tensors": len(encoded)}


# ---------------------------------------------------------------------------------------
# the job
# ---------------------------------------------------------------------------------------

def run_compress_job(job: CompressJob) -> dict:
    """Prunes and/or clusters, quantizes (QAT or PTQ), validates and writes the .tflite and
    report.json/md. Raises ValueError on bad input before anything is written."""
    import os
    import shutil
    import tempfile

    from tflq import calibration, convert, interpreter, metrics, pipeline, qat, report
    from tflq.fileio import write_atomic
    from tflq.keras_compat import load_model, tf, tf_keras, wrap_model

    pipeline.check_output_dir(job.out)
    float_model = load_model(job.model)
    if float_model.flavor != "tf_keras":
        raise ValueError(f"Compression needs a tf_keras model; {job.model!r} is "
                         f"{float_model.flavor}.")
    model = float_model.keras_model
    chosen = {layer.name for layer in select_layers(model, job)}
    x_train, y_train = calibration.load_arrays(job.train_data, float_model.inputs,
                                               job.num_train_samples, job.seed, "Training data")
    x_eval, y_eval = calibration.load_arrays(job.eval_data, float_model.inputs, None, job.seed,
                                             "Evaluation data")
    names = float_model.input_names
    feed = (lambda x: x[names[0]]) if len(names) == 1 else (lambda x: [x[n] for n in names])
    tf_keras.utils.set_random_seed(job.seed)
    histories, stages = {}, []
    if job.prunes:
        model, histories["prune"] = prune(model, feed(x_train), y_train, job, chosen)
        stages.append(f"prune {'2:4' if job.structure == '2:4' else f'{job.sparsity:.0%}'} "
                      f"({job.schedule})")
    if job.clusters_weights:
        model, histories["cluster"] = cluster(model, feed(x_train), y_train, job, chosen)
        stages.append(f"cluster k={job.clusters}")
    scratch = tempfile.mkdtemp(prefix="tflq-compress-")
    try:
        if job.quantization == "qat":
            student = qat.quantize_model(model, job.scheme)
            reference = {layer.name: layer.get_weights()[0] for layer in model.layers
                         if layer.name in chosen and layer.get_weights()}
            keep = PreserveStructure(student, chosen if stages else set(), job.clusters_weights,
                                     reference)
            keep.apply()  # BatchNorm folding rescaled channels; start exactly on the structure
            histories["qat"] = _fit(student, feed(x_train), y_train, job, [keep],
                                    job.qat_learning_rate or job.learning_rate,
                                    job.qat_epochs or job.epochs,
                                    float_model.keras_model if job.distill else None)
            content = qat.convert_qat(student, scratch)

            def make_converter():
                return wrap_model(student, "qat").make_converter(scratch)

            stages.append(f"QAT ({job.scheme}, structure preserved"
                          f"{', distilled from the float model' if job.distill else ''})")
        else:
            order = np.random.default_rng(job.seed).permutation(len(y_train))
            order = order[:job.num_calibration_samples]

            def representative():
                for i in order:
                    yield {n: x_train[n][i:i + 1] for n in names}

            loaded = wrap_model(model, job.model)
            content = convert.convert_model(loaded, "int8", scratch, representative).content

            def make_converter():
                converter = loaded.make_converter(scratch)
                converter.representative_dataset = representative
                converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
                converter.inference_input_type = tf.int8
                converter.inference_output_type = tf.int8
                return converter

            stages.append("PTQ int8 (TFLite converter)")
        sparse = sparse_encoded_size(make_converter)
        float32 = convert.convert_model(float_model, "float32", scratch).content
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    float_ops = convert.find_float_ops(content)
    stats = weight_stats(content)
    runner = interpreter.TfliteModel(content, num_threads=job.num_threads)
    compared, float_accuracy = metrics.Comparison(), metrics.Comparison()
    for start in range(0, len(y_eval), 256):
        batch = {n: v[start:start + 256] for n, v in x_eval.items()}
        labels = y_eval[start:start + 256]
        reference = float_model.predict(batch)
        compared.update(reference, runner.run(batch), labels)
        float_accuracy.update(reference, reference, labels)
    result, base = compared.result(), float_accuracy.result()["accuracy"]
    latency = interpreter.measure_latency(
        {"float32": interpreter.TfliteModel(float32, num_threads=job.num_threads),
         "int8": runner}, {n: v[:1] for n, v in x_eval.items()}, runs=job.latency_runs)
    weights = sum(row["weights"] for row in stats)
    zeros = sum(row["weights"] * row["sparsity"] for row in stats)
    stem = float_model.stem
    row = report.mode_row("int8", f"{stem}_compressed_int8.tflite", content, len(float32),
                          float_ops, result, base, latency["int8"], None, stages)
    full = {
        "schema_version": report.SCHEMA_VERSION, "versions": pipeline.versions(),
        "machine": pipeline.machine_description(),
        "model": report.model_section(float_model, job.model),
        "settings": dataclasses.asdict(job),
        "data": {"calibration": {"source": job.train_data, "num_samples": int(len(y_train))},
                 "evaluation": {"source": job.eval_data, "num_samples": int(len(y_eval)),
                                "has_labels": True}},
        "float": {"accuracy": base, "float32_tflite_bytes": len(float32),
                  "latency_ms": latency["float32"]},
        "modes": [row],
        "compression": {
            "stages": stages, "layers": sorted(chosen),
            "size_bytes": len(content), "gzip_bytes": gzip_size(content),
            "float32_gzip_bytes": gzip_size(float32),
            "weight_sparsity": zeros / weights if weights else 0.0,
            "sparse_encoding": sparse, "weights": stats, "history": histories,
        },
        "gates": {"max_accuracy_drop": None, "min_agreement": None, "passed": True,
                  "failures": []},
    }
    os.makedirs(job.out, exist_ok=True)
    write_atomic(os.path.join(job.out, row["path"]), content)
    write_atomic(os.path.join(job.out, "report.json"), report.to_json(full))
    write_atomic(os.path.join(job.out, "report.md"), report.to_markdown(full).encode())
    return full

"""Pruning and clustering (tfmot) on chosen layers, and the callback that preserves their
structure through QAT (PQAT/CQAT). The job that chains them is :mod:`tflq.jobs.compress`."""

from __future__ import annotations

import re

import numpy as np

__all__ = ["STRUCTURES", "SCHEDULES", "QUANTIZATIONS", "COMPRESSIBLE", "STRUCTURED_TYPES",
    "select_layers", "left_uncompressed", "fine_tune", "prune", "cluster", "kernel_variable", "PreserveStructure"]  # noqa: F822 - made on first use

STRUCTURES = ("unstructured", "2:4")
SCHEDULES = ("constant", "polynomial")
QUANTIZATIONS = ("qat", "ptq")
# Layer types tfmot prunes and clusters through their kernel.
COMPRESSIBLE = ("Conv2D", "Dense", "Conv1D", "Conv2DTranspose")
# 2:4 sparsity runs along input channels: TFLite (and tfmot) lay kernels out
# [out, ..., in], so the input-channel count must be a multiple of 4.
STRUCTURED_TYPES = ("Conv2D", "Dense")


def select_layers(model, job) -> list:
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


def left_uncompressed(model, chosen: set, job) -> str | None:
    """One line naming the layers whose kernels (weights of two or more dimensions: LSTM,
    Embedding, depthwise kernels...) pruning/clustering leaves as they are, with their share
    of those weights and why; None when every such layer is compressed or nothing is."""
    if not (job.prunes or job.clusters_weights):
        return None
    sizes, left = {}, []
    for layer in model.layers:
        size = sum(int(np.prod(w.shape)) for w in layer.weights if len(w.shape) >= 2)
        if size:
            sizes[layer.name] = size
            if layer.name not in chosen:
                left.append(layer)
    if not left:
        return None
    share = sum(sizes[layer.name] for layer in left) / sum(sizes.values())
    named = ", ".join(f"{layer.name} ({type(layer).__name__}"
                      + (", not matching --layers" if type(layer).__name__ in job.layer_types
                         else "") + ")" for layer in left[:8])
    return (f"left uncompressed: {len(left)} layer(s) holding {share:.1%} of the kernel weights: "
            f"{named}{' …' if len(left) > 8 else ''}; tflq prunes/clusters the kernels of "
            f"--layer_types {list(job.layer_types)} (supported: {list(COMPRESSIBLE)})")


# ---------------------------------------------------------------------------------------
# stages
# ---------------------------------------------------------------------------------------


def fine_tune(model, x, y, job, callbacks, learning_rate, epochs=None, teacher=None,
              heads=None):
    """Trains ``model`` through :func:`tflq.quant.qat.make_trainer` (losses per output
    ``heads``; ``y`` None: from ``teacher`` alone) with a cosine-decayed Adam; returns the
    history. Raises ValueError when the loss diverges."""
    from tflq.models import tf, tf_keras
    from tflq.quant import qat

    epochs = epochs or job.epochs
    trainer = qat.make_trainer(model, teacher, heads=heads, labelled=y is not None)
    # Cosine decay to 0 over the stage: a trained model is disturbed at the start (pruning
    # steps, clustering) and settles at a small learning rate by the end.
    steps = epochs * -(-len(tf.nest.flatten(x)[0]) // job.batch_size)
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
    from tflq.models import tf_keras

    copy = tf_keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def prune(model, x, y, job, names: set, teacher=None, heads=None):
    """Magnitude pruning of the named layers; returns (stripped model, training history).
    ``teacher``/``heads`` as in :func:`fine_tune`."""
    from tflq.models import tf, tf_keras
    from tflq.quant.quantizers import tfmot

    sparsity_api = tfmot.sparsity.keras
    steps = job.epochs * -(-len(tf.nest.flatten(x)[0]) // job.batch_size)
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
    history = fine_tune(wrapped, x, y, job, [sparsity_api.UpdatePruningStep()], job.learning_rate,
                        teacher=teacher, heads=heads)
    return _fresh(sparsity_api.strip_pruning(wrapped)), history


def cluster(model, x, y, job, names: set, teacher=None, heads=None):
    """Weight clustering of the named layers; returns (stripped model, training history).
    ``teacher``/``heads`` as in :func:`fine_tune`."""
    from tflq.models import tf_keras
    from tflq.quant.quantizers import tfmot

    api = tfmot.clustering.keras

    def clone(layer):
        if layer.name in names:
            return api.cluster_weights(
                layer, number_of_clusters=job.clusters,
                cluster_centroids_init=api.CentroidInitialization.KMEANS_PLUS_PLUS,
                preserve_sparsity=job.prunes)
        return layer

    wrapped = tf_keras.models.clone_model(_fresh(model), clone_function=clone)
    history = fine_tune(wrapped, x, y, job, [], job.learning_rate, teacher=teacher, heads=heads)
    return _fresh(api.strip_clustering(wrapped)), history


def kernel_variable(layer):
    """The kernel variable of a QuantizeWrapper's layer (the wrapper replaces
    ``layer.kernel`` by its fake-quantized tensor; the variable is in ``_weight_vars``)."""
    for weight, _, _ in getattr(layer, "_weight_vars", []):
        if weight.name.split("/")[-1].startswith("kernel"):
            return weight
    return None


def _make_preserve_callback():
    from tflq.models import tf_keras

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
                variable = kernel_variable(layer) if inner is not None else None
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


_PRESERVE = []  # the class, built on first use: importing this module imports no TensorFlow


def __getattr__(name: str):
    """``PreserveStructure`` (a tf_keras callback) is made when first asked for, so that job
    settings can be read without TensorFlow (PEP 562)."""
    if name == "PreserveStructure":
        if not _PRESERVE:
            _PRESERVE.append(_make_preserve_callback())
        return _PRESERVE[0]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

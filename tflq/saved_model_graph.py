"""What a SavedModel loaded by its signature holds of a Keras layer graph (for the refusal of
features that rewrite or train the graph)."""

from __future__ import annotations

__all__ = ["no_layer_graph"]


def no_layer_graph(source: str, path: str | None, load_keras) -> str:
    """Why a SavedModel loaded by its signature has no layer graph tflq can rewrite or train.

    A SavedModel written by ``model.save`` before TF 2.5 keeps its Keras graph inside
    ``saved_model.pb`` (no ``keras_metadata.pb``): tf_keras loads it, but revives custom
    layers saved without their code as opaque layers that nothing can rebuild.

    Args:
      source: what the user passed.
      path: the SavedModel folder.
      load_keras: ``tf_keras.models.load_model`` (:mod:`tflq.models` imports tf_keras).
    """
    revived = []
    try:
        keras = load_keras(path, compile=False)
        revived = [f"{layer.name} ({type(layer).__name__})" for layer in keras.layers
                   if type(layer).__module__.endswith("saved_model.load")]
    except Exception:  # noqa: BLE001 - no Keras graph in it at all
        keras = None
    if keras is None:
        return (f"{source!r} is a SavedModel without Keras metadata: it has no layer graph to "
                "train or rewrite. Bring the Keras model file.")
    held = "custom layer(s) saved without their code, which tf_keras revives as opaque " \
        f"layers nothing can rebuild: {revived[:6]}{' …' if len(revived) > 6 else ''}" \
        if revived else "layers tf_keras loads"
    return (f"{source!r} is a SavedModel whose Keras graph (inside saved_model.pb, written "
            f"before TF 2.5) has {held}. Load it with its layer classes "
            "(tf_keras.models.load_model(path, custom_objects=...)) in a 'module:function' "
            "factory and pass that as the model.")

"""Files the corpus derives from fetched registry files, byte for byte reproducibly.

* ``k3_resave_keras`` / ``k3_resave_h5``: a tf_keras (Keras 2.x) ``.h5`` re-saved by Keras 3
  as ``.keras`` / ``.h5``. Keras 2.x wrote a ``groups`` key into DepthwiseConv2D configs that
  Keras 3 rejects; it is dropped from a temporary copy's ``model_config`` (weights untouched)
  before Keras 3 loads it. Keras 3's ``.h5`` is reproducible as written; its ``.keras`` zip
  carries the save time (``metadata.json`` ``date_saved`` and the member times), which are
  set to 1980-01-01 so the bytes depend only on the model and the Keras version.
* ``tfjs_to_h5``: a TF.js layers model (nsfwjs's base64 JS modules, read with node) rebuilt
  as a tf_keras ``.h5`` (uint8 weights dequantized ``q * scale + min``). HDF5 written by
  tf_keras embeds no time either, but its bytes were not checked across machines.

  python -m benchmarks.corpus_derive k3_resave_keras IN.h5 OUT.keras
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

__all__ = ["DERIVATIONS", "FIXED_DATE", "normalize_keras_zip", "k3_resave", "tfjs_to_h5", "derive", "main"]

FIXED_DATE = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip member can carry
_FIXED_SAVED = "1980-01-01@00:00:00"


def _strip_depthwise_groups(config: dict) -> int:
    count = 0
    for layer in config.get("layers", []):
        if layer["class_name"] == "DepthwiseConv2D" and "groups" in layer["config"]:
            del layer["config"]["groups"]
            count += 1
        if layer["class_name"] in ("Functional", "Model", "Sequential"):
            count += _strip_depthwise_groups(layer["config"])
    return count


def normalize_keras_zip(path: str):
    """Rewrites a ``.keras`` zip with fixed member times and ``date_saved``."""
    with zipfile.ZipFile(path) as z:
        members = [(info, z.read(info.filename)) for info in z.infolist()]
    tmp = path + ".norm"
    with zipfile.ZipFile(tmp, "w") as z:
        for info, data in members:
            if info.filename == "metadata.json":
                meta = json.loads(data)
                meta["date_saved"] = _FIXED_SAVED
                data = json.dumps(meta).encode("utf-8")
            fixed = zipfile.ZipInfo(info.filename, FIXED_DATE)
            fixed.compress_type = info.compress_type
            fixed.external_attr = info.external_attr
            z.writestr(fixed, data)
    os.replace(tmp, path)


def k3_resave(source: str, out: str, kind: str):
    """Keras 3 re-save of tf_keras ``.h5`` ``source`` as ``kind`` (``keras`` or ``h5``) at ``out``."""
    import h5py
    import keras

    with tempfile.TemporaryDirectory() as folder:
        patched = os.path.join(folder, "patched.h5")
        shutil.copy(source, patched)
        with h5py.File(patched, "r+") as f:
            config = json.loads(f.attrs["model_config"])
            _strip_depthwise_groups(config["config"])
            f.attrs["model_config"] = json.dumps(config)
        model = keras.models.load_model(patched, compile=False)
        written = os.path.join(folder, f"model.{kind}")
        model.save(written)
        if kind == "keras":
            normalize_keras_zip(written)
        shutil.move(written, out)


def tfjs_to_h5(js_files: dict, out: str):
    """nsfwjs's JS-wrapped model.json and shard (``{"model.min.js": path, ...}``) -> .h5."""
    import numpy as np

    from tflq.models import tf_keras

    script = ("const m=require(process.argv[1]);const s=require(process.argv[2]);"
              "process.stdout.write(JSON.stringify({model:m,shard:s}));")
    done = subprocess.run(["node", "-e", script, js_files["model.min.js"],
                           js_files["group1-shard1of1.min.js"]],
                          capture_output=True, text=True, check=True)
    loaded = json.loads(done.stdout)
    manifest, shard = loaded["model"], base64.b64decode(loaded["shard"])
    topology = manifest["modelTopology"]
    model = tf_keras.models.model_from_json(json.dumps(topology.get("model_config", topology)))
    values, offset = {}, 0
    for group in manifest["weightsManifest"]:
        for w in group["weights"]:
            n = int(np.prod(w["shape"])) if w["shape"] else 1
            q = w.get("quantization")
            if q:  # uint8 affine: value = q * scale + min
                raw = np.frombuffer(shard, np.uint8 if q["dtype"] == "uint8" else np.uint16, n, offset)
                offset += n * raw.itemsize
                array = raw.astype(np.float32) * q["scale"] + q["min"]
            else:
                array = np.frombuffer(shard, np.float32, n, offset)
                offset += n * 4
            values[w["name"]] = array.reshape(w["shape"])
    if offset != len(shard):
        raise ValueError(f"nsfwjs shard: {len(shard)} bytes, the manifest describes {offset}")
    for layer in model.layers:
        if layer.weights:
            layer.set_weights([values[v.name.split(":")[0]] for v in layer.weights])
    model.save(out, include_optimizer=False)


DERIVATIONS = {
    "k3_resave_keras": lambda source, out: k3_resave(source, out, "keras"),
    "k3_resave_h5": lambda source, out: k3_resave(source, out, "h5"),
}


def derive(kind: str, source: str, out: str) -> str:
    """Runs derivation ``kind`` (a :data:`DERIVATIONS` key) from ``source`` into ``out``.

    Raises:
      ValueError: unknown derivation.
    """
    if kind not in DERIVATIONS:
        raise ValueError(f"Unknown derivation {kind!r}. Available: {sorted(DERIVATIONS)}")
    DERIVATIONS[kind](source, out)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3:
        print(f"error: usage: python -m benchmarks.corpus_derive {{{','.join(DERIVATIONS)}}} "
              f"IN OUT. Received: {argv}", file=sys.stderr)
        return 2
    try:
        derive(*argv)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

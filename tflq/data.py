"""Representative and evaluation data: sources, sampling, checks, the calibration generator.

A data source yields samples one at a time (``(index, {input_name: array}, label)``), so
memory never grows with the size of the data set: ``.npy`` files are memory-mapped, ``.npz``
members and gzipped IDX files are read sequentially, image folders are decoded one file at
a time. Sampling draws N sorted indices with a seed and streams past the rest.

Every sample is checked against the model's input signature before the converter sees it:
missing input, shape, dtype, NaN/Inf, and values far outside the range of the evaluation
data the float model is validated on. Errors name the source, the input and the sample.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import zipfile
from collections.abc import Sequence

import numpy as np

from tflq.factories import import_callable, is_factory
from tflq.inmemory import CallableSource, DataSource, Sample, is_in_memory, open_in_memory
from tflq.settings import setting
from tflq.signature import TensorSpec

__all__ = ["NORMALIZATIONS", "IMAGE_SUFFIXES", "Sample", "DataOptions", "normalize_pixels",
    "DataSource", "ArraySource", "read_idx_header", "idx_labels_path", "IdxSource",
    "ImageFolderSource", "GeneratorSource", "open_data", "read_idx", "write_idx"]

NORMALIZATIONS = ("0_1", "-1_1", "none")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")

@dataclasses.dataclass(frozen=True)
class DataOptions:
    """How raw images (IDX files, image folders) become model inputs.

    Attributes:
      normalize: ``0_1`` (x/255), ``-1_1`` (x/127.5 - 1) or ``none`` (0..255 as float).
      image_size: (height, width) to resize image-folder images to; None uses the
        model's input size.
    """

    normalize: str = setting(
        "How IDX and image-folder pixels are scaled: x/255, x/127.5-1, or raw 0..255.", "0_1",
        choices=NORMALIZATIONS)
    image_size: tuple[int, int] | None = setting(
        "HxW to resize image-folder images to (default: the model's size).", None, kind="size")

    def __post_init__(self):
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(
                f"Unknown normalization {self.normalize!r}. Available: {list(NORMALIZATIONS)}"
            )
        if self.image_size is not None:
            if len(self.image_size) != 2 or min(self.image_size) < 1:
                raise ValueError(
                    f"image_size must be (height, width) with positive sizes. "
                    f"Received: image_size={self.image_size!r}"
                )


def normalize_pixels(raw: np.ndarray, normalize: str) -> np.ndarray:
    """Maps 0..255 pixels to float32 by the named normalization."""
    x = raw.astype(np.float32)
    if normalize == "0_1":
        return x / 255.0
    if normalize == "-1_1":
        return x / 127.5 - 1.0
    return x


def _read_npy_header(fileobj):
    version = np.lib.format.read_magic(fileobj)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fileobj)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fileobj)
    if fortran and len(shape) > 1:
        raise ValueError("Fortran-ordered arrays cannot be streamed; save with C order.")
    if dtype.hasobject:
        raise ValueError("arrays of Python objects are not supported (dtype=object).")
    return shape, dtype


class _NpzMember:
    """Sequential row reader for one array inside an ``.npz`` (compressed or not)."""

    def __init__(self, path, key):
        self.path, self.key = path, key
        with zipfile.ZipFile(path) as archive, archive.open(key + ".npy") as f:
            self.shape, self.dtype = _read_npy_header(f)

    def __len__(self):
        return int(self.shape[0]) if self.shape else 0

    def rows(self, indices):
        row_shape = tuple(self.shape[1:])
        row_bytes = int(np.prod(row_shape, dtype=np.int64)) * self.dtype.itemsize
        with zipfile.ZipFile(self.path) as archive, archive.open(self.key + ".npy") as f:
            _read_npy_header(f)
            position = 0
            for index in indices:
                skip = (index - position) * row_bytes
                while skip > 0:  # zip streams seek by reading; read in bounded chunks
                    chunk = f.read(min(skip, 1 << 20))
                    if not chunk:
                        raise ValueError(f"{self.path}: array {self.key!r} is truncated.")
                    skip -= len(chunk)
                data = f.read(row_bytes)
                if len(data) != row_bytes:
                    raise ValueError(f"{self.path}: array {self.key!r} is truncated.")
                position = index + 1
                yield np.frombuffer(data, dtype=self.dtype).reshape(row_shape)


class ArraySource(DataSource):
    """``.npy`` (one array, the input) or ``.npz`` (``x`` or one array per input name,
    optional ``y`` labels, or labels per model output ``y_<output name>``)."""

    def __init__(self, path: str, input_specs: Sequence[TensorSpec]):
        self.description = path
        names = [s.name for s in input_specs]
        if path.lower().endswith(".npy"):
            try:
                array = np.load(path, mmap_mode="r", allow_pickle=False)
            except Exception as e:
                raise ValueError(f"Data file {path!r} is not a readable .npy file: {e}") from e
            if array.ndim == 0:
                raise ValueError(f"Data file {path!r} holds a single value (shape ()); expected "
                                 "an array of samples along its first axis.")
            if len(names) != 1:
                raise ValueError(
                    f"Data file {path!r} holds one array but the model has inputs {names}; "
                    "use an .npz with one array per input name."
                )
            self._columns = {names[0]: array}
            self._readers = None
            self._labels = None
            self.output_labels = {}
        else:
            try:
                with zipfile.ZipFile(path) as archive:
                    keys = [n[:-4] for n in archive.namelist() if n.endswith(".npy")]
            except (zipfile.BadZipFile, OSError) as e:
                raise ValueError(f"Data file {path!r} is not a readable .npz file: {e}") from e
            if len(names) == 1 and names[0] not in keys and "x" in keys:
                mapping = {names[0]: "x"}
            else:
                missing = [n for n in names if n not in keys]
                if missing:
                    raise ValueError(
                        f"Data file {path!r} has no array for model input(s) {missing}. "
                        f"Expected 'x' (single input) or one array per input name {names}. "
                        f"Received arrays: {sorted(keys)}"
                    )
                mapping = {n: n for n in names}
            try:
                self._readers = {n: _NpzMember(path, k) for n, k in mapping.items()}
                self._labels = _NpzMember(path, "y") if "y" in keys else None
                self.output_labels = {k[2:]: _NpzMember(path, k) for k in keys
                                      if k.startswith("y_") and len(k) > 2}
            except (ValueError, zipfile.BadZipFile, OSError, EOFError) as e:
                raise ValueError(f"Data file {path!r} is corrupt or unsupported: {e}") from e
            self._columns = None
        lengths = {n: len(a) for n, a in (self._columns or self._readers).items()}
        if self._labels is not None:
            lengths["y"] = len(self._labels)
        lengths.update({f"y_{n}": len(m) for n, m in self.output_labels.items()})
        if len(set(lengths.values())) > 1:
            raise ValueError(f"Data file {path!r}: arrays differ in length: {lengths}")
        self._length = next(iter(lengths.values()))
        self.has_labels = self._labels is not None or bool(self.output_labels)

    def __len__(self):
        return self._length

    def read_output_labels(self, indices: Sequence[int] | None = None) -> dict[str, np.ndarray]:
        """``{output name: rows}`` of the ``y_<output name>`` arrays ({} when none)."""
        indices = range(self._length) if indices is None else indices
        return {n: np.stack(list(m.rows(indices))) for n, m in self.output_labels.items()}

    def iter_samples(self, indices=None):
        indices = range(self._length) if indices is None else indices
        if self._columns is not None:
            for i in indices:
                yield i, {n: np.asarray(a[i]) for n, a in self._columns.items()}, None
            return
        streams = {n: r.rows(indices) for n, r in self._readers.items()}
        labels = self._labels.rows(indices) if self._labels is not None else None
        for i in indices:
            inputs = {n: next(s) for n, s in streams.items()}
            label = int(next(labels)) if labels is not None else None
            yield i, inputs, label


def _open_maybe_gzip(path):
    with open(path, "rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def read_idx_header(path: str) -> tuple[np.dtype, tuple[int, ...]]:
    """Reads an IDX header (MNIST format): returns the element dtype and the full shape."""
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    try:
        with _open_maybe_gzip(path) as f:
            head = f.read(4)
            if len(head) != 4 or head[0] != 0 or head[1] != 0 or head[2] not in dtypes:
                raise ValueError(f"{path!r} is not an IDX file (bad magic {head!r}).")
            ndim = head[3]
            dims = f.read(4 * ndim)
            if len(dims) != 4 * ndim:
                raise ValueError(f"IDX file {path!r} is truncated in its header.")
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise ValueError(f"IDX file {path!r} cannot be read: {e}") from e
    shape = tuple(int(d) for d in np.frombuffer(dims, dtype=">u4"))
    return np.dtype(dtypes[head[2]]), shape


def _iter_idx_rows(path, indices):
    dtype, shape = read_idx_header(path)
    row_shape = shape[1:]
    row_bytes = int(np.prod(row_shape, dtype=np.int64)) * dtype.itemsize
    with _open_maybe_gzip(path) as f:
        f.read(4 + 4 * len(shape))
        position = 0
        for index in indices:
            try:
                skip = (index - position) * row_bytes
                while skip > 0:
                    chunk = f.read(min(skip, 1 << 20))
                    if not chunk:
                        break
                    skip -= len(chunk)
                data = f.read(row_bytes)
            except (OSError, EOFError) as e:
                raise ValueError(f"IDX file {path!r} is corrupt: {e}") from e
            if len(data) != row_bytes:
                raise ValueError(
                    f"IDX file {path!r} is truncated: sample {index} of {shape[0]} is missing."
                )
            position = index + 1
            yield np.frombuffer(data, dtype=dtype).reshape(row_shape)


def idx_labels_path(images_path: str) -> str | None:
    """The labels file beside an IDX images file (``images-idx3`` → ``labels-idx1``)."""
    folder, name = os.path.split(images_path)
    if "images-idx3" not in name:
        return None
    candidate = os.path.join(folder, name.replace("images-idx3", "labels-idx1"))
    return candidate if os.path.exists(candidate) else None


class IdxSource(DataSource):
    """MNIST-style IDX images (``.gz`` or not), labels from the sibling labels file."""

    def __init__(self, path: str, input_specs: Sequence[TensorSpec], options: DataOptions):
        if len(input_specs) != 1:
            raise ValueError(f"IDX data {path!r} feeds one input; the model has {len(input_specs)}.")
        self.description = path
        self._name = input_specs[0].name
        self._path = path
        self._options = options
        _, shape = read_idx_header(path)
        self._length = shape[0]
        self._labels = idx_labels_path(path)
        if self._labels is not None:
            _, label_shape = read_idx_header(self._labels)
            if label_shape[0] != self._length:
                raise ValueError(
                    f"IDX labels {self._labels!r} hold {label_shape[0]} labels for "
                    f"{self._length} images in {path!r}."
                )
        self.has_labels = self._labels is not None

    def __len__(self):
        return self._length

    def iter_samples(self, indices=None):
        indices = range(self._length) if indices is None else indices
        images = _iter_idx_rows(self._path, indices)
        labels = _iter_idx_rows(self._labels, indices) if self._labels else None
        for i in indices:
            x = normalize_pixels(next(images), self._options.normalize)
            yield i, {self._name: x}, (int(next(labels)) if labels is not None else None)


class ImageFolderSource(DataSource):
    """A folder of png/jpg images; class subfolders (sorted names) give labels."""

    def __init__(self, path: str, input_specs: Sequence[TensorSpec], options: DataOptions):
        if len(input_specs) != 1:
            raise ValueError(f"Image folder {path!r} feeds one input; the model has {len(input_specs)}.")
        spec = input_specs[0]
        if len(spec.shape) != 3:
            raise ValueError(
                f"Image folder {path!r}: model input {spec.name!r} has shape {spec.shape}, "
                "expected (height, width, channels)."
            )
        self.description = path
        self._name = spec.name
        self._options = options
        self._channels = spec.shape[2] or 3
        size = options.image_size or (spec.shape[0], spec.shape[1])
        if size[0] is None or size[1] is None:
            raise ValueError(f"Image folder {path!r}: the model's input size is dynamic; pass image_size.")
        self._size = (int(size[0]), int(size[1]))
        classes = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
        files = []
        if classes:
            for label, cls in enumerate(classes):
                for name in sorted(os.listdir(os.path.join(path, cls))):
                    if name.lower().endswith(IMAGE_SUFFIXES):
                        files.append((os.path.join(path, cls, name), label))
        else:
            files = [(os.path.join(path, n), None) for n in sorted(os.listdir(path))
                     if n.lower().endswith(IMAGE_SUFFIXES)]
        self.classes = classes
        self._files = files
        self.has_labels = bool(classes)

    def __len__(self):
        return len(self._files)

    def iter_samples(self, indices=None):
        from PIL import Image, UnidentifiedImageError

        indices = range(len(self._files)) if indices is None else indices
        mode = "L" if self._channels == 1 else "RGB"
        for i in indices:
            file, label = self._files[i]
            try:
                with Image.open(file) as img:
                    img = img.convert(mode).resize((self._size[1], self._size[0]),
                                                   Image.BILINEAR)
                    raw = np.asarray(img)
            except (UnidentifiedImageError, OSError) as e:
                raise ValueError(f"Image {file!r} (sample {i}) cannot be decoded: {e}") from e
            if raw.ndim == 2:
                raw = raw[..., None]
            yield i, {self._name: normalize_pixels(raw, self._options.normalize)}, label


class GeneratorSource(CallableSource):
    """``package.module:function`` returning an iterable of samples.

    Each item is an array (single-input model), a dict keyed by input name, or a tuple
    ``(inputs, label)``. The function is called again for every pass.
    """

    def __init__(self, spec: str, input_specs: Sequence[TensorSpec]):
        super().__init__(import_callable(spec, "Data generator"), input_specs, spec)


def open_data(spec, input_specs: Sequence[TensorSpec],
              options: DataOptions | None = None) -> DataSource:
    """Opens a data source from a path, ``module:function`` or data held in memory.

    Args:
      spec: ``.npz``/``.npy`` file, IDX images file (``*-images-idx3-ubyte[.gz]``), a
        folder of images, ``package.module:function``, or in memory (see
        :func:`tflq.inmemory.open_in_memory`): numpy arrays, a dict of arrays by input name,
        an ``(x, y)`` tuple, a ``tf.data.Dataset`` or a function yielding samples.
      input_specs: the model's inputs (data is matched to them by name).
      options: image normalization and resizing.

    Raises:
      ValueError: missing path, unknown kind, unreadable file, or an empty data set.
    """
    options = options or DataOptions()
    if is_in_memory(spec):
        source = open_in_memory(spec, input_specs)
        if len(source) == 0:
            raise ValueError(f"Data set {source.description!r} is empty: it holds no samples.")
        return source
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"Expected a data path or 'module:function'. Received: data={spec!r}")
    if is_factory(spec):
        source = GeneratorSource(spec, input_specs)
    elif not os.path.exists(spec):
        raise ValueError(f"Data path not found: {spec!r}")
    elif os.path.isdir(spec):
        source = ImageFolderSource(spec, input_specs, options)
    elif spec.lower().endswith((".npz", ".npy")):
        source = ArraySource(spec, input_specs)
    elif "idx" in os.path.basename(spec).lower() or spec.lower().endswith(".gz"):
        source = IdxSource(spec, input_specs, options)
    else:
        raise ValueError(
            f"Unknown data format for {spec!r}. Expected .npz, .npy, an IDX file, a folder "
            "of images, or 'package.module:function'."
        )
    if len(source) == 0:
        raise ValueError(f"Data set {spec!r} is empty: it holds no samples.")
    return source


def read_idx(path: str) -> np.ndarray:
    """Reads a whole IDX file (``.gz`` or not) into an array of its full shape."""
    dtype, shape = read_idx_header(path)
    return np.stack(list(_iter_idx_rows(path, range(shape[0])))) if shape[0] else np.empty(
        shape, dtype=dtype)


def write_idx(path: str, array: np.ndarray) -> None:
    """Writes a uint8 array as a gzipped IDX file (MNIST format)."""
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"write_idx writes uint8 arrays. Received: dtype={array.dtype.name}")
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    with gzip.GzipFile(path, "wb", mtime=0) as f:
        f.write(header + np.ascontiguousarray(array).tobytes())

"""Data sources, sampling, sample checks and streaming, against numpy references."""

import gzip
import os
import tracemalloc

import numpy as np
import pytest
from conftest import EXAMPLE_DIR, fashion_file

from tflq import sampling
from tflq.data import DataOptions, open_data, read_idx, read_idx_header, write_idx
from tflq.signature import TensorSpec

# Pixels are normalized in float32; values near 0 carry float32 rounding (~6e-8).
FLOAT32_ATOL = 1e-6
IMG = (TensorSpec("img", (8, 8, 1), "float32"),)
TWO = (TensorSpec("a", (4,), "float32"), TensorSpec("b", (3,), "float32"))


def collect(source, indices=None):
    return list(source.iter_samples(indices))


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_streams_the_same_rows_as_numpy(tmp_path, compressed):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 3, size=50)
    path = tmp_path / "d.npz"
    (np.savez_compressed if compressed else np.savez)(path, x=x, y=y)
    source = open_data(str(path), IMG)
    assert len(source) == 50 and source.has_labels
    picked = [3, 7, 8, 49]
    for (i, inputs, label), want in zip(collect(source, picked), picked, strict=True):
        assert i == want
        np.testing.assert_array_equal(inputs["img"], x[want])
        assert label == y[want]


def test_npz_multi_input_fed_by_name(tmp_path):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 4)), rng.normal(size=(6, 3))
    path = tmp_path / "two.npz"
    np.savez(path, b=b, a=a)  # stored in the "wrong" order on purpose
    samples = collect(open_data(str(path), TWO))
    np.testing.assert_array_equal(samples[2][1]["a"], a[2])
    np.testing.assert_array_equal(samples[2][1]["b"], b[2])


def test_npz_missing_input_named(tmp_path):
    path = tmp_path / "two.npz"
    np.savez(path, a=np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"no array for model input\(s\) \['b'\]"):
        open_data(str(path), TWO)


def test_npz_length_mismatch(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, x=np.zeros((3, 8, 8, 1)), y=np.zeros(4))
    with pytest.raises(ValueError, match="differ in length"):
        open_data(str(path), IMG)


def test_a_scalar_npy_is_refused_by_name(tmp_path):
    # Found by the fuzz tests: a 0-d .npy raised "TypeError: len() of unsized object" (exit 1).
    path = tmp_path / "scalar.npy"
    np.save(path, np.array(0.5, np.float32))
    with pytest.raises(ValueError, match=r"scalar.npy' holds a single value \(shape \(\)\)"):
        open_data(str(path), IMG)


def test_npy_is_memory_mapped(tmp_path):
    x = np.arange(10 * 64, dtype=np.float32).reshape(10, 8, 8, 1)
    path = tmp_path / "x.npy"
    np.save(path, x)
    samples = collect(open_data(str(path), IMG), [9])
    np.testing.assert_array_equal(samples[0][1]["img"], x[9])
    # 2,000 rows of 8 KB = 16 MB on disk: opening it and reading 10 rows must not load it
    # (np.load without mmap_mode allocates all 16 MB, which tracemalloc sees).
    big = tmp_path / "big.npy"
    np.save(big, np.ones((2000, 32, 64), dtype=np.float32))
    tracemalloc.start()
    source = open_data(str(big), (TensorSpec("x", (32, 64), "float32"),))
    rows = [s[1]["x"].sum() for s in source.iter_samples(list(range(0, 2000, 200)))]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert rows == [32 * 64] * 10
    assert peak < 4 * 1024 * 1024, f"peak {peak} bytes: the .npy was read, not mapped"


def test_npz_stream_memory_does_not_grow_with_data(tmp_path):
    # 2,000 rows of 8 KB = 16 MB on disk; sampling 10 rows must not load the array.
    x = np.zeros((2000, 32, 64), dtype=np.float32)
    path = tmp_path / "big.npz"
    np.savez(path, x=x)
    source = open_data(str(path), (TensorSpec("x", (32, 64), "float32"),))
    tracemalloc.start()
    rows = [s[1]["x"].sum() for s in source.iter_samples(list(range(0, 2000, 200)))]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(rows) == 10
    assert peak < 4 * 1024 * 1024, f"peak {peak} bytes while streaming a 16 MB array"


def test_idx_reader_on_real_fashion_mnist():
    images = fashion_file("t10k-images-idx3-ubyte.gz")
    dtype, shape = read_idx_header(images)
    assert dtype == np.uint8 and shape == (10000, 28, 28)
    source = open_data(images, (TensorSpec("image", (28, 28, 1), "float32"),))
    assert len(source) == 10000 and source.has_labels
    (i, inputs, label), = collect(source, [9999])
    raw = gzip.open(images).read()
    expected = np.frombuffer(raw[16 + 9999 * 784: 16 + 10000 * 784], np.uint8).reshape(28, 28)
    np.testing.assert_allclose(inputs["image"], expected / 255.0, rtol=1e-6)
    labels = gzip.open(fashion_file("t10k-labels-idx1-ubyte.gz")).read()
    assert label == labels[8 + 9999]


def test_bundled_slices_are_real_and_disjoint():
    test_images = read_idx(fashion_file("t10k-images-idx3-ubyte.gz"))
    calib = read_idx(os.path.join(EXAMPLE_DIR, "calibration-images-idx3-ubyte.gz"))
    evaluation = read_idx(os.path.join(EXAMPLE_DIR, "evaluation-images-idx3-ubyte.gz"))
    assert len(calib) + len(evaluation) <= 2000
    np.testing.assert_array_equal(calib, test_images[: len(calib)])
    np.testing.assert_array_equal(evaluation, test_images[len(calib): len(calib) + len(evaluation)])
    calib_rows = {row.tobytes() for row in calib}
    assert not any(row.tobytes() in calib_rows for row in evaluation)


def test_idx_round_trip_and_plain_file(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, size=(7, 5, 4), dtype=np.uint8)
    path = tmp_path / "t-images-idx3-ubyte.gz"
    write_idx(str(path), x)
    np.testing.assert_array_equal(read_idx(str(path)), x)
    plain = tmp_path / "p-images-idx3-ubyte"
    plain.write_bytes(gzip.open(path).read())
    np.testing.assert_array_equal(read_idx(str(plain)), x)
    with pytest.raises(ValueError, match="writes uint8"):
        write_idx(str(tmp_path / "f.gz"), x.astype(np.float32))


def test_idx_truncated_and_bad_magic(tmp_path):
    x = np.zeros((5, 8, 8), dtype=np.uint8)
    good = tmp_path / "g-images-idx3-ubyte.gz"
    write_idx(str(good), x)
    truncated = tmp_path / "t-images-idx3-ubyte"
    truncated.write_bytes(gzip.open(good).read()[:-30])
    source = open_data(str(truncated), IMG)
    with pytest.raises(ValueError, match="truncated: sample 4 of 5"):
        collect(source)
    bad = tmp_path / "b-images-idx3-ubyte"
    bad.write_bytes(b"\x01\x02\x03\x04" + bytes(20))
    with pytest.raises(ValueError, match="not an IDX file"):
        open_data(str(bad), IMG)


def test_image_folder_with_class_subfolders(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = {}
    for cls in ("cat", "dog"):
        os.makedirs(tmp_path / cls)
        for k in range(2):
            arr = rng.integers(0, 256, size=(8, 8), dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / cls / f"{k}.png")
            pixels[(cls, k)] = arr
    source = open_data(str(tmp_path), IMG, DataOptions(normalize="-1_1"))
    samples = collect(source)
    assert [s[2] for s in samples] == [0, 0, 1, 1]
    np.testing.assert_allclose(samples[3][1]["img"][..., 0], pixels[("dog", 1)] / 127.5 - 1,
                               atol=FLOAT32_ATOL)


def test_image_folder_resizes_to_model_size(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(tmp_path / "a.jpg")
    spec = (TensorSpec("rgb", (16, 16, 3), "float32"),)
    (_, inputs, label), = collect(open_data(str(tmp_path), spec))
    assert inputs["rgb"].shape == (16, 16, 3) and label is None
    np.testing.assert_allclose(inputs["rgb"], 200 / 255.0, atol=2 / 255)


def test_corrupt_image_named(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"broken.png.*sample 0.*cannot be decoded"):
        collect(open_data(str(tmp_path), IMG))


def gen_pairs():
    for i in range(5):
        yield np.full((8, 8, 1), i / 10, np.float32), i % 3


def gen_plain_for_two_inputs():
    yield np.zeros(4)


def test_generator_source_with_labels():
    source = open_data("test_calibration:gen_pairs", IMG)
    assert len(source) == 5 and source.has_labels
    samples = collect(source, [1, 4])
    assert [s[0] for s in samples] == [1, 4] and samples[1][2] == 1
    np.testing.assert_allclose(samples[1][1]["img"], 0.4)


def test_generator_must_yield_dicts_for_multi_input():
    with pytest.raises(ValueError, match="yield a dict keyed by input name"):
        open_data("test_calibration:gen_plain_for_two_inputs", TWO)


@pytest.mark.parametrize("spec, message", [
    ("/no/such/data.npz", "Data path not found"),
    ("no_such_mod_q:gen", "cannot import"),
])
def test_bad_data_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        open_data(spec, IMG)


def test_unknown_format_and_empty(tmp_path):
    (tmp_path / "d.csv").write_text("1,2")
    with pytest.raises(ValueError, match="Unknown data format"):
        open_data(str(tmp_path / "d.csv"), IMG)
    np.savez(tmp_path / "e.npz", x=np.zeros((0, 8, 8, 1), np.float32))
    with pytest.raises(ValueError, match="is empty"):
        open_data(str(tmp_path / "e.npz"), IMG)
    os.makedirs(tmp_path / "imgs")
    with pytest.raises(ValueError, match="is empty"):
        open_data(str(tmp_path / "imgs"), IMG)


def test_sample_indices_seeded_sorted_unique():
    a = sampling.sample_indices(1000, 50, seed=7)
    assert a == sampling.sample_indices(1000, 50, seed=7)
    assert a != sampling.sample_indices(1000, 50, seed=8)
    assert a == sorted(set(a)) and len(a) == 50 and max(a) < 1000
    assert sampling.sample_indices(10, 50, seed=0) == list(range(10))
    with pytest.raises(ValueError, match="at least 1"):
        sampling.sample_indices(10, 0, seed=0)


@pytest.mark.parametrize("value, message", [
    (np.zeros((8, 8, 2), np.float32), r"shape \(8, 8, 2\) does not match the model's \(8, 8, 1\)"),
    (np.zeros((8, 8, 1), np.uint8), "dtype uint8 but the model expects float32"),
    (np.full((8, 8, 1), np.nan, np.float32), "contains NaN"),
    (np.full((8, 8, 1), np.inf, np.float32), "contains Inf"),
])
def test_conform_sample_errors_name_input_and_index(value, message):
    with pytest.raises(ValueError, match=rf"src: sample 12, input 'img': {message}"):
        sampling.conform_sample({"img": value}, IMG, 12, "src")


def test_conform_sample_adds_channel_and_casts():
    out = sampling.conform_sample({"img": np.ones((8, 8), np.float64)}, IMG, 0, "src")
    assert out["img"].shape == (8, 8, 1) and out["img"].dtype == np.float32
    with pytest.raises(ValueError, match="missing"):
        sampling.conform_sample({"other": np.ones((8, 8))}, IMG, 0, "src")


def test_range_check_catches_unnormalized_calibration():
    reference = sampling.RangeStats()
    reference.update({"img": np.array([0.0, 1.0], np.float32)})
    sampling.check_range({"img": np.array([-0.5, 1.9], np.float32)}, reference, 0, "c", "ref")
    with pytest.raises(ValueError, match=r"sample 3, input 'img': values in \[0, 255\] lie far"):
        sampling.check_range({"img": np.array([0.0, 255.0], np.float32)}, reference, 3,
                                "c", "ref")


def test_representative_dataset_yields_batch_one_dicts(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "two.npz"
    a, b = rng.normal(size=(6, 4)).astype("f4"), rng.normal(size=(6, 3)).astype("f4")
    np.savez(path, a=a, b=b)
    gen = sampling.representative_dataset(open_data(str(path), TWO), TWO, [1, 5])
    items = list(gen())
    assert len(items) == 2 and items[1]["a"].shape == (1, 4)
    np.testing.assert_array_equal(items[1]["b"][0], b[5])


def test_iter_batches_and_scan(tiny_npz):
    source = open_data(tiny_npz, IMG)
    batches = list(sampling.iter_batches(source, IMG, 50))
    assert [len(y) for _, y in batches] == [50, 50, 20]
    assert batches[0][0]["img"].shape == (50, 8, 8, 1)
    stats = sampling.scan(source, IMG, None)
    x = np.load(tiny_npz)["x"]
    assert stats.to_dict() == {"img": [float(x.min()), float(x.max())]}
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        list(sampling.iter_batches(source, IMG, 0))


def test_data_options_validation():
    with pytest.raises(ValueError, match="Unknown normalization"):
        DataOptions(normalize="zscore")
    with pytest.raises(ValueError, match="image_size must be"):
        DataOptions(image_size=(0, 5))


def test_first_samples_takes_the_first_ones_as_one_batch():
    from tflq.sampling import first_samples

    x = np.arange(50, dtype=np.float32).reshape(25, 2)
    batches = lambda: iter([x[:10], x[10:20], x[20:]])  # noqa: E731
    np.testing.assert_array_equal(first_samples(batches, 15), x[:15])
    np.testing.assert_array_equal(first_samples(batches, 100), x)  # fewer held: all of them
    named = lambda: iter([{"a": x[:10], "b": -x[:10]}, {"a": x[10:], "b": -x[10:]}])  # noqa: E731
    got = first_samples(named, 12)
    assert sorted(got) == ["a", "b"]
    np.testing.assert_array_equal(got["a"], x[:12])
    np.testing.assert_array_equal(got["b"], -x[:12])

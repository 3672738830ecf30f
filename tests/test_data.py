"""Dataset loaders on small files the tests write in the real formats (nothing downloads)."""

import gzip
import io
import re
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest

from ep_jax.app import data
from ep_jax.app.data import DATASETS, Dataset, load_dataset, read_cifar10, read_idx

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
MNIST_NAMES = data.MNIST_TRAIN_FILES + data.MNIST_TEST_FILES
N_TRAIN, N_TEST = 12, 5


# --- writers for the real file formats ------------------------------------------------------


def write_idx(path, array, code=0x08, gz=True):
    """An idx file: 00 00 <type> <ndim>, big-endian int32 dims, big-endian data."""
    array = np.asarray(array)
    big = array.astype(array.dtype.newbyteorder(">"))
    raw = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + big.tobytes()
    Path(path).write_bytes(gzip.compress(raw) if gz else raw)
    return path


def mnist_arrays():
    """Train/test uint8 images with pixel (i, r, c) = (7 i + 28 r + c) mod 256, known labels."""
    def images(n, offset):
        i, r, c = np.meshgrid(np.arange(n) + offset, np.arange(28), np.arange(28), indexing="ij")
        return ((7 * i + 28 * r + c) % 256).astype(np.uint8)

    y_train = (np.arange(N_TRAIN) * 3 % 10).astype(np.uint8)
    y_test = np.array([9, 8, 7, 6, 5], np.uint8)
    return images(N_TRAIN, 0), y_train, images(N_TEST, 100), y_test


def write_mnist(directory, gz=True, arrays=None):
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    x_tr, y_tr, x_te, y_te = arrays or mnist_arrays()
    for name, arr in zip(MNIST_NAMES, (x_tr, y_tr, x_te, y_te)):
        write_idx(directory / (name if gz else name.removesuffix(".gz")), arr, gz=gz)
    return directory


def unit(images):
    return images.reshape(len(images), -1).astype(np.float32) / np.float32(255)


def cifar_arrays():
    """Two HWC images per training batch (10 in all) and three test images, seeded bytes."""
    rng = np.random.default_rng(123)
    x = rng.integers(0, 256, size=(13, 32, 32, 3), dtype=np.uint8)
    y = (np.arange(13) * 7 % 10).astype(np.uint8)
    return x[:10], y[:10], x[10:], y[10:]


def cifar_bytes(x_hwc, y):
    """Records of 1 label byte + 1024 R, 1024 G, 1024 B (row-major 32x32)."""
    return b"".join(bytes([int(label)]) + img.transpose(2, 0, 1).tobytes() for img, label in zip(x_hwc, y))


def cifar_files():
    x_tr, y_tr, x_te, y_te = cifar_arrays()
    files = {f"data_batch_{b + 1}.bin": cifar_bytes(x_tr[2 * b : 2 * b + 2], y_tr[2 * b : 2 * b + 2]) for b in range(5)}
    files["test_batch.bin"] = cifar_bytes(x_te, y_te)
    files["batches.meta.txt"] = b"airplane\nautomobile\n"
    return files


def write_cifar(directory, variant):
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if variant == "dir":
        (directory / data.CIFAR10_DIR).mkdir()
        for name, blob in cifar_files().items():
            (directory / data.CIFAR10_DIR / name).write_bytes(blob)
    else:
        with tarfile.open(directory / data.CIFAR10_ARCHIVE, "w:gz") as tar:
            for name, blob in cifar_files().items():
                info = tarfile.TarInfo(f"{data.CIFAR10_DIR}/{name}")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
    return directory


def assert_well_formed(ds, name, d, n_train, n_test):
    assert isinstance(ds, Dataset) and ds.name == name and ds.num_classes == 10
    assert ds.x_train.shape == (n_train, d) and ds.x_test.shape == (n_test, d)
    assert ds.y_train.shape == (n_train,) and ds.y_test.shape == (n_test,)
    for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
        assert x.dtype == np.float32 and y.dtype == np.int32
        assert x.flags.c_contiguous and y.flags.c_contiguous
        assert 0.0 <= x.min() and x.max() <= 1.0


# --- small datasets -------------------------------------------------------------------------


def test_xor_unchanged():
    x, y = data.xor()
    assert x.dtype == np.float32 and y.dtype == np.int32
    np.testing.assert_array_equal(x, [[0, 0], [0, 1], [1, 0], [1, 1]])
    np.testing.assert_array_equal(y, [0, 1, 1, 0])
    ds = load_dataset("xor")
    assert ds.name == "xor" and ds.image_shape is None and ds.num_classes == 2
    for a, b in ((ds.x_train, x), (ds.x_test, x), (ds.y_train, y), (ds.y_test, y)):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype


def test_unknown_name_is_a_value_error_naming_the_argument():
    assert DATASETS == ("xor", "digits", "mnist10k", "mnist", "fashion_mnist", "cifar10")
    with pytest.raises(ValueError, match=r"name: expected one of xor, digits, .*cifar10, received 'mnistt'"):
        load_dataset("mnistt")


def test_digits_split_is_fixed_disjoint_and_complete():
    from sklearn.datasets import load_digits

    ds = load_dataset("digits")
    assert_well_formed(ds, "digits", 64, 1437, 360)
    assert ds.image_shape == (8, 8)
    # Fixed split (rng 0 permutation, last 360 test): pinned values catch any drift.
    assert ds.y_train[:10].tolist() == [6, 6, 6, 2, 5, 6, 6, 2, 2, 1]
    assert ds.y_test[:10].tolist() == [0, 8, 8, 9, 8, 3, 7, 5, 0, 6]
    assert int(ds.y_train.sum()) == 6507 and int(ds.y_test.sum()) == 1563
    assert float(ds.x_train.sum(dtype=np.float64)) == 28091.3125
    np.testing.assert_array_equal(load_dataset("digits").x_test, ds.x_test)
    # Train and test partition the 1797 digits: rows as multisets, with indices disjoint.
    full = load_digits()
    perm = np.random.default_rng(0).permutation(1797)
    assert set(perm[:1437]).isdisjoint(perm[1437:])
    np.testing.assert_array_equal(ds.x_test, (full.data[perm[1437:]] / 16).astype(np.float32))
    rows = np.concatenate([ds.x_train, ds.x_test]) * 16
    np.testing.assert_array_equal(np.unique(rows, axis=0), np.unique(full.data, axis=0))
    np.testing.assert_array_equal(np.sort(np.concatenate([ds.y_train, ds.y_test])), np.sort(full.target))


# --- idx / MNIST-format -----------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_round_trips(tmp_path, gz):
    x = mnist_arrays()[0]
    out = read_idx(write_idx(tmp_path / "a", x, gz=gz))
    assert out.dtype == np.uint8 and out.shape == (N_TRAIN, 28, 28)
    np.testing.assert_array_equal(out, x)
    out[0, 0, 0] = 1  # writable copy
    ints = np.arange(-6, 6, dtype=np.int32).reshape(3, 4)
    out = read_idx(write_idx(tmp_path / "b", ints, code=0x0C, gz=gz))
    assert out.dtype == np.int32 and out.dtype.isnative
    np.testing.assert_array_equal(out, ints)


def test_mnist_from_gz_files_in_subdir(tmp_path):
    write_mnist(tmp_path / "mnist")
    ds = load_dataset("mnist", data_dir=tmp_path)
    assert_well_formed(ds, "mnist", 784, N_TRAIN, N_TEST)
    assert ds.image_shape == (28, 28)
    x_tr, y_tr, x_te, _ = mnist_arrays()
    np.testing.assert_array_equal(ds.x_train, unit(x_tr))
    np.testing.assert_array_equal(ds.x_test, unit(x_te))
    np.testing.assert_array_equal(ds.y_train, y_tr)
    assert ds.y_test.tolist() == [9, 8, 7, 6, 5]
    # Pixel (image 3, row 1, col 2) = (21 + 28 + 2) / 255, flattened row-major.
    assert ds.x_train[3, 28 + 2] == np.float32(51) / np.float32(255)
    assert ds.x_train.max() == 1.0 and ds.x_train.min() == 0.0


def test_fashion_mnist_plain_files_from_env_data_dir(tmp_path, monkeypatch):
    write_mnist(tmp_path, gz=False)
    monkeypatch.setenv("EP_JAX_DATA_DIR", str(tmp_path))
    ds = load_dataset("fashion_mnist")
    assert_well_formed(ds, "fashion_mnist", 784, N_TRAIN, N_TEST)
    np.testing.assert_array_equal(ds.x_test, unit(mnist_arrays()[2]))


def test_missing_files_message_says_what_to_put_where(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("fashion_mnist", data_dir=tmp_path)
    msg = str(err.value)
    assert "fashion_mnist" in msg and str(tmp_path / "fashion_mnist") in msg and str(tmp_path) in msg
    for name in MNIST_NAMES:
        assert name in msg
    # No data_dir: the env directory and tensorflow-datasets' default are both named.
    monkeypatch.setenv("EP_JAX_DATA_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    (tmp_path / "env" / "mnist").mkdir(parents=True)
    write_idx(tmp_path / "env" / "mnist" / "t10k-labels-idx1-ubyte.gz", np.zeros(3, np.uint8))
    with pytest.raises(FileNotFoundError, match="mnist") as err:
        load_dataset("mnist")
    msg = str(err.value)
    assert str(tmp_path / "env" / "mnist") in msg and str(tmp_path / "tfds") in msg
    assert "but not train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz" in msg
    with pytest.raises(FileNotFoundError, match="cifar-10-binary.tar.gz.*cifar-10-batches-bin.*test_batch.bin"):
        load_dataset("cifar10", data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="mnist10k.*t10k-images-idx3-ubyte.gz"):
        load_dataset("mnist10k", data_dir=tmp_path)


def test_an_installed_package_has_no_default_data_directory(tmp_path, monkeypatch):
    """Outside a source checkout nothing outside the package is searched, and the error says so."""
    monkeypatch.delenv("EP_JAX_DATA_DIR", raising=False)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    shared = tmp_path / "shared" / "data"
    shared.mkdir(parents=True)
    monkeypatch.setattr(data, "_SOURCE_TREE_DATA", shared)
    monkeypatch.setattr(data, "_REPO_ROOT", tmp_path / "site-packages")  # no pyproject.toml
    assert data.default_data_dir() is None
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("mnist10k")
    msg = str(err.value)
    assert "no data directory" in msg and "$EP_JAX_DATA_DIR is unset" in msg
    assert "installed package has no default" in msg and str(shared) not in msg
    assert "--data-dir" in msg and "t10k-images-idx3-ubyte.gz" in msg
    with pytest.raises(FileNotFoundError, match="no data directory.*prepared copy .*"
                       + re.escape(str(tmp_path / "tfds"))):
        load_dataset("fashion_mnist")
    # A source checkout (pyproject.toml next to the package) uses its ../shared/data if it exists.
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "pyproject.toml").write_text("")
    monkeypatch.setattr(data, "_REPO_ROOT", tmp_path / "repo")
    assert data.default_data_dir() == shared
    shared.rmdir()
    assert data.default_data_dir() is None
    with pytest.raises(FileNotFoundError, match=re.escape(f"source checkout's {shared} does not exist")):
        load_dataset("mnist10k")


def test_corrupt_idx_files_name_the_file(tmp_path):
    good = write_idx(tmp_path / "good", np.zeros((2, 3), np.uint8), gz=False).read_bytes()
    cases = {
        "magic": (b"\x00\x01" + good[2:], r"expected an idx magic number .*received 00 01 08 02"),
        "type": (b"\x00\x00\x07" + good[3:], r"expected an idx magic number"),
        "truncated": (good[:-1], r"expected 18 bytes .*shape \(2, 3\).*received 17 bytes \(truncated\)"),
        "trailing": (good + b"\x00", r"expected 18 bytes .*received 19 bytes \(trailing data\)"),
        "badgz": (gzip.compress(good)[:-6], r"expected a complete gzip stream"),
    }
    for name, (blob, pattern) in cases.items():
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(ValueError, match=pattern) as err:
            read_idx(tmp_path / name)
        assert str(tmp_path / name) in str(err.value)


def test_mnist_label_count_and_range_are_checked(tmp_path):
    x_tr, y_tr, x_te, y_te = mnist_arrays()
    write_mnist(tmp_path / "a" / "mnist", arrays=(x_tr, y_tr[:-1], x_te, y_te))
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte.gz: expected 12 labels .*received 11"):
        load_dataset("mnist", data_dir=tmp_path / "a")
    write_mnist(tmp_path / "b" / "mnist", arrays=(x_tr, y_tr, x_te, y_te + 5))
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte.gz: expected labels in \[0, 10\), received values in \[10, 14\]"):
        load_dataset("mnist", data_dir=tmp_path / "b")


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="../shared/data/mnist (the real MNIST test set) is absent")
def test_mnist10k_real_files():
    ds = load_dataset("mnist10k")  # default: ../shared/data
    assert_well_formed(ds, "mnist10k", 784, 8000, 2000)
    assert ds.image_shape == (28, 28)
    assert ds.y_train[0] == 7  # the first official MNIST test digit
    assert int(ds.y_train.sum()) == 35634 and int(ds.y_test.sum()) == 8800
    assert ds.x_train.max() == 1.0 and ds.x_train.min() == 0.0
    # Files directly in data_dir work too, and give the same split.
    same = load_dataset("mnist10k", data_dir=SHARED_MNIST)
    np.testing.assert_array_equal(same.x_test, ds.x_test)
    np.testing.assert_array_equal(same.y_test, ds.y_test)


# --- CIFAR-10 binary ------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["dir", "tar"])
@pytest.mark.parametrize("subdir", ["cifar10", "."])
def test_cifar10_binary(tmp_path, variant, subdir):
    write_cifar(tmp_path / subdir, variant)
    ds = load_dataset("cifar10", data_dir=tmp_path)
    assert_well_formed(ds, "cifar10", 3072, 10, 3)
    assert ds.image_shape == (32, 32, 3)
    x_tr, y_tr, x_te, y_te = cifar_arrays()
    np.testing.assert_array_equal(ds.x_train, unit(x_tr))  # HWC order, flattened
    np.testing.assert_array_equal(ds.x_test, unit(x_te))
    np.testing.assert_array_equal(ds.y_train, y_tr)  # batches 1..5 in order
    np.testing.assert_array_equal(ds.y_test, y_te)
    # CHW -> HWC, checked against the raw bytes: green (r=1, c=2) of the 4th training image
    # is byte 1 + 1024 + 32 * 1 + 2 of the 2nd record in data_batch_2.bin.
    record = cifar_files()["data_batch_2.bin"][3073 : 2 * 3073]
    img = ds.x_train[3].reshape(32, 32, 3)
    assert img[1, 2, 1] * 255 == record[1 + 1024 + 34]
    assert img[31, 0, 2] * 255 == record[1 + 2048 + 31 * 32] and ds.y_train[3] == record[0]


def test_read_cifar10_returns_uint8_hwc(tmp_path):
    write_cifar(tmp_path, "tar")
    x_tr, y_tr, x_te, _ = read_cifar10(tmp_path / data.CIFAR10_ARCHIVE)
    assert x_tr.dtype == np.uint8 and x_tr.shape == (10, 32, 32, 3) and y_tr.dtype == np.int32
    np.testing.assert_array_equal(x_te, cifar_arrays()[2])
    write_cifar(tmp_path / "e", "dir")
    for path in (tmp_path / "e", tmp_path / "e" / data.CIFAR10_DIR):
        np.testing.assert_array_equal(read_cifar10(path)[0], x_tr)


def test_corrupt_cifar10_files(tmp_path):
    batches = write_cifar(tmp_path / "a", "dir") / data.CIFAR10_DIR
    with open(batches / "data_batch_3.bin", "ab") as f:
        f.write(b"\x00")
    with pytest.raises(ValueError, match=r"data_batch_3.bin: expected a size that is a positive multiple of 3073 bytes .*received 6147"):
        load_dataset("cifar10", data_dir=tmp_path / "a")
    (batches / "data_batch_3.bin").write_bytes(b"\x0a" + bytes(3072))
    with pytest.raises(ValueError, match=r"data_batch_3.bin: expected labels in \[0, 10\), received values in \[10, 10\]"):
        read_cifar10(batches)
    (batches / "test_batch.bin").unlink()
    with pytest.raises(FileNotFoundError, match="missing test_batch.bin"):
        load_dataset("cifar10", data_dir=tmp_path / "a")
    (tmp_path / "b").mkdir()
    with tarfile.open(tmp_path / "b" / data.CIFAR10_ARCHIVE, "w:gz") as tar:
        info = tarfile.TarInfo(f"{data.CIFAR10_DIR}/data_batch_1.bin")
        info.size = 3073
        tar.addfile(info, io.BytesIO(bytes(3073)))
    with pytest.raises(ValueError, match=r"cifar-10-binary.tar.gz: expected archive members .*missing data_batch_2.bin"):
        load_dataset("cifar10", data_dir=tmp_path / "b")
    (tmp_path / "b" / data.CIFAR10_ARCHIVE).write_bytes(b"not a tar")
    with pytest.raises(ValueError, match="expected a readable cifar-10-binary.tar.gz"):
        read_cifar10(tmp_path / "b")


# --- copies tensorflow-datasets prepared ----------------------------------------------------


def prepare_with_tfds(data_dir, dataset, version, shape, counts, file_format):
    """Prepares a tiny ``dataset`` with tensorflow-datasets itself (offline, no TensorFlow).

    Image ``k`` has pixel [0, 0, 0] = k and label k % 10, so order and pairing can be checked.
    """
    tfds = pytest.importorskip("tensorflow_datasets")
    pil = pytest.importorskip("PIL.Image")

    def png(k):
        img = np.full(shape, 40, np.uint8)
        img[0, 0, 0] = k
        buf = io.BytesIO()
        pil.fromarray(img[..., 0] if shape[-1] == 1 else img).save(buf, format="PNG")
        return buf.getvalue()  # encoded here: tfds' own PNG encoder needs TensorFlow

    class TinyBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        # A one-part module name skips tfds' code-path lookup, which needs importlib_resources.
        __module__ = "tiny_tfds_builder"
        name = dataset
        VERSION = tfds.core.Version(version)

        def _info(self):
            features = {"image": tfds.features.Image(shape=shape), "label": tfds.features.ClassLabel(num_classes=10)}
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(0, counts[0]), "test": self._generate_examples(100, counts[1])}

        def _generate_examples(self, start, n):
            for k in range(start, start + n):
                yield k, {"image": png(k), "label": k % 10}

    TinyBuilder(data_dir=str(data_dir), file_format=file_format).download_and_prepare()
    return Path(data_dir) / dataset / version


def check_tfds_copy(ds, counts):
    for x, y, start, n in ((ds.x_train, ds.y_train, 0, counts[0]), (ds.x_test, ds.y_test, 100, counts[1])):
        keys = np.rint(x[:, 0] * 255).astype(int)
        assert sorted(keys) == list(range(start, start + n))
        np.testing.assert_array_equal(y, keys % 10)
        assert np.all(x[:, 1:] == np.float32(40) / np.float32(255))


def test_tfds_prepared_array_record_copy(tmp_path, monkeypatch):
    prepare_with_tfds(tmp_path / "tfds", "mnist", "3.0.1", (28, 28, 1), (6, 3), "array_record")
    ds = load_dataset("mnist", data_dir=tmp_path / "tfds")
    assert_well_formed(ds, "mnist", 784, 6, 3)
    check_tfds_copy(ds, (6, 3))
    # Without data_dir, tensorflow-datasets' default directory is searched too.
    monkeypatch.setenv("EP_JAX_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    np.testing.assert_array_equal(load_dataset("mnist").x_train, ds.x_train)
    # Raw files take precedence over a prepared copy.
    write_mnist(tmp_path / "tfds" / "mnist")
    assert load_dataset("mnist", data_dir=tmp_path / "tfds").x_train.shape == (N_TRAIN, 784)


def test_tfds_prepared_tfrecord_copy(tmp_path, monkeypatch):
    from tensorflow_datasets.core import file_adapters

    def write_tfrecord(cls, path, iterator):  # tfds writes TFRecords through TensorFlow
        # Each record: length, length CRC, data, data CRC (zeros: the reader does not check CRCs).
        with open(path, "wb") as f:
            f.writelines(struct.pack("<Q", len(rec)) + bytes(4) + rec + bytes(4) for _, rec in iterator)

    monkeypatch.setattr(file_adapters.TfRecordFileAdapter, "write_examples", classmethod(write_tfrecord))
    root = prepare_with_tfds(tmp_path, "cifar10", "3.0.2", (32, 32, 3), (4, 2), "tfrecord")
    ds = load_dataset("cifar10", data_dir=tmp_path)
    assert_well_formed(ds, "cifar10", 3072, 4, 2)
    check_tfds_copy(ds, (4, 2))
    shard = next(root.glob("cifar10-test.tfrecord-*"))
    shard.write_bytes(shard.read_bytes()[:-5])
    with pytest.raises(ValueError, match=r"cifar10-test.tfrecord-00000-of-00001: expected a \d+-byte TFRecord"):
        load_dataset("cifar10", data_dir=tmp_path)

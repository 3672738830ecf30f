"""Datasets as flat float32 arrays in host memory, read from local files only.

``load_dataset(name)`` returns a :class:`Dataset`: ``x`` float32 in ``[0, 1]`` of shape
``(n, d)`` (images flattened in H, W, C order) and int32 labels, all C-contiguous NumPy
arrays. This module never downloads anything (the project runs on machines without
internet); a dataset that is not on disk raises ``FileNotFoundError`` saying which files
to put where.

Where each dataset comes from:

* ``xor``: the four XOR patterns, train = test.
* ``digits``: scikit-learn's bundled 8x8 digits (shipped inside the wheel), with a fixed
  split that does not depend on any run seed (see :data:`DIGITS_NUM_TEST`).
* ``mnist10k``: the official MNIST *test set* (10,000 real images, the only MNIST files
  available offline, in ``<data dir>/mnist``): the first 8,000 in file order train,
  the last 2,000 test. Not comparable with full-MNIST numbers from papers.
* ``mnist``, ``fashion_mnist``, ``cifar10``: first the raw files exactly as
  tensorflow-datasets downloads them (idx ``.gz`` files; ``cifar-10-binary.tar.gz`` or its
  extracted ``cifar-10-batches-bin/``); else a copy tensorflow-datasets already prepared
  under the data directory (``<dir>/<name>/<version>/``), read without TensorFlow and with
  downloads off; else ``FileNotFoundError``.

The data directory is ``data_dir`` when given, else ``$EP_JAX_DATA_DIR``, else, when running
from a source checkout (``pyproject.toml`` next to the package), its sibling ``../shared/data``
if that exists; an installed package has no default. With no ``data_dir``,
tensorflow-datasets' own default (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``) is searched
for prepared copies too.

Nothing here shuffles per epoch: the training loop shuffles on device from the run's seed,
so the order returned here is fixed (file order for raw files, tensorflow-datasets' stored
order for prepared copies).
"""

from __future__ import annotations

import gzip
import os
import re
import struct
import tarfile
import zlib
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "DATASETS",
    "DIGITS_NUM_TEST",
    "Dataset",
    "default_data_dir",
    "load_dataset",
    "read_cifar10",
    "read_idx",
    "xor",
]

DATASETS: tuple[str, ...] = ("xor", "digits", "mnist10k", "mnist", "fashion_mnist", "cifar10")
"""Names :func:`load_dataset` accepts."""

DATA_DIR_ENV = "EP_JAX_DATA_DIR"

DIGITS_NUM_TEST = 360
"""``digits`` split: ``perm = np.random.default_rng(0).permutation(1797)``; rows ``perm[:1437]``
train and ``perm[1437:]`` (360 rows) test, in that permuted order. Fixed, never the run seed."""

MNIST10K_NUM_TRAIN = 8000
"""``mnist10k`` split: the first 8,000 official MNIST test images train, the last 2,000 test."""

# File names exactly as tensorflow-datasets downloads them (Fashion-MNIST uses the same names).
MNIST_TRAIN_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")
MNIST_TEST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
CIFAR10_ARCHIVE = "cifar-10-binary.tar.gz"
CIFAR10_DIR = "cifar-10-batches-bin"
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch.bin"

_CIFAR_RECORD = 1 + 32 * 32 * 3  # one label byte, then 1024 R, 1024 G, 1024 B bytes
_SOURCES = {
    "mnist": "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "fashion_mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
}
# idx type codes (third magic byte) -> big-endian element type.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class Dataset(NamedTuple):
    """A train/test pair of flat float32 inputs in ``[0, 1]`` and int32 labels.

    Attributes:
        x_train: ``(n_train, d)`` float32 in ``[0, 1]``; images flattened in H, W, C order.
        y_train: ``(n_train,)`` int32 in ``[0, num_classes)``.
        x_test: ``(n_test, d)`` float32 in ``[0, 1]``.
        y_test: ``(n_test,)`` int32.
        name: One of :data:`DATASETS`.
        image_shape: Shape to unflatten one row to (``(28, 28)``, ``(32, 32, 3)``, ``(8, 8)``),
            or ``None`` when the inputs are not images (``xor``).
        num_classes: Number of label values.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    name: str
    image_shape: tuple[int, ...] | None
    num_classes: int


def xor() -> tuple[np.ndarray, np.ndarray]:
    """The four XOR patterns of seed 000: inputs ``(4, 2)`` float32 and labels ``(4,)`` int32."""
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
    y = np.array([0, 1, 1, 0], dtype=np.int32)
    return x, y


# A source checkout: the repository root holds pyproject.toml next to the ep_jax package.
_REPO_ROOT = Path(__file__).resolve().parents[2]
_SOURCE_TREE_DATA = _REPO_ROOT.parent / "shared" / "data"


def _in_source_tree() -> bool:
    return (_REPO_ROOT / "pyproject.toml").is_file()


def _source_tree_data_dir() -> Path | None:
    return _SOURCE_TREE_DATA if _in_source_tree() and _SOURCE_TREE_DATA.is_dir() else None


def default_data_dir() -> Path | None:
    """``$EP_JAX_DATA_DIR`` if set and non-empty, else a source checkout's ``../shared/data`` if
    it exists, else ``None`` (an installed package never looks outside itself)."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return _source_tree_data_dir()


def _no_data_dir(name: str, files: str) -> FileNotFoundError:
    """The error for a dataset that needs files when no data directory is known."""
    default = (f"the source checkout's {_SOURCE_TREE_DATA} does not exist" if _in_source_tree()
               else "an installed package has no default directory")
    return FileNotFoundError(
        f"dataset {name!r}: no data directory: no data_dir / --data-dir given, ${DATA_DIR_ENV} "
        f"is unset and {default}. Put {files} in a directory and pass it as --data-dir "
        f"(data_dir=) or set ${DATA_DIR_ENV}. Nothing is downloaded."
    )


def load_dataset(name: str, data_dir: str | os.PathLike[str] | None = None) -> Dataset:
    """Loads a dataset from local files (never downloads).

    Args:
        name: One of :data:`DATASETS`.
        data_dir: Directory holding the files (see the module docstring for the layout).
            Defaults to :func:`default_data_dir`. Ignored by ``xor`` and ``digits``.

    Returns:
        The :class:`Dataset`, float32 inputs in ``[0, 1]`` and int32 labels.

    Raises:
        ValueError: ``name`` is not in :data:`DATASETS`, or a file is corrupt.
        FileNotFoundError: No copy of the dataset was found; the message names the
            directories searched and the files to put there.
    """
    if not isinstance(name, str) or name not in DATASETS:
        raise ValueError(f"name: expected one of {', '.join(DATASETS)}, received {name!r}")
    if name == "xor":
        x, y = xor()
        return Dataset(x, y, x.copy(), y.copy(), "xor", None, 2)
    if name == "digits":
        return _load_digits()
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    if name == "mnist10k":
        if root is None:
            raise _no_data_dir(name, " and ".join(MNIST_TEST_FILES) + f" (from {_SOURCES['mnist']})")
        return _load_mnist10k(root)
    # Prepared tensorflow-datasets copies may also sit in tfds' own default directory.
    tfds_roots = [root] if root is not None else []
    if data_dir is None:
        tfds_default = os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
        tfds_roots.append(Path(tfds_default).expanduser())
    if name == "cifar10":
        return _load_cifar10(root, tfds_roots)
    return _load_mnist_like(name, root, tfds_roots)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Reads an idx file (the MNIST / Fashion-MNIST format), gzip-compressed or plain.

    Args:
        path: The file; compression is detected from its first bytes, not its name.

    Returns:
        The array with the shape and element type in the header, in native byte order.

    Raises:
        ValueError: Bad magic number, unreadable gzip stream, or a data size that does not
            match the header (truncated or trailing bytes).
    """
    path = Path(path)
    raw = _read_maybe_gzip(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise ValueError(
            f"{path}: expected an idx magic number 00 00 <type in {sorted(_IDX_DTYPES)}> "
            f"<ndim >= 1>, received {raw[:4].hex(' ') or 'an empty file'}"
        )
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise ValueError(
            f"{path}: expected a {4 + 4 * ndim}-byte idx header, received {len(raw)} bytes"
        )
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    offset = 4 + 4 * ndim
    expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(
            f"{path}: expected {expected} bytes for an idx array of shape {shape} ({dtype.name}), "
            f"received {len(raw)} bytes ({'truncated' if len(raw) < expected else 'trailing data'})"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=offset).reshape(shape)
    return data.astype(dtype.newbyteorder("="))  # copies: writable, native order


def read_cifar10(
    path_or_dir: str | os.PathLike[str],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Reads the CIFAR-10 *binary* version (the one tensorflow-datasets downloads).

    Args:
        path_or_dir: ``cifar-10-binary.tar.gz``; or the extracted ``cifar-10-batches-bin``
            directory (``data_batch_1.bin`` ... ``data_batch_5.bin``, ``test_batch.bin``);
            or a directory holding either of them (the extracted directory wins).

    Returns:
        ``(x_train, y_train, x_test, y_test)``: uint8 images ``(n, 32, 32, 3)`` in H, W, C
        order and int32 labels, training batches concatenated in order 1..5.

    Raises:
        FileNotFoundError: A batch file is missing from a directory.
        ValueError: Unreadable archive, archive without the batch files, a batch size that is
            not a positive multiple of 3073 bytes, or a label above 9.
    """
    path = Path(path_or_dir)
    names = (*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE)
    if path.is_dir() and not (path / names[0]).exists():
        if (path / CIFAR10_DIR).is_dir():
            path = path / CIFAR10_DIR
        elif (path / CIFAR10_ARCHIVE).is_file():
            path = path / CIFAR10_ARCHIVE
    if path.is_dir():
        missing = [n for n in names if not (path / n).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{path}: expected the CIFAR-10 binary batch files {', '.join(names)}, "
                f"missing {', '.join(missing)}"
            )
        blobs = {n: ((path / n).read_bytes(), str(path / n)) for n in names}
    else:
        blobs = _read_cifar_archive(path, names)
    parts = [_decode_cifar(*blobs[n]) for n in names]
    x_train = np.concatenate([p[0] for p in parts[:-1]])
    y_train = np.concatenate([p[1] for p in parts[:-1]])
    return x_train, y_train, parts[-1][0], parts[-1][1]


# --- small datasets -------------------------------------------------------------------------


def _load_digits() -> Dataset:
    from sklearn.datasets import load_digits  # local: keeps `import ep_jax.app.data` light

    bunch = load_digits()
    x = np.asarray(bunch.data, np.float32) / np.float32(16.0)  # 0..16 -> [0, 1], exact
    y = np.asarray(bunch.target, np.int32)
    # Fixed seed 0 on purpose: the split must not move with the run seed.
    perm = np.random.default_rng(0).permutation(len(y))
    tr, te = perm[: len(y) - DIGITS_NUM_TEST], perm[len(y) - DIGITS_NUM_TEST :]
    return Dataset(*_c(x[tr], y[tr], x[te], y[te]), "digits", (8, 8), 10)


# --- MNIST-format datasets ------------------------------------------------------------------


def _load_mnist10k(root: Path) -> Dataset:
    dirs = [root / "mnist", root]
    found = _find_files(dirs, MNIST_TEST_FILES)
    if found is None:
        raise FileNotFoundError(
            f"dataset 'mnist10k' (the official MNIST test set): searched {_fmt_dirs(dirs)} for "
            f"{', '.join(MNIST_TEST_FILES)} and found them in none; put "
            f"{' and '.join(MNIST_TEST_FILES)} (from {_SOURCES['mnist']}) in {dirs[0]} or {dirs[1]}, "
            f"or pass data_dir= / set ${DATA_DIR_ENV}. Nothing is downloaded."
        )
    x, y = _read_mnist_pair(*found)
    if len(y) != 10000:
        raise ValueError(
            f"{found[1]}: expected the 10000 official MNIST test images, received {len(y)}"
        )
    n = MNIST10K_NUM_TRAIN
    x = _to_unit_float(x)
    return Dataset(*_c(x[:n], y[:n], x[n:], y[n:]), "mnist10k", (28, 28), 10)


def _load_mnist_like(name: str, root: Path | None, tfds_roots: list[Path]) -> Dataset:
    files = MNIST_TRAIN_FILES + MNIST_TEST_FILES
    dirs = [root / name, root] if root is not None else []
    found = _find_files(dirs, files)
    if found is not None:
        x_tr, y_tr = _read_mnist_pair(*found[:2])
        x_te, y_te = _read_mnist_pair(*found[2:])
    else:
        prepared = _find_prepared(tfds_roots, name)
        if prepared is None:
            raise _not_found(name, dirs, files, tfds_roots)
        x_tr, y_tr, x_te, y_te = _read_tfds_prepared(prepared, (28, 28, 1))
    return Dataset(
        *_c(_to_unit_float(x_tr), y_tr, _to_unit_float(x_te), y_te), name, (28, 28), 10
    )


def _read_mnist_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(
            f"{images_path}: expected uint8 images of shape (n, 28, 28), received {images.dtype} {images.shape}"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise ValueError(
            f"{labels_path}: expected a 1-d uint8 label array, received {labels.dtype} {labels.shape}"
        )
    if len(labels) != len(images):
        raise ValueError(
            f"{labels_path}: expected {len(images)} labels (one per image in {images_path.name}), "
            f"received {len(labels)}"
        )
    _check_labels(labels, 10, labels_path)
    return images, labels.astype(np.int32)


# --- CIFAR-10 --------------------------------------------------------------------------------


def _load_cifar10(root: Path | None, tfds_roots: list[Path]) -> Dataset:
    dirs = [root / "cifar10", root] if root is not None else []
    source = None
    for d in dirs:
        extracted, archive = d / CIFAR10_DIR, d / CIFAR10_ARCHIVE
        if all((extracted / n).is_file() for n in (*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE)):
            source = extracted  # preferred: no decompression needed
        elif archive.is_file():
            source = archive
        elif extracted.is_dir():
            source = extracted  # incomplete: read_cifar10 names the missing batch files
        if source is not None:
            break
    if source is not None:
        x_tr, y_tr, x_te, y_te = read_cifar10(source)
    else:
        prepared = _find_prepared(tfds_roots, "cifar10")
        if prepared is None:
            what = f"{CIFAR10_ARCHIVE} or its extracted {CIFAR10_DIR}/ directory"
            files = (f"{what} ({', '.join(CIFAR10_TRAIN_FILES)}, {CIFAR10_TEST_FILE})",)
            raise _not_found("cifar10", dirs, files, tfds_roots)
        x_tr, y_tr, x_te, y_te = _read_tfds_prepared(prepared, (32, 32, 3))
    return Dataset(
        *_c(_to_unit_float(x_tr), y_tr, _to_unit_float(x_te), y_te), "cifar10", (32, 32, 3), 10
    )


def _read_cifar_archive(path: Path, names: tuple[str, ...]) -> dict[str, tuple[bytes, str]]:
    blobs: dict[str, tuple[bytes, str]] = {}
    try:
        # One sequential pass: random access into a .tar.gz re-decompresses from the start.
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and base in names and base not in blobs:
                    blobs[base] = (tar.extractfile(member).read(), f"{path}:{member.name}")
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(
            f"{path}: expected a readable {CIFAR10_ARCHIVE} tar archive, received an unreadable file ({e})"
        ) from e
    missing = [n for n in names if n not in blobs]
    if missing:
        raise ValueError(
            f"{path}: expected archive members {CIFAR10_DIR}/{{{', '.join(names)}}}, "
            f"missing {', '.join(missing)}"
        )
    return blobs


def _decode_cifar(data: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    if len(data) == 0 or len(data) % _CIFAR_RECORD:
        raise ValueError(
            f"{source}: expected a size that is a positive multiple of {_CIFAR_RECORD} bytes "
            f"(1 label byte + 3072 pixel bytes per image), received {len(data)} bytes"
        )
    records = np.frombuffer(data, np.uint8).reshape(-1, _CIFAR_RECORD)
    labels = records[:, 0]
    _check_labels(labels, 10, source)
    # Stored channel-major (1024 R, 1024 G, 1024 B, each row-major 32x32): CHW -> HWC.
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int32)


# --- tensorflow-datasets prepared copies -----------------------------------------------------


def _find_prepared(roots: list[Path], name: str) -> Path | None:
    """The newest ``<root>/<name>/<x.y.z>/`` holding a ``dataset_info.json``, first root first."""
    for root in roots:
        base = root / name
        if not base.is_dir():
            continue
        versions = [
            p for p in base.iterdir()
            if re.fullmatch(r"\d+\.\d+\.\d+", p.name) and (p / "dataset_info.json").is_file()
        ]
        if versions:
            return max(versions, key=lambda p: tuple(int(v) for v in p.name.split(".")))
    return None


def _read_tfds_prepared(
    builder_dir: Path, image_shape: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Reads both splits of a prepared copy with tensorflow-datasets, without TensorFlow.

    ``builder_from_directory`` only reads the metadata written next to the data (no dataset
    code, no network). ``array_record``/``parquet`` copies are read through
    ``as_data_source``; ``tfrecord`` copies (tfds' default format when TensorFlow prepared
    them) are read with a small TFRecord reader here, since tfds' own needs TensorFlow.
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:  # pragma: no cover - it is a project dependency
        raise ImportError(
            f"{builder_dir}: reading a tensorflow-datasets copy needs tensorflow_datasets ({e})"
        ) from e
    try:
        builder = tfds.builder_from_directory(os.fspath(builder_dir))
        info = builder.info
        fmt = getattr(info.file_format, "value", info.file_format)
        out: list[np.ndarray] = []
        for split in ("train", "test"):
            if fmt == "tfrecord":
                examples: Any = (
                    info.features.deserialize_example_np(rec)
                    for path in info.splits[split].filepaths
                    for rec in _iter_tfrecord(Path(os.fspath(path)))
                )
            else:
                source = builder.as_data_source(split=split)
                examples = (  # batched reads: faster than one index at a time
                    ex
                    for start in range(0, len(source), 4096)
                    for ex in source.__getitems__(range(start, min(start + 4096, len(source))))
                )
            images, labels = [], []
            for ex in examples:
                images.append(np.asarray(ex["image"], np.uint8))
                labels.append(int(ex["label"]))
            out += [_stack_images(images, image_shape, builder_dir, split), np.asarray(labels, np.int64)]
    except _DataError:
        raise
    except Exception as e:  # tfds raises many types; name the directory that failed
        raise ValueError(
            f"{builder_dir}: expected a readable tensorflow-datasets copy, failed with {type(e).__name__}: {e}"
        ) from e
    for labels, split in ((out[1], "train"), (out[3], "test")):
        _check_labels(labels, 10, f"{builder_dir} ({split} split)")
    return out[0], out[1].astype(np.int32), out[2], out[3].astype(np.int32)


class _DataError(ValueError):
    """A corrupt-data error raised here, already naming its file (passed through unwrapped)."""


def _stack_images(
    images: list[np.ndarray], shape: tuple[int, ...], where: Path, split: str
) -> np.ndarray:
    if not images:
        raise _DataError(f"{where}: expected a non-empty {split} split, received 0 examples")
    bad = next((im.shape for im in images if im.shape != shape), None)
    if bad is not None:
        raise _DataError(f"{where} ({split} split): expected images of shape {shape}, received {bad}")
    return np.stack(images)


def _iter_tfrecord(path: Path):
    """Yields the records of a TFRecord file (lengths checked, CRCs not verified)."""
    data = path.read_bytes()
    pos = 0
    while pos < len(data):
        if pos + 12 > len(data):
            raise _DataError(
                f"{path}: expected a 12-byte TFRecord header at byte {pos}, received {len(data) - pos} bytes"
            )
        (n,) = struct.unpack_from("<Q", data, pos)
        end = pos + 12 + n + 4
        if end > len(data):
            raise _DataError(
                f"{path}: expected a {n}-byte TFRecord at byte {pos}, "
                f"received a truncated file of {len(data)} bytes"
            )
        yield data[pos + 12 : pos + 12 + n]
        pos = end


# --- helpers ---------------------------------------------------------------------------------


def _read_maybe_gzip(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"{path}: expected a complete gzip stream, received an unreadable one ({e})") from e


def _find_files(dirs: list[Path], names: tuple[str, ...]) -> tuple[Path, ...] | None:
    """The first directory holding every file (``x.gz`` or its unzipped ``x``), as paths."""
    for d in dirs:
        paths = []
        for n in names:
            p = next((d / c for c in (n, n.removesuffix(".gz")) if (d / c).is_file()), None)
            if p is None:
                break
            paths.append(p)
        else:
            return tuple(paths)
    return None


def _not_found(
    name: str, dirs: list[Path], files: tuple[str, ...], tfds_roots: list[Path]
) -> FileNotFoundError:
    partial = []
    for d in dirs:
        have = [f for f in files if (d / f).is_file() or (d / f.removesuffix(".gz")).is_file()]
        if have:
            partial.append(f" {d} has {', '.join(have)} but not {', '.join(f for f in files if f not in have)}.")
    what = f"{', '.join(files)} (as tensorflow-datasets downloads them, from {_SOURCES[name]})"
    prepared = (f"a tensorflow-datasets prepared copy ({name}/<version>/dataset_info.json) in: "
                f"{_fmt_dirs(tfds_roots)}.")
    if not dirs:
        return FileNotFoundError(f"{_no_data_dir(name, what)} Searched for {prepared}")
    return FileNotFoundError(
        f"dataset {name!r}: no copy found (nothing is downloaded). Put {what} in {dirs[0]} or "
        f"{dirs[1]}, or pass data_dir= / set ${DATA_DIR_ENV}. Searched for those raw files in: "
        f"{_fmt_dirs(dirs)}; for {prepared}{''.join(partial)}"
    )


def _fmt_dirs(dirs: list[Path]) -> str:
    return ", ".join(f"{d}" + ("" if d.is_dir() else " (missing)") for d in dirs)


def _check_labels(labels: np.ndarray, num_classes: int, where: object) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{where}: expected labels in [0, {num_classes}), "
            f"received values in [{labels.min()}, {labels.max()}]"
        )


def _to_unit_float(images: np.ndarray) -> np.ndarray:
    """uint8 images ``(n, ...)`` -> ``(n, prod(...))`` float32 ``k / 255`` (correctly rounded)."""
    return images.reshape(len(images), -1).astype(np.float32) / np.float32(255.0)


def _c(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    return tuple(np.ascontiguousarray(a) for a in arrays)


def validate(data: Dataset) -> None:
    """Raises ``ValueError`` unless every label is an integer in ``[0, num_classes)`` and every
    input is finite; the message names the split, how many values are bad, the first one's index
    and its value."""
    k = data.num_classes
    for split in ("train", "test"):
        y = np.asarray(getattr(data, f"y_{split}"))
        if y.dtype.kind not in "iu":
            raise ValueError(f"y_{split}: expected integer labels in [0, {k}), received dtype {y.dtype}")
        bad = np.flatnonzero((y < 0) | (y >= k))
        if bad.size:
            raise ValueError(
                f"y_{split}: expected labels in [0, {k}), received {bad.size} outside it; the first "
                f"is y_{split}[{bad[0]}] = {y[bad[0]]}"
            )
        x = np.asarray(getattr(data, f"x_{split}"))
        bad = np.argwhere(~np.isfinite(x))
        if len(bad):
            first = tuple(int(i) for i in bad[0])
            raise ValueError(
                f"x_{split}: expected finite inputs, received {len(bad)} non-finite values; the "
                f"first is x_{split}[{', '.join(map(str, first))}] = {x[first]}"
            )


def outside_unit_fraction(data: Dataset) -> float:
    """The fraction of input values (train and test) outside ``[0, 1]``."""
    n = sum(getattr(data, f"x_{s}").size for s in ("train", "test"))
    out = sum(int(np.count_nonzero((x < 0) | (x > 1))) for x in (data.x_train, data.x_test))
    return out / n if n else 0.0

"""MNIST: a reader for the standard IDX files, a downloader, and a small subset shipped inside
the package (`load_digits`), so the demo runs with no download; CIFAR-10's binary version
(`load_cifar10`, float32 (N, 3, 32, 32) standardized per channel; not downloaded).

Both loaders return ``(train_x, train_y, test_x, test_y)``:
  train_x, test_x  float32 (N, 1, 28, 28): pixels scaled to [0, 1], then (normalize=True, the
                   default) standardized with PyTorch's usual MNIST recipe,
                   (x - 0.1307) / 0.3081, the mean and std of the 60,000 training images.
                   normalize=False leaves the [0, 1] values.
  train_y, test_y  int64 (N,), digits 0-9.

Checksums: each file is checked against the SHA-256 of its *uncompressed* IDX content. That
hash is the same for the `.gz` files on every mirror, for a file re-gzipped at another
compression level, and for a raw (gunzipped) file, so one table serves all of them.
"""
import gzip
import hashlib
import http.client
import os
import urllib.request
from importlib import resources
from typing import Iterable

import numpy as np

from ._fileio import atomic_open

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

#: name -> SHA-256 of the uncompressed canonical IDX file (yann.lecun.com's MNIST).
MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
MNIST_FILES = tuple(MNIST_SHA256)  # train images, train labels, test images, test labels

#: Public mirrors of the four .gz files (the original yann.lecun.com site often refuses bots).
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)

# IDX type codes -> big-endian NumPy dtypes
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


# ---------------------------------------------------------------- IDX files

def _open_maybe_gzip(path):
    with open(path, "rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def read_idx_bytes(path: str | os.PathLike) -> bytes:
    """The uncompressed bytes of an IDX file, gzipped or raw (told apart by content)."""
    try:
        with _open_maybe_gzip(path) as f:
            return f.read()
    except (OSError, EOFError) as e:  # truncated or corrupt gzip stream
        raise ValueError(f"{path}: cannot decompress ({e})") from e


def parse_idx(data: bytes, path: str | os.PathLike = "<bytes>") -> np.ndarray:
    """An IDX file's content (bytes) as a NumPy array in native byte order.

    Layout: two zero bytes, a type code, the number of dims, then each dim as a big-endian
    uint32, then the values (big-endian).
    """
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number {data[:4].hex()})")
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX type code 0x{code:02x}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, 4))
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(f"{path}: IDX size mismatch: shape {shape} needs {expected} bytes, file has {len(data)}")
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (gzipped or raw) as a NumPy array."""
    return parse_idx(read_idx_bytes(path), path)


def find_mnist_file(data_dir: str | os.PathLike, name: str) -> str:
    """The path of `name` in data_dir: `name.gz` if present, else the raw `name`."""
    for candidate in (os.path.join(data_dir, name + ".gz"), os.path.join(data_dir, name)):
        if os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(
        f"MNIST file missing: {os.path.join(data_dir, name + '.gz')} (or the raw "
        f"{os.path.join(data_dir, name)}); get the files with numbanorm.datasets.download_mnist"
        f"({str(data_dir)!r}) or `numbanorm-demo --dataset mnist --download --data-dir {data_dir}`"
    )


def _verified_bytes(path, name, checksums):
    data = read_idx_bytes(path)
    want = checksums.get(name) if checksums is not None else None
    if want is not None:
        got = hashlib.sha256(data).hexdigest()
        if got != want:
            raise ValueError(
                f"{path}: checksum mismatch (SHA-256 of the uncompressed content is {got}, "
                f"expected {want}); the file is corrupt or not the MNIST {name}. Delete it and "
                f"download it again."
            )
    return data


def _as_images(raw, normalize):
    x = raw.astype(np.float32)[:, None, :, :]
    x *= np.float32(1.0 / 255.0)
    if normalize:
        x -= np.float32(MNIST_MEAN)
        x *= np.float32(1.0 / MNIST_STD)
    return x


def _check_pair(images, labels, what):
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"{what}: images {images.shape} and labels {labels.shape} do not match "
                         f"(expected (N, H, W) and (N,))")


def load_mnist(data_dir: str | os.PathLike, normalize: bool = True, verify: bool = True,
               checksums: dict[str, str] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Load MNIST from the four IDX files in data_dir (each `.gz` or raw).

    Returns (train_x, train_y, test_x, test_y): float32 (N, 1, 28, 28) images and int64 labels
    (see the module docstring for the scaling). verify=True checks each file's SHA-256 against
    `checksums` (default: the canonical MNIST_SHA256). A missing file raises FileNotFoundError
    and a corrupt one ValueError, each naming the file's path.
    """
    checksums = MNIST_SHA256 if checksums is None else checksums
    arrays = []
    for name in MNIST_FILES:
        path = find_mnist_file(data_dir, name)
        arrays.append(parse_idx(_verified_bytes(path, name, checksums if verify else None), path))
    train_images, train_labels, test_images, test_labels = arrays
    _check_pair(train_images, train_labels, f"{data_dir} training set")
    _check_pair(test_images, test_labels, f"{data_dir} test set")
    return (_as_images(train_images, normalize), train_labels.astype(np.int64),
            _as_images(test_images, normalize), test_labels.astype(np.int64))


# ---------------------------------------------------------------- download

def _progress(total, desc, enabled):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is in the 'demo' extra; without it, no bar
        return None
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, leave=False)


def _fetch(url, dest_dir, name, want, timeout, progress):
    """Download url into a temp file in dest_dir, verify it, and move it to name.gz."""
    final = os.path.join(dest_dir, name + ".gz")
    with urllib.request.urlopen(url, timeout=timeout) as response:
        length = response.headers.get("Content-Length")
        bar = _progress(int(length) if length and length.isdigit() else None, name + ".gz", progress)
        try:
            with atomic_open(final, "wb") as out:
                while True:
                    chunk = response.read(1 << 16)
                    if not chunk:
                        break
                    out.write(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
                out.flush()
                # verify before the temp file is moved into place
                _verified_bytes(out.name, name, {name: want} if want else None)
        finally:
            if bar is not None:
                bar.close()
    return final


def download_mnist(data_dir: str | os.PathLike, mirrors: Iterable[str] = MNIST_MIRRORS,
                   checksums: dict[str, str] | None = None, timeout: float = 60, progress: bool = True,
                   force: bool = False) -> list[str]:
    """Download the four MNIST .gz files into data_dir (created if needed); returns their paths.

    Files already present with the right checksum are kept (force=True downloads anyway). Each
    file is tried on every mirror in turn; a download is written to a temp file in data_dir,
    verified against `checksums` (default MNIST_SHA256: name -> SHA-256 of the uncompressed
    content), and only then moved into place with os.replace, so an interrupted or corrupt
    download never leaves a partial file under the final name. Raises OSError naming the file
    and every mirror's error when no mirror delivers a valid copy.
    """
    checksums = MNIST_SHA256 if checksums is None else checksums
    if isinstance(mirrors, str):
        mirrors = (mirrors,)
    if not mirrors:
        raise ValueError("mirrors must name at least one base URL")
    os.makedirs(data_dir, exist_ok=True)
    paths = []
    for name in MNIST_FILES:
        if not force:
            try:
                path = find_mnist_file(data_dir, name)
                _verified_bytes(path, name, checksums)
                paths.append(path)
                continue
            except (FileNotFoundError, ValueError):
                pass
        errors = []
        for base in mirrors:
            url = base if base.endswith("/") else base + "/"
            url += name + ".gz"
            try:
                paths.append(_fetch(url, data_dir, name, checksums.get(name), timeout, progress))
                break
            except (OSError, ValueError, http.client.HTTPException) as e:  # URLError is an OSError
                errors.append(f"{url}: {e}")
        else:
            raise OSError(f"could not download {name}.gz into {data_dir}:\n  " + "\n  ".join(errors))
    return paths


# ---------------------------------------------------------------- embedded subset

DIGITS_FILE = "digits.npz"


def load_digits(normalize: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The MNIST subset shipped in numbanorm/data (see its README): 10,000 training and 2,000
    test images, 1,000 and 200 per digit. Same return format as load_mnist.
    """
    ref = resources.files("numbanorm").joinpath("data", DIGITS_FILE)
    with ref.open("rb") as f, np.load(f) as z:
        arrays = {k: z[k] for k in ("train_images", "train_labels", "test_images", "test_labels")}
    _check_pair(arrays["train_images"], arrays["train_labels"], "embedded digits training set")
    _check_pair(arrays["test_images"], arrays["test_labels"], "embedded digits test set")
    return (_as_images(arrays["train_images"], normalize), arrays["train_labels"].astype(np.int64),
            _as_images(arrays["test_images"], normalize), arrays["test_labels"].astype(np.int64))


# ---------------------------------------------------------------- CIFAR-10

CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch.bin"
CIFAR10_RECORD = 1 + 3 * 32 * 32  # one label byte, then 1024 red, 1024 green, 1024 blue bytes
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def read_cifar10_batch(path):
    """One CIFAR-10 binary file: (uint8 images (N, 3, 32, 32), int64 labels (N,)).

    The file is N records of CIFAR10_RECORD bytes; a size that is not a positive multiple of
    it (a truncated or foreign file), or a label above 9, raises ValueError naming the file.
    """
    with open(path, "rb") as f:
        data = f.read()
    if len(data) == 0 or len(data) % CIFAR10_RECORD:
        raise ValueError(
            f"{path}: not a CIFAR-10 binary batch: {len(data)} bytes is not a positive multiple of "
            f"the {CIFAR10_RECORD}-byte record (1 label byte + 3072 pixel bytes); the file is "
            f"truncated or not from the binary version (cifar-10-binary.tar.gz)")
    records = np.frombuffer(data, np.uint8).reshape(-1, CIFAR10_RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise ValueError(f"{path}: label {int(labels.max())} out of range 0-9; not a CIFAR-10 batch")
    return records[:, 1:].reshape(-1, 3, 32, 32), labels


def load_cifar10(data_dir, normalize=True):
    """Load the CIFAR-10 binary version from data_dir (data_batch_1.bin ... data_batch_5.bin,
    test_batch.bin, as unpacked from cifar-10-binary.tar.gz, or its cifar-10-batches-bin folder).

    Returns (train_x, train_y, test_x, test_y): float32 (N, 3, 32, 32) images and int64 labels
    0-9 (CIFAR10_CLASSES). Pixels are scaled to [0, 1] and then (normalize=True) standardized
    per channel with the training set's mean and std. A missing file raises
    FileNotFoundError and a truncated or wrong-size one ValueError, each naming the file.
    """
    nested = os.path.join(data_dir, "cifar-10-batches-bin")
    if not os.path.isfile(os.path.join(data_dir, CIFAR10_TEST_FILE)) and os.path.isdir(nested):
        data_dir = nested
    parts = []
    for name in CIFAR10_TRAIN_FILES + (CIFAR10_TEST_FILE,):
        path = os.path.join(data_dir, name)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"CIFAR-10 file missing: {path} (the binary version: unpack cifar-10-binary.tar.gz "
                f"from https://www.cs.toronto.edu/~kriz/cifar.html into {data_dir})")
        parts.append(read_cifar10_batch(path))
    train_x = np.concatenate([p[0] for p in parts[:-1]]).astype(np.float32)
    train_y = np.concatenate([p[1] for p in parts[:-1]])
    test_x, test_y = parts[-1][0].astype(np.float32), parts[-1][1]
    train_x *= np.float32(1.0 / 255.0)
    test_x *= np.float32(1.0 / 255.0)
    if normalize:
        mean = train_x.mean(axis=(0, 2, 3), dtype=np.float64).astype(np.float32)[None, :, None, None]
        std = train_x.std(axis=(0, 2, 3), dtype=np.float64).astype(np.float32)[None, :, None, None]
        std = np.maximum(std, np.float32(1e-6))  # a constant channel (tiny test files) stays finite
        for x in (train_x, test_x):
            x -= mean
            x /= std
    return train_x, train_y, test_x, test_y


__all__ = ["load_mnist", "load_cifar10", "read_cifar10_batch", "CIFAR10_CLASSES", "download_mnist", "load_digits", "read_idx", "parse_idx",
           "MNIST_SHA256", "MNIST_MIRRORS", "MNIST_MEAN", "MNIST_STD"]

"""numbanorm.datasets: IDX parsing, checksums, error messages, download, the embedded digits.

Every MNIST-format file used here is made by the test itself (small random IDX files); the
real MNIST is never read (a user's machine has no copy of it).
"""
import functools
import gzip
import hashlib
import http.server
import importlib.util
import os
import threading

import numpy as np
import pytest

from numbanorm import datasets
from numbanorm._fileio import atomic_open

NAMES = datasets.MNIST_FILES
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(np.int16): 0x0B,
          np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D, np.dtype(np.float64): 0x0E}


def idx_bytes(a):
    a = np.asarray(a)
    header = bytes([0, 0, _CODES[a.dtype], a.ndim]) + np.array(a.shape, ">u4").tobytes()
    return header + a.astype(a.dtype.newbyteorder(">")).tobytes()


def write_fake_mnist(directory, n_train=40, n_test=20, gz=True, seed=0):
    """Small IDX files under MNIST's names; returns (arrays, checksums of their content)."""
    rng = np.random.default_rng(seed)
    arrays = {
        NAMES[0]: rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        NAMES[1]: (np.arange(n_train) % 10).astype(np.uint8),
        NAMES[2]: rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        NAMES[3]: rng.permutation(np.arange(n_test) % 10).astype(np.uint8),
    }
    os.makedirs(directory, exist_ok=True)
    sums = {}
    for name, a in arrays.items():
        data = idx_bytes(a)
        sums[name] = hashlib.sha256(data).hexdigest()
        if gz:
            with gzip.open(os.path.join(directory, name + ".gz"), "wb") as f:
                f.write(data)
        else:
            with open(os.path.join(directory, name), "wb") as f:
                f.write(data)
    return arrays, sums


# ---------------------------------------------------------------- IDX parsing

@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_parse_idx_round_trip(dtype):
    a = (np.arange(2 * 3 * 5) - 7).reshape(2, 3, 5).astype(dtype)
    out = datasets.parse_idx(idx_bytes(a))
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, a)


def test_parse_idx_rejects_bad_magic_and_size():
    good = idx_bytes(np.zeros((3, 4), np.uint8))
    with pytest.raises(ValueError, match="not an IDX file"):
        datasets.parse_idx(b"\x01" + good[1:], "f.idx")
    with pytest.raises(ValueError, match="f.idx: IDX size mismatch"):
        datasets.parse_idx(good[:-1], "f.idx")
    with pytest.raises(ValueError, match="unknown IDX type code 0x07"):
        datasets.parse_idx(good[:2] + b"\x07" + good[3:], "f.idx")


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_load_mnist_gz_and_raw(tmp_path, gz):
    arrays, sums = write_fake_mnist(tmp_path, gz=gz)
    train_x, train_y, test_x, test_y = datasets.load_mnist(tmp_path, checksums=sums)
    assert train_x.shape == (40, 1, 28, 28) and test_x.shape == (20, 1, 28, 28)
    assert train_x.dtype == np.float32 and test_x.dtype == np.float32
    assert train_y.dtype == np.int64 and test_y.dtype == np.int64
    np.testing.assert_array_equal(train_y, arrays[NAMES[1]])
    np.testing.assert_array_equal(test_y, arrays[NAMES[3]])
    want = (arrays[NAMES[0]].astype(np.float64) / 255.0 - 0.1307) / 0.3081
    np.testing.assert_allclose(train_x[:, 0], want, rtol=1e-6, atol=1e-6)

    raw_x, _, raw_test_x, _ = datasets.load_mnist(tmp_path, normalize=False, checksums=sums)
    assert raw_x.min() >= 0.0 and raw_x.max() <= 1.0
    np.testing.assert_allclose(raw_test_x[:, 0], arrays[NAMES[2]] / 255.0, rtol=1e-6)


def test_gzip_detected_by_content_not_name(tmp_path):
    """A raw file is read as raw even if a gz of another name sits beside it; a .gz wins."""
    arrays, sums = write_fake_mnist(tmp_path, gz=False)
    other = np.zeros((40, 28, 28), np.uint8)
    with gzip.open(tmp_path / (NAMES[0] + ".gz"), "wb") as f:
        f.write(idx_bytes(other))
    sums = dict(sums, **{NAMES[0]: hashlib.sha256(idx_bytes(other)).hexdigest()})
    train_x, *_ = datasets.load_mnist(tmp_path, normalize=False, checksums=sums)
    assert float(train_x.max()) == 0.0  # the .gz was preferred


def test_checksum_mismatch_names_the_file(tmp_path):
    arrays, sums = write_fake_mnist(tmp_path)
    bad = arrays[NAMES[2]].copy()
    bad[3, 10, 10] ^= 1
    path = tmp_path / (NAMES[2] + ".gz")
    with gzip.open(path, "wb") as f:
        f.write(idx_bytes(bad))
    with pytest.raises(ValueError, match="checksum mismatch") as info:
        datasets.load_mnist(tmp_path, checksums=sums)
    assert str(path) in str(info.value)
    # verify=False loads it anyway
    assert datasets.load_mnist(tmp_path, verify=False)[2].shape == (20, 1, 28, 28)


def test_default_checksums_are_the_canonical_ones(tmp_path):
    """Our fake files are not MNIST: with the built-in table the first file is refused."""
    write_fake_mnist(tmp_path)
    with pytest.raises(ValueError, match="checksum mismatch") as info:
        datasets.load_mnist(tmp_path)
    assert str(tmp_path / (NAMES[0] + ".gz")) in str(info.value)
    assert datasets.MNIST_SHA256[NAMES[0]] in str(info.value)
    assert all(len(v) == 64 and int(v, 16) >= 0 for v in datasets.MNIST_SHA256.values())


def test_truncated_gzip_names_the_file(tmp_path):
    _, sums = write_fake_mnist(tmp_path)
    path = tmp_path / (NAMES[1] + ".gz")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError) as info:
        datasets.load_mnist(tmp_path, checksums=sums)
    assert str(path) in str(info.value)


def test_missing_file_names_the_path(tmp_path):
    write_fake_mnist(tmp_path)
    os.remove(tmp_path / (NAMES[3] + ".gz"))
    with pytest.raises(FileNotFoundError) as info:
        datasets.load_mnist(tmp_path, verify=False)
    assert str(tmp_path / (NAMES[3] + ".gz")) in str(info.value)
    assert "download_mnist" in str(info.value)


def test_mismatched_counts_refused(tmp_path):
    arrays, sums = write_fake_mnist(tmp_path)
    labels = arrays[NAMES[1]][:-1]
    with gzip.open(tmp_path / (NAMES[1] + ".gz"), "wb") as f:
        f.write(idx_bytes(labels))
    with pytest.raises(ValueError, match="do not match"):
        datasets.load_mnist(tmp_path, verify=False)


# ---------------------------------------------------------------- atomic writes

def test_atomic_open_failure_keeps_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_open(target, "w") as f:
            f.write("half of the new")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["out.json"]
    with atomic_open(target, "w") as f:
        f.write("new")
    assert target.read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == ["out.json"]


# ---------------------------------------------------------------- download

class _Handler(http.server.SimpleHTTPRequestHandler):
    truncate = set()  # file names served with a Content-Length larger than the body

    def do_GET(self):  # noqa: N802
        name = os.path.basename(self.path)
        if name in self.truncate:
            body = open(os.path.join(self.directory, name), "rb").read()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body) + 1000))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """A local HTTP server on 127.0.0.1 serving tmp_path/served; yields (base_url, dir)."""
    served = tmp_path / "served"
    served.mkdir()
    handler = type("H", (_Handler,), {"truncate": set()})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", served, handler
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_download_from_local_server(tmp_path, server):
    base, served, _ = server
    arrays, sums = write_fake_mnist(served)
    out = tmp_path / "mnist"
    # the first mirror answers 404 for everything; the second has the files
    paths = datasets.download_mnist(out, mirrors=[base + "nothing-here/", base], checksums=sums, progress=True)
    assert sorted(os.listdir(out)) == sorted(n + ".gz" for n in NAMES)
    assert [os.path.basename(p) for p in paths] == [n + ".gz" for n in NAMES]
    for name in NAMES:
        assert (out / (name + ".gz")).read_bytes() == (served / (name + ".gz")).read_bytes()
    train_x, train_y, _, _ = datasets.load_mnist(out, checksums=sums)
    np.testing.assert_array_equal(train_y, arrays[NAMES[1]])

    # present and valid: nothing is fetched again (the server no longer has the files)
    for name in NAMES:
        os.remove(served / (name + ".gz"))
    assert datasets.download_mnist(out, mirrors=[base], checksums=sums, progress=False) == paths


def test_download_corrupt_file_leaves_nothing(tmp_path, server):
    base, served, _ = server
    _, sums = write_fake_mnist(served)
    sums = dict(sums, **{NAMES[2]: "0" * 64})  # the server's test images do not match
    out = tmp_path / "mnist"
    with pytest.raises(OSError) as info:
        datasets.download_mnist(out, mirrors=[base], checksums=sums, progress=False)
    msg = str(info.value)
    assert NAMES[2] + ".gz" in msg and "checksum mismatch" in msg and base in msg
    # the two files before it arrived whole; no temp file and no partial test-images file
    assert sorted(os.listdir(out)) == sorted(n + ".gz" for n in NAMES[:2])


def test_download_interrupted_transfer_leaves_nothing(tmp_path, server):
    base, served, handler = server
    _, sums = write_fake_mnist(served)
    handler.truncate.add(NAMES[0] + ".gz")
    out = tmp_path / "mnist"
    with pytest.raises(OSError, match=NAMES[0]):
        datasets.download_mnist(out, mirrors=[base], checksums=sums, progress=False, timeout=10)
    assert os.listdir(out) == []


def test_download_replaces_a_corrupt_local_file(tmp_path, server):
    base, served, _ = server
    _, sums = write_fake_mnist(served)
    out = tmp_path / "mnist"
    out.mkdir()
    (out / (NAMES[1] + ".gz")).write_bytes(b"garbage")
    datasets.download_mnist(out, mirrors=[base], checksums=sums, progress=False)
    assert (out / (NAMES[1] + ".gz")).read_bytes() == (served / (NAMES[1] + ".gz")).read_bytes()


# ---------------------------------------------------------------- embedded digits

def test_load_digits_shapes_dtypes_balance():
    train_x, train_y, test_x, test_y = datasets.load_digits()
    assert train_x.shape == (10000, 1, 28, 28) and test_x.shape == (2000, 1, 28, 28)
    assert train_x.dtype == np.float32 and test_x.dtype == np.float32
    assert train_y.dtype == np.int64 and test_y.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(train_y, minlength=10), [1000] * 10)
    np.testing.assert_array_equal(np.bincount(test_y, minlength=10), [200] * 10)
    # standardized with MNIST's statistics: roughly zero mean, unit std on this subset too
    assert abs(float(train_x.mean())) < 0.05 and abs(float(train_x.std()) - 1.0) < 0.05
    raw = datasets.load_digits(normalize=False)[0]
    assert float(raw.min()) == 0.0 and float(raw.max()) == 1.0
    # the raw pixels are 8-bit values
    np.testing.assert_allclose(np.round(raw * 255) / 255, raw, atol=1e-6)


def test_digits_file_is_small_and_credited():
    data_dir = os.path.join(ROOT, "numbanorm", "data")
    assert os.path.getsize(os.path.join(data_dir, "digits.npz")) <= 5_000_000
    readme = open(os.path.join(data_dir, "README.md"), encoding="utf-8").read()
    for words in ("LeCun", "Cortes", "Burges", "CC BY-SA 3.0", "make_digits_subset.py"):
        assert words in readme


def _load_tool():
    spec = importlib.util.spec_from_file_location("make_digits_subset",
                                                  os.path.join(ROOT, "tools", "make_digits_subset.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_make_digits_subset_is_balanced_and_deterministic(tmp_path):
    tool = _load_tool()
    arrays, sums = write_fake_mnist(tmp_path / "src", n_train=60, n_test=30)
    out1, out2 = tmp_path / "a.npz", tmp_path / "b.npz"
    tool.make_subset(tmp_path / "src", out1, train_per_class=4, test_per_class=2, seed=3, checksums=sums)
    tool.make_subset(tmp_path / "src", out2, train_per_class=4, test_per_class=2, seed=3, checksums=sums)
    assert out1.read_bytes() == out2.read_bytes()
    with np.load(out1) as z:
        assert z["train_images"].dtype == np.uint8 and z["train_images"].shape == (40, 28, 28)
        np.testing.assert_array_equal(np.bincount(z["train_labels"], minlength=10), [4] * 10)
        np.testing.assert_array_equal(np.bincount(z["test_labels"], minlength=10), [2] * 10)
        idx = z["train_index"]
        assert np.all(np.diff(idx) > 0)  # original order kept
        np.testing.assert_array_equal(z["train_images"], arrays[NAMES[0]][idx])
        np.testing.assert_array_equal(z["test_labels"], arrays[NAMES[3]][z["test_index"]])
    with pytest.raises(ValueError, match="digit 0 has only 6 examples, 7 requested"):
        tool.make_subset(tmp_path / "src", tmp_path / "c.npz", train_per_class=7, test_per_class=4,
                         checksums=sums)
    assert not (tmp_path / "c.npz").exists()


# ---------------------------------------------------------------- CIFAR-10 (binary version)

def write_fake_cifar10(directory, per_file=6, seed=0):
    """The six CIFAR-10 .bin files with per_file random records each; returns (images, labels)
    of the training files and of the test file, as written."""
    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    written = {}
    for name in datasets.CIFAR10_TRAIN_FILES + (datasets.CIFAR10_TEST_FILE,):
        labels = rng.integers(0, 10, per_file, dtype=np.uint8)
        images = rng.integers(0, 256, (per_file, 3, 32, 32), dtype=np.uint8)
        records = np.concatenate([labels[:, None], images.reshape(per_file, -1)], axis=1)
        with open(os.path.join(directory, name), "wb") as f:
            f.write(records.tobytes())
        written[name] = (images, labels)
    train = [written[n] for n in datasets.CIFAR10_TRAIN_FILES]
    return ((np.concatenate([i for i, _ in train]), np.concatenate([l for _, l in train])),
            written[datasets.CIFAR10_TEST_FILE])


def test_load_cifar10_layout_and_per_channel_standardization(tmp_path):
    (train_u8, train_l), (test_u8, test_l) = write_fake_cifar10(tmp_path)
    train_x, train_y, test_x, test_y = datasets.load_cifar10(str(tmp_path))
    assert train_x.shape == (30, 3, 32, 32) and test_x.shape == (6, 3, 32, 32)
    assert train_x.dtype == test_x.dtype == np.float32
    assert train_y.dtype == test_y.dtype == np.int64
    np.testing.assert_array_equal(train_y, train_l)
    np.testing.assert_array_equal(test_y, test_l)
    # records are channel-major (1024 R, 1024 G, 1024 B bytes): pixel (c, h, w) is byte c*1024+h*32+w
    raw = datasets.load_cifar10(str(tmp_path), normalize=False)
    np.testing.assert_allclose(raw[0], train_u8 / 255.0, rtol=1e-6)
    np.testing.assert_allclose(raw[2], test_u8 / 255.0, rtol=1e-6)
    # standardized per channel with the training set's statistics, the test set with the same
    np.testing.assert_allclose(train_x.mean(axis=(0, 2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(train_x.std(axis=(0, 2, 3)), 1.0, atol=1e-5)
    mean = raw[0].mean(axis=(0, 2, 3), dtype=np.float64)[None, :, None, None]
    std = raw[0].std(axis=(0, 2, 3), dtype=np.float64)[None, :, None, None]
    np.testing.assert_allclose(test_x, (raw[2] - mean) / std, rtol=1e-5, atol=1e-5)


def test_load_cifar10_finds_the_unpacked_folder(tmp_path):
    write_fake_cifar10(tmp_path / "cifar-10-batches-bin")
    assert datasets.load_cifar10(str(tmp_path))[0].shape == (30, 3, 32, 32)


@pytest.mark.parametrize("size", [0, datasets.CIFAR10_RECORD - 1, 3 * datasets.CIFAR10_RECORD + 17])
def test_cifar10_wrong_size_file_names_the_file(tmp_path, size):
    write_fake_cifar10(tmp_path)
    bad = tmp_path / "data_batch_3.bin"
    bad.write_bytes(bad.read_bytes()[:size] if size <= bad.stat().st_size else bad.read_bytes() + b"\0" * 17)
    with pytest.raises(ValueError, match=r"data_batch_3\.bin.*not a positive multiple of the 3073-byte record"):
        datasets.load_cifar10(str(tmp_path))


def test_cifar10_bad_label_and_missing_file_name_the_file(tmp_path):
    write_fake_cifar10(tmp_path)
    path = tmp_path / "test_batch.bin"
    data = bytearray(path.read_bytes())
    data[datasets.CIFAR10_RECORD] = 10  # the second record's label byte
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"test_batch\.bin: label 10 out of range"):
        datasets.load_cifar10(str(tmp_path))
    os.remove(tmp_path / "data_batch_5.bin")
    with pytest.raises(FileNotFoundError, match=r"data_batch_5\.bin"):
        datasets.load_cifar10(str(tmp_path))

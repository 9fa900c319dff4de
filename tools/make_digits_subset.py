"""Make numbanorm/data/digits.npz, the MNIST subset shipped inside the package.

    python tools/make_digits_subset.py DIR_WITH_MNIST [--out numbanorm/data/digits.npz]
        [--train-per-class 1000] [--test-per-class 200] [--seed 0]

DIR_WITH_MNIST holds the four standard IDX files (.gz or raw); their checksums are verified.
Selection: for each digit, a seeded permutation (numpy default_rng(seed)) of that digit's
indices, the first k of them kept; the kept indices are then sorted, so the subset keeps
MNIST's original order. Images are stored as uint8 (N, 28, 28), labels as uint8, plus the
source indices (train_index, test_index) into the original files, in one compressed .npz.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from numbanorm._fileio import atomic_open  # noqa: E402
from numbanorm.datasets import MNIST_FILES, MNIST_SHA256, _verified_bytes, find_mnist_file, parse_idx  # noqa: E402


def balanced_indices(labels, per_class, rng):
    """Sorted indices with exactly per_class of each label 0-9 (error if a class is short)."""
    keep = []
    for digit in range(10):
        idx = np.flatnonzero(labels == digit)
        if len(idx) < per_class:
            raise ValueError(f"digit {digit} has only {len(idx)} examples, {per_class} requested")
        keep.append(rng.permutation(idx)[:per_class])
    return np.sort(np.concatenate(keep))


def make_subset(data_dir, out, train_per_class=1000, test_per_class=200, seed=0, checksums=None):
    checksums = MNIST_SHA256 if checksums is None else checksums
    arrays = []
    for name in MNIST_FILES:
        path = find_mnist_file(data_dir, name)
        arrays.append(parse_idx(_verified_bytes(path, name, checksums), path))
    train_images, train_labels, test_images, test_labels = arrays
    rng = np.random.default_rng(seed)
    train_index = balanced_indices(train_labels, train_per_class, rng)
    test_index = balanced_indices(test_labels, test_per_class, rng)
    with atomic_open(out, "wb") as f:
        np.savez_compressed(
            f,
            train_images=train_images[train_index].astype(np.uint8),
            train_labels=train_labels[train_index].astype(np.uint8),
            test_images=test_images[test_index].astype(np.uint8),
            test_labels=test_labels[test_index].astype(np.uint8),
            train_index=train_index.astype(np.int32),
            test_index=test_index.astype(np.int32),
        )
    return train_index, test_index


def main(argv=None):
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data_dir", help="directory with the four MNIST IDX files (.gz or raw)")
    p.add_argument("--out", default=os.path.normpath(os.path.join(here, "..", "numbanorm", "data", "digits.npz")))
    p.add_argument("--train-per-class", type=int, default=1000)
    p.add_argument("--test-per-class", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    train_index, test_index = make_subset(a.data_dir, a.out, a.train_per_class, a.test_per_class, a.seed)
    size = os.path.getsize(a.out)
    print(f"wrote {a.out}: {len(train_index)} train + {len(test_index)} test images, {size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

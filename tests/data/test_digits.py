import gzip

import numpy as np
import pytest

from dibigan_tf.data.base import DataError
from dibigan_tf.data.digits import (balanced_holdout_split, load_digits_csv,
                                    load_embedded_digits)


def test_embedded_digits_are_the_real_mnist_5k_padded():
    data = load_embedded_digits()
    assert data.images.shape == (5000, 32, 32, 1) and data.images.dtype == np.uint8
    assert np.bincount(data.labels).tolist() == [500] * 10
    # 28x28 digits centred: the 2-pixel border is empty, the centre is not
    assert data.images[:, :2].max() == 0 and data.images[:, -2:].max() == 0
    assert data.images[:, :, :2].max() == 0 and data.images[:, :, -2:].max() == 0
    assert data.images.max() == 255
    assert data.images[:, 2:30, 2:30].mean() > 20


def _write_csv(path, rows):
    with gzip.open(path, "wt") as handle:
        for row in rows:
            handle.write(",".join(str(v) for v in row) + "\n")


def test_csv_loader_pads_and_keeps_labels(tmp_path):
    rows = [[0] * 784 + [3], [255] + [0] * 783 + [7]]
    path = str(tmp_path / "d.csv.gz")
    _write_csv(path, rows)
    data = load_digits_csv(path, pad_to=32)
    assert data.labels.tolist() == [3, 7]
    assert data.images[1, 2, 2, 0] == 255 and data.images[1].sum() == 255


@pytest.mark.parametrize("row, message", [
    ([0] * 783 + [3], "785 columns"),
    ([300] + [0] * 783 + [3], "outside the integers 0..255"),
    ([0] * 784 + [12], "not a digit"),
])
def test_csv_loader_refuses_bad_rows(tmp_path, row, message):
    path = str(tmp_path / "bad.csv.gz")
    _write_csv(path, [[0] * 784 + [1], row] if len(row) == 785 else [row])
    with pytest.raises(DataError, match=message):
        load_digits_csv(path)


def test_balanced_holdout_split_is_fixed_disjoint_and_balanced():
    labels = np.repeat(np.arange(10), 50)
    train, held = balanced_holdout_split(labels, 10, seed=0)
    assert len(held) == 100 and len(train) == 400
    assert not set(train) & set(held)
    assert np.bincount(labels[held]).tolist() == [10] * 10
    again = balanced_holdout_split(labels, 10, seed=0)
    assert np.array_equal(again[1], held)
    assert not np.array_equal(balanced_holdout_split(labels, 10, seed=1)[1], held)
    with pytest.raises(DataError, match="cannot hold out"):
        balanced_holdout_split(labels, 50, seed=0)

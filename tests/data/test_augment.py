import numpy as np
import pytest

from dibigan_tf.data.augment import affine_copies, affine_image, concatenate
from dibigan_tf.data.base import DataError, ImageSet
from dibigan_tf.data.digits import load_embedded_digits


def _square_image():
    image = np.zeros((32, 32, 1), np.uint8)
    image[12:20, 10:14, 0] = 255
    return image


def test_identity_transform_keeps_the_image():
    image = _square_image()
    np.testing.assert_array_equal(affine_image(image, 0.0, 1.0, 0.0, 0.0, 0.0), image)


def test_whole_pixel_shift_moves_the_image():
    image = _square_image()
    moved = affine_image(image, 0.0, 1.0, 0.0, 3.0, -2.0)
    np.testing.assert_array_equal(moved[10:18, 13:17, 0], 255)
    assert moved.sum() == image.sum()


def test_quarter_turn_about_the_centre():
    image = np.zeros((31, 31, 1), np.uint8)     # odd size: the centre is a pixel centre
    image[15, 20, 0] = 255                        # 5 pixels right of the centre
    turned = affine_image(image, np.pi / 2, 1.0, 0.0, 0.0, 0.0)
    # y grows downwards: a +90 degree turn of (dx, dy) = (5, 0) gives (0, 5)
    assert turned[20, 15, 0] >= 250 and turned.sum() <= 256


def test_copies_are_fixed_by_the_seed_and_keep_the_labels():
    data = load_embedded_digits().subset(np.arange(0, 5000, 250))
    first = affine_copies(data, 2, seed=3)
    again = affine_copies(data, 2, seed=3)
    other = affine_copies(data, 2, seed=4)
    assert first.images.shape == (40, 32, 32, 1) and first.images.dtype == np.uint8
    np.testing.assert_array_equal(first.images, again.images)
    assert not np.array_equal(first.images, other.images)
    np.testing.assert_array_equal(first.labels, np.tile(data.labels, 2))
    # new images (not the sources) that still hold about as much ink as their sources
    assert all(not np.array_equal(a, b) for a, b in zip(first.images, np.tile(data.images,
                                                                             (2, 1, 1, 1))))
    ratio = first.images.reshape(40, -1).sum(1) / np.tile(data.images.reshape(20, -1).sum(1), 2)
    assert np.all((ratio > 0.7) & (ratio < 1.3))
    assert len(affine_copies(data, 0, seed=3)) == 0


def test_bad_copies_and_mismatched_sets_are_refused():
    data = load_embedded_digits().subset(np.arange(4))
    with pytest.raises(DataError, match=">= 0"):
        affine_copies(data, -1, seed=0)
    rgb = ImageSet(np.zeros((2, 32, 32, 3), np.uint8), np.zeros(2, np.int64), data.class_names)
    with pytest.raises(DataError, match="different classes or image shapes"):
        concatenate(data, rgb)
    joined = concatenate(data, data)
    assert len(joined) == 8 and joined.labels.tolist() == data.labels.tolist() * 2


def test_mirror_and_mix_change_only_what_they_name():
    data = load_embedded_digits().subset(np.arange(0, 5000, 250))
    plain = affine_copies(data, 2, seed=3)
    off = affine_copies(data, 2, seed=3, mirror_chance=0.0, mix_chance=0.0)
    np.testing.assert_array_equal(off.images, plain.images)
    # mirror_chance=1: every copy is the plain copy mirrored left-right, the labels unchanged
    mirrored = affine_copies(data, 2, seed=3, mirror_chance=1.0)
    np.testing.assert_array_equal(mirrored.images, plain.images[:, :, ::-1])
    np.testing.assert_array_equal(mirrored.labels, plain.labels)
    half = affine_copies(data, 2, seed=3, mirror_chance=0.5).images
    flipped = [np.array_equal(h, p[:, ::-1]) and not np.array_equal(h, p)
               for h, p in zip(half, plain.images)]
    assert 0 < sum(flipped) < len(half)
    # mix_chance=1: every copy lies between itself (weight > 0.5) and another copy, pixel by pixel
    mixed = affine_copies(data, 2, seed=3, mix_chance=1.0)
    np.testing.assert_array_equal(mixed.labels, plain.labels)
    own = plain.images.astype(float)
    assert not np.array_equal(mixed.images, plain.images)
    closer = np.abs(mixed.images - own).reshape(40, -1).sum(1)
    nearest_other = np.array([min(np.abs(mixed.images[i].astype(float) - own[j]).sum()
                                  for j in range(40) if j != i) for i in range(40)])
    assert np.all(closer <= nearest_other)


def test_mirror_and_mix_chances_outside_0_1_are_refused():
    data = load_embedded_digits().subset(np.arange(4))
    with pytest.raises(DataError, match="mirror chance"):
        affine_copies(data, 1, seed=0, mirror_chance=1.5)
    with pytest.raises(DataError, match="mix chance"):
        affine_copies(data, 1, seed=0, mix_chance=-0.1)

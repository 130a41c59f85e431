"""dlib's ResNet face descriptor (128-D) as a blackbox matcher F.

The network and the landmark model come from the PyPI packages `dlib-bin` (a prebuilt dlib) and
`face_recognition_models` (the `.dat` files); nothing is downloaded. dlib computes its descriptor
on a 150x150 "face chip": the face rotated upright and scaled by a similarity transform of its
5 landmarks (`dlib.get_face_chip`, padding 0.25). The adapter takes face images in one of two
forms, chosen by `chip`:

- ``"aligned"`` (default): the images already are dlib face chips (what
  `dibigan_tf.data.align.DlibAligner` writes, at any size); they are resized to 150x150 when
  needed and described as they are. This is how the pipeline uses dlib: the same aligned crop
  layout for real images and for G's reconstructions.
- ``"landmarks"``: dlib's own chip step is run on every image: the 5-point shape predictor on the
  whole image (a face crop, upscaled to at least 150 pixels), then `get_face_chip(150, 0.25)`.

dlib offers no gradients, so this matcher is always a blackbox (`differentiable` False).
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from dibigan_tf.data.base import file_sha1
from dibigan_tf.data.dlib_models import CHIP_PADDING, dlib_models
from dibigan_tf.matchers.base import Matcher, MatcherError

CHIP_SIZE = 150
CHIP_MODES = ("aligned", "landmarks")




class DlibMatcher(Matcher):
    name = "dlib"
    differentiable = False

    def __init__(self, image_size: int = CHIP_SIZE, chip: str = "aligned", num_jitters: int = 0,
                 batch_size: int = 64):
        if chip not in CHIP_MODES:
            raise MatcherError(f"dlib matcher: chip must be one of {CHIP_MODES}, got {chip!r}")
        if image_size < 16:
            raise MatcherError(f"dlib matcher: image_size {image_size} is too small for a face")
        dlib, models = dlib_models()
        self._dlib = dlib
        self._descriptor_path = models.face_recognition_model_location()
        self._net = dlib.face_recognition_model_v1(self._descriptor_path)
        self._shape = (dlib.shape_predictor(models.pose_predictor_five_point_model_location())
                       if chip == "landmarks" else None)
        self.image_size = int(image_size)
        self.chip = chip
        self.num_jitters = int(num_jitters)
        self.batch_size = int(batch_size)

    @property
    def store_key(self) -> str:
        return (f"dlib-{file_sha1(self._descriptor_path)[:8]}-{self.chip}-{self.image_size}"
                f"-j{self.num_jitters}")

    @property
    def input_shape(self):
        return (self.image_size, self.image_size, 3)

    @property
    def embedding_dim(self) -> int:
        return 128

    def chips(self, images: np.ndarray) -> list:
        """The 150x150 face chips dlib describes, one per image."""
        out = []
        for image in images:
            if self.chip == "aligned":
                out.append(_resize(image, CHIP_SIZE))
                continue
            size = max(CHIP_SIZE, image.shape[0])
            image = _resize(image, size)
            rect = self._dlib.rectangle(0, 0, size - 1, size - 1)
            shape = self._shape(image, rect)
            out.append(self._dlib.get_face_chip(image, shape, size=CHIP_SIZE,
                                                padding=CHIP_PADDING))
        return out

    def _embed(self, images):
        rows = []
        for start in range(0, len(images), self.batch_size):
            chips = [np.ascontiguousarray(c) for c in self.chips(images[start:start + self.batch_size])]
            vectors = self._net.compute_face_descriptor(chips, num_jitters=self.num_jitters)
            rows.extend(np.asarray(v, dtype=np.float32) for v in vectors)
        return np.stack(rows)


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[0] == size and image.shape[1] == size:
        return np.ascontiguousarray(image)
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC))

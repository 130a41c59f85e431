"""Five-point similarity alignment onto the ArcFace 112x112 template (insightface's layout).

`estimate_similarity` is the least-squares similarity (rotation, uniform scale, translation; no
reflection) of Umeyama (1991). `warp_affine` warps with PIL. Coordinates are pixel indices, pixel
(x, y)'s centre at (x, y), as in OpenCV's `warpAffine` that insightface aligns with.

`data.align.ArcFaceAligner` uses them: it detects faces like `DlibAligner`, reduces dlib's 68
landmarks to ArcFace's five points (`arcface_points`) and warps their similarity onto the template.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

#: left eye, right eye, nose tip, left mouth corner, right mouth corner (image left/right) in a
#: 112x112 crop; scaled by size / 112 for other sizes.
ARCFACE_TEMPLATE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                                 [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)


def arcface_template(size: int = 112) -> np.ndarray:
    """The five template points [5, 2] (x, y) for a size x size crop."""
    return ARCFACE_TEMPLATE_112 * (float(size) / 112.0)


def estimate_similarity(src, dst) -> np.ndarray:
    """2x3 matrix M of the similarity (s R, t; det R = +1) minimising sum |s R src + t - dst|^2.

    src, dst: [k, 2] corresponding points (x, y), k >= 2, src not all at one point."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.ndim != 2 or src.shape[1] != 2 or src.shape != dst.shape or len(src) < 2:
        raise ValueError(f"need two [k, 2] point arrays with k >= 2, got {src.shape} and "
                         f"{dst.shape}")
    mean_src, mean_dst = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - mean_src, dst - mean_dst
    var_src = (src_c ** 2).sum() / len(src)
    if var_src <= 1e-12:
        raise ValueError("the source points coincide: no similarity is defined")
    cov = dst_c.T @ src_c / len(src)
    u, sigma, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:   # the best fit would reflect: forbid it
        d[1] = -1.0
    rotation = u @ np.diag(d) @ vt
    scale = float((sigma * d).sum() / var_src)
    translation = mean_dst - scale * rotation @ mean_src
    return np.hstack([scale * rotation, translation[:, None]])


def apply_affine(matrix, points) -> np.ndarray:
    """Points [k, 2] mapped by a 2x3 matrix."""
    points = np.asarray(points, dtype=np.float64)
    return points @ np.asarray(matrix, dtype=np.float64)[:, :2].T + np.asarray(matrix)[:, 2]


def warp_affine(image: np.ndarray, matrix, size: int) -> np.ndarray:
    """uint8 [size, size, c]: `image` (uint8 [h, w, c] or [h, w]) warped by `matrix` (2x3, source
    pixel -> destination pixel), bilinear, black outside the source."""
    image = np.asarray(image)
    squeeze = image.ndim == 2
    if squeeze:
        image = image[..., None]
    forward = np.vstack([np.asarray(matrix, dtype=np.float64), [0.0, 0.0, 1.0]])
    # PIL samples at pixel centres (x + 0.5, y + 0.5); our points put the centres at integers
    shift = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    unshift = np.array([[1.0, 0.0, -0.5], [0.0, 1.0, -0.5], [0.0, 0.0, 1.0]])
    inverse = np.linalg.inv(shift @ forward @ unshift)   # destination -> source, PIL's convention
    coefficients = tuple(float(v) for v in inverse[:2].ravel())
    size = int(size)
    out = np.empty((size, size, image.shape[2]), np.uint8)
    for c in range(image.shape[2]):
        channel = Image.fromarray(np.ascontiguousarray(image[..., c], dtype=np.uint8), "L")
        out[..., c] = np.asarray(channel.transform((size, size), Image.AFFINE, coefficients,
                                                   resample=Image.BILINEAR, fillcolor=0))
    return out[..., 0] if squeeze else out


def arcface_points(shape68) -> np.ndarray:
    """ArcFace's five points [5, 2] from 68 landmarks ([68, 2] or a dlib full_object_detection):
    eye centres (means of 36-41 and 42-47), nose tip (30), mouth corners (48, 54)."""
    if hasattr(shape68, "part"):
        shape68 = np.array([[shape68.part(i).x, shape68.part(i).y]
                            for i in range(shape68.num_parts)], dtype=np.float64)
    points = np.asarray(shape68, dtype=np.float64)
    if points.shape != (68, 2):
        raise ValueError(f"need 68 landmarks, got {points.shape}")
    return np.stack([points[36:42].mean(axis=0), points[42:48].mean(axis=0), points[30],
                     points[48], points[54]])

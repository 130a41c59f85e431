"""Figures a person would rather look at than read: 2-D projections of features (the paper's
Figure 3) and the class-separation statistic that goes with them."""
from __future__ import annotations

import numpy as np


def pca_2d(points: np.ndarray) -> np.ndarray:
    """Projects rows onto their first two principal components (numpy SVD)."""
    x = np.asarray(points, np.float64).reshape(len(points), -1)
    x = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return x @ vt[:2].T


def intra_inter_ratio(points: np.ndarray, labels: np.ndarray) -> float:
    """Mean Euclidean distance between points of the same class over the mean distance between
    points of different classes (lower: tighter, better separated classes)."""
    x = np.asarray(points, np.float64).reshape(len(points), -1)
    labels = np.asarray(labels)
    sq = np.sum(x * x, axis=1)
    d = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0))
    same = labels[:, None] == labels[None, :]
    off = ~np.eye(len(x), dtype=bool)
    if not (same & off).any() or not (~same).any():
        raise ValueError("need at least two classes and two points in some class")
    return float(d[same & off].mean() / d[~same].mean())


def scatter_panels(panels, path, columns=2, point_size=4):
    """Writes a PNG of 2-D scatter plots, one per (title, points_2d, labels) panel.

    Needs matplotlib (`pip install -e '.[figures]'`); a clear error otherwise.
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("figures need matplotlib: pip install -e '.[figures]'") from None
    rows = int(np.ceil(len(panels) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 4.5 * rows), squeeze=False)
    for ax, (title, pts, labels) in zip(axes.flat, panels):
        sc = ax.scatter(pts[:, 0], pts[:, 1], c=labels, cmap="tab10", s=point_size)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.colorbar(sc, ax=axes.ravel().tolist(), shrink=0.6)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _row(images, width):
    """One row of `width` cells (uint8 [h, w, c] each), blank cells black."""
    h, w, c = images[0].shape if len(images) else (1, 1, 1)
    cells = list(images) + [np.zeros((h, w, c), np.uint8)] * (width - len(images))
    return np.concatenate(cells[:width], axis=1)


def _grid(rows):
    return np.concatenate(rows, axis=0)


def figure4(inputs, recons, labels, others=None, count=8):
    """The paper's Figure 4 as columns, one row per held-out image: input | reconstruction
    (blackbox) | whitebox reconstruction (when `others` has one: a dict name -> images) | another
    real image of the same person (black when the person has no other image)."""
    inputs, recons, labels = np.asarray(inputs), np.asarray(recons), np.asarray(labels)
    rows, shown = [], set()
    for i in range(len(inputs)):
        if labels[i] in shown:
            continue
        shown.add(labels[i])
        mates = np.flatnonzero((labels == labels[i]) & (np.arange(len(labels)) != i))
        cells = [inputs[i], recons[i]]
        for images in (others or {}).values():
            cells.append(np.asarray(images)[i])
        cells.append(inputs[mates[0]] if mates.size else np.zeros_like(inputs[i]))
        rows.append(_row(cells, len(cells)))
        if len(rows) == count:
            break
    return _grid(rows)


def figure6(inputs, recons, labels, people=4, per_person=6):
    """The paper's Figure 6: for people with several images, a row of their real images and
    below it the reconstruction of each."""
    inputs, recons, labels = np.asarray(inputs), np.asarray(recons), np.asarray(labels)
    values, counts = np.unique(labels, return_counts=True)
    chosen = values[np.argsort(-counts, kind="stable")][:people]
    rows = []
    for label in chosen:
        members = np.flatnonzero(labels == label)[:per_person]
        rows.append(_row(inputs[members], per_person))
        rows.append(_row(recons[members], per_person))
    return _grid(rows)


def figure7(generate, features, num_v=8, seed=0):
    """The paper's Figure 7: each row one feature vector, each column another v (the same v in a
    column); `generate(features, v)` -> uint8 images. Rows that change across a row only in
    "background" factors show that f carries the identity and v the rest."""
    features = np.asarray(features, np.float32)
    rng = np.random.default_rng(seed)
    latent = generate.latent_dim
    vs = rng.standard_normal((num_v, latent)).astype(np.float32)
    rows = []
    for f in features:
        rows.append(_row(generate(np.repeat(f[None], num_v, axis=0), vs), num_v))
    return _grid(rows)

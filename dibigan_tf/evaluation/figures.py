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

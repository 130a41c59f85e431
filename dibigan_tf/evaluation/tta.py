"""Flip test-time augmentation for verification, as insightface's "Accuracy-Flip".

insightface's `verification.test` embeds every image and its horizontal mirror and scores the
*sum* of the two raw embeddings (normalised afterwards, as every distance here normalises). A face
matcher trained with mirrored faces gives an embedding that is steadier against pose and
alignment; published LFW / CFP-FP / AgeDB accuracies are usually this number.
"""
from __future__ import annotations

import numpy as np

from dibigan_tf.data.augment import mirror  # noqa: F401  (the one mirror: also the copies')


def embed_with_flip(embed, images, flip_tta: bool) -> np.ndarray:
    """embed(images), or with `flip_tta` embed(images) + embed(mirror(images)) (float64).

    embed: images [n, h, w, c] -> embeddings [n, d] (e.g. a feature store's `features`)."""
    plain = np.asarray(embed(images), np.float64)
    if not flip_tta:
        return plain
    return plain + np.asarray(embed(mirror(images)), np.float64)

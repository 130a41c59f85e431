"""Face evaluation of a reconstruction attack (paper section 4): attack success as TAR at fixed FAR
for type-I and type-II attacks, MS-SSIM diversity and the Inception Score.

- **Type-I**: the reconstruction of image x_i against x_i itself; **type-II**: the reconstruction
  of x_a against another image x_b of the same person (the positive pairs). Both are accepted when
  F's distance is below the threshold at which F falsely accepts a share FAR of impostor pairs of
  *real* images (the matcher's own operating point), and TAR is the share accepted.
- **MS-SSIM** between images of random pairs of different people, for reconstructions and for the
  real images (the paper's diversity measure: lower is more diverse).
- **Inception Score** exp(E_x KL(p(y|x) || p(y))) from an ImageNet InceptionV3 whose weights are
  a local file (no download is ever attempted).
"""
from __future__ import annotations

import os

import numpy as np

from dibigan_tf.evaluation import verification as ver

FARS = (1e-3, 1e-4)


def threshold_at_far(impostor_distances, far: float) -> float:
    """The largest distance threshold that accepts at most a share `far` of impostor pairs
    (accept: distance <= threshold)."""
    d = np.sort(np.asarray(impostor_distances, np.float64))
    if d.size == 0:
        raise ValueError("no impostor pairs to set a threshold")
    allowed = int(np.floor(far * d.size))      # impostors we may accept
    if allowed == 0:
        return float(np.nextafter(d[0], -np.inf))
    if allowed >= d.size:
        return float(d[-1])
    # accept the `allowed` smallest: any threshold in [d[allowed-1], d[allowed]) does it
    return float(np.nextafter(d[allowed], -np.inf)) if d[allowed] > d[allowed - 1] \
        else float(np.nextafter(d[allowed - 1], -np.inf))


def attack_success(real_features, recon_features, idx_a, idx_b, is_same, fars=FARS) -> dict:
    """Type-I and type-II TAR at each FAR.

    real_features[i] = F(x_i); recon_features[i] = F(G(F(x_i))); (idx_a, idx_b, is_same) the
    verification pairs over the same images. The threshold comes from the real negative pairs.
    """
    real = ver.l2_normalize(np.asarray(real_features, np.float64))
    recon = ver.l2_normalize(np.asarray(recon_features, np.float64))
    idx_a, idx_b = np.asarray(idx_a), np.asarray(idx_b)
    same = np.asarray(is_same, bool)
    impostor = ver.pair_distances(real[idx_a[~same]], real[idx_b[~same]])
    type1 = ver.pair_distances(recon, real)
    type2 = ver.pair_distances(recon[idx_a[same]], real[idx_b[same]])
    out = {"attack_impostor_pairs": int(impostor.size), "attack_type1_pairs": int(type1.size),
           "attack_type2_pairs": int(type2.size)}
    for far in fars:
        t = threshold_at_far(impostor, far)
        key = ver.far_key(far)
        out[f"attack_type1_{key}"] = float(np.mean(type1 <= t))
        out[f"attack_type2_{key}"] = float(np.mean(type2 <= t))
        out[f"real_genuine_{key}"] = float(np.mean(
            ver.pair_distances(real[idx_a[same]], real[idx_b[same]]) <= t))
        # with few impostor pairs the FAR cannot go below 1 / their number: say so
        out[f"attack_{key}_resolvable"] = bool(far * impostor.size >= 1.0)
    return out


def ms_ssim_scales(size: int, filter_size: int = 11) -> int:
    """How many MS-SSIM scales an image of `size` pixels allows (the coarsest scale must still
    hold the filter): 5 (the standard) from 176 pixels up, 3 at 64, 2 at 32."""
    scales = 1
    while scales < 5 and size / 2 ** scales >= filter_size:
        scales += 1
    return scales


def ms_ssim_pairs(images, labels, num_pairs: int = 500, seed: int = 0, batch: int = 100):
    """Mean MS-SSIM over random pairs of images of *different* identities (uint8 [n,h,w,c]).
    Uses `tf.image.ssim_multiscale` with the standard power factors truncated to the scales the
    image size allows (renormalised)."""
    images = np.asarray(images)
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    a, b = [], []
    tries = 0
    while len(a) < num_pairs and tries < 50 * num_pairs:
        i, j = rng.integers(0, len(images), 2)
        tries += 1
        if labels[i] != labels[j]:
            a.append(i)
            b.append(j)
    if not a:
        raise ValueError("MS-SSIM needs images of at least two identities")
    return ms_ssim_of(images[a], images[b], batch)


def ms_ssim_of(x_images, y_images, batch: int = 100) -> float:
    """Mean MS-SSIM of the image pairs (x_i, y_i) (uint8 [n,h,w,c] each)."""
    import tensorflow as tf
    factors = np.array([0.0448, 0.2856, 0.3001, 0.2363, 0.1333])
    k = ms_ssim_scales(min(x_images.shape[1:3]))
    power = tuple((factors[:k] / factors[:k].sum()).tolist())
    values = []
    for s in range(0, len(x_images), batch):
        x = tf.constant(x_images[s:s + batch], tf.float32)
        y = tf.constant(y_images[s:s + batch], tf.float32)
        values.append(tf.image.ssim_multiscale(x, y, 255.0, power_factors=power).numpy())
    return float(np.mean(np.concatenate(values)))


class InceptionError(RuntimeError):
    """The Inception Score's classifier is missing or unusable."""


def load_inception(weights_path: str):
    """Keras InceptionV3 (ImageNet, 1000 classes) with its weights from a local `.h5` file
    (Keras' `inception_v3_weights_tf_dim_ordering_tf_kernels.h5`); never downloads."""
    if not weights_path:
        raise InceptionError("the Inception Score needs --inception_weights=<InceptionV3 ImageNet "
                             "weights .h5> (a local file; nothing is downloaded)")
    if not os.path.isfile(weights_path):
        raise InceptionError(f"--inception_weights={weights_path}: no such file (the Inception "
                             f"Score reads InceptionV3's ImageNet weights from a local file; "
                             f"nothing is downloaded)")
    from dibigan_tf.keras_compat import keras
    model = keras.applications.InceptionV3(weights=None, include_top=True)
    try:
        model.load_weights(weights_path)
    except Exception as error:
        raise InceptionError(f"{weights_path}: not InceptionV3 ImageNet weights ({error})") \
            from None
    return model


def inception_score(images, classifier, splits: int = 10, input_size: int = 299,
                    batch: int = 50):
    """(mean, std) of exp(E_x KL(p(y|x) || p(y))) over `splits` parts of uint8 `images`.

    classifier: images in [-1, 1] at input_size x input_size x 3 -> class probabilities
    (InceptionV3's own preprocessing); greyscale images are repeated to 3 channels."""
    import tensorflow as tf
    images = np.asarray(images)
    probs = []
    for s in range(0, len(images), batch):
        x = tf.constant(images[s:s + batch], tf.float32)
        if x.shape[-1] == 1:
            x = tf.repeat(x, 3, axis=-1)
        x = tf.image.resize(x, (input_size, input_size)) / 127.5 - 1.0
        probs.append(np.asarray(classifier(x, training=False), np.float64))
    p = np.concatenate(probs)
    if np.any(p < 0) or not np.allclose(p.sum(axis=1), 1.0, atol=1e-3):
        raise InceptionError("the classifier must output class probabilities (softmax)")
    scores = []
    for part in np.array_split(p, max(1, min(splits, len(p)))):
        marginal = part.mean(axis=0, keepdims=True)
        kl = np.sum(part * (np.log(part + 1e-12) - np.log(marginal + 1e-12)), axis=1)
        scores.append(float(np.exp(kl.mean())))
    return float(np.mean(scores)), float(np.std(scores))

"""Face evaluation of a reconstruction attack (paper section 4): attack success as TAR at fixed FAR
for type-I and type-II attacks, MS-SSIM diversity and the Inception Score.

- **Type-I**: the reconstruction of image x_i against x_i itself; **type-II**: the reconstruction
  of x_a against another image x_b of the same person (the positive pairs). Both are accepted when
  F's distance is below the threshold at which F falsely accepts a share FAR of impostor pairs of
  *real* images (the matcher's own operating point), and TAR is the share accepted.
- **MS-SSIM** between images of random pairs of different people, for reconstructions and for the
  real images (the paper's diversity measure: lower is more diverse): `ms_ssim_of`, TensorFlow's
  with the scales the image size allows, and `ms_ssim_pggan`, the PGGAN / AC-GAN reference's
  (5 scales, window shrunk per scale) that the paper's Table 2 follows.
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


PGGAN_MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _gaussian_1d(size: int, sigma: float) -> np.ndarray:
    """1-D factor of MATLAB's fspecial('gaussian', size, sigma) (the 2-D window is its outer
    product: exp(-(x^2+y^2)/2s^2) separates and the normalisation with it)."""
    radius = size // 2
    offset, start, stop = 0.0, -radius, radius + 1
    if size % 2 == 0:
        offset, stop = 0.5, stop - 1
    x = np.arange(offset + start, stop)
    g = np.exp(-(x ** 2) / (2.0 * sigma ** 2))
    return g / g.sum()


def _blur_valid(images: np.ndarray, window: np.ndarray) -> np.ndarray:
    """'valid' 2-D filtering of [n, h, w, c] float64 images with the separable window."""
    from numpy.lib.stride_tricks import sliding_window_view
    rows = sliding_window_view(images, window.size, axis=1) @ window
    return sliding_window_view(rows, window.size, axis=2) @ window


def _ssim_and_cs(img1, img2, max_val=255.0, filter_size=11, filter_sigma=1.5, k1=0.01, k2=0.03):
    """Per-image mean SSIM and contrast-structure term of one scale, as PGGAN's
    `_SSIMForMultiScale`: the window shrinks to the image (size min(11, h, w), sigma scaled
    with it), 'valid' filtering, products of the float32 images taken in float32."""
    _, height, width, _ = img1.shape
    size = min(filter_size, height, width)
    window = _gaussian_1d(size, size * filter_sigma / filter_size)
    blur = lambda x: _blur_valid(x.astype(np.float64), window)   # noqa: E731
    mu1, mu2 = blur(img1), blur(img2)
    sigma11 = blur(img1 * img1) - mu1 * mu1
    sigma22 = blur(img2 * img2) - mu2 * mu2
    sigma12 = blur(img1 * img2) - mu1 * mu2
    c1, c2 = (k1 * max_val) ** 2, (k2 * max_val) ** 2
    v1 = 2.0 * sigma12 + c2
    v2 = sigma11 + sigma22 + c2
    ssim = np.mean(((2.0 * mu1 * mu2 + c1) * v1) / ((mu1 * mu1 + mu2 * mu2 + c1) * v2),
                   axis=(1, 2, 3))
    return ssim, np.mean(v1 / v2, axis=(1, 2, 3))


def _box_downsample(img: np.ndarray) -> np.ndarray:
    """PGGAN's 2x2 box average with stride 2 (`_HoxDownsample`); an odd last row or column is
    dropped first (the reference needs even sizes at every scale)."""
    img = img[:, : img.shape[1] // 2 * 2, : img.shape[2] // 2 * 2]
    return (img[:, 0::2, 0::2] + img[:, 1::2, 0::2] + img[:, 0::2, 1::2]
            + img[:, 1::2, 1::2]) * np.float32(0.25)


def ms_ssim_pggan_values(x_images, y_images, max_val: float = 255.0,
                         weights=PGGAN_MS_SSIM_WEIGHTS) -> np.ndarray:
    """MS-SSIM of each pair (x_i, y_i) as the PGGAN / AC-GAN reference computes it
    (progressive_growing_of_gans/metrics/ms_ssim.py, after TensorFlow's compression msssim.py):
    5 scales with its weights (they do not sum to 1), Gaussian window 11 / sigma 1.5 shrunk to the
    image at coarse scales (64 px: windows 11, 11, 11, 8, 4), 2x2 box downsampling, cs of the 4
    fine scales and SSIM of the coarsest, each clipped at 0, raised to its weight and multiplied.

    x_images, y_images: [n, h, w, c] in [0, max_val] (uint8 for max_val=255), h and w >= 16.
    Returns a float64 [n] array.
    """
    x = np.asarray(x_images)
    y = np.asarray(y_images)
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"MS-SSIM needs two image batches of one shape [n, h, w, c], got "
                         f"{x.shape} and {y.shape}")
    weights = np.asarray(weights, np.float64)
    if min(x.shape[1:3]) < 2 ** (weights.size - 1):
        raise ValueError(f"MS-SSIM over {weights.size} scales needs images of at least "
                         f"{2 ** (weights.size - 1)} pixels, got {x.shape[1]}x{x.shape[2]}")
    im1, im2 = x.astype(np.float32), y.astype(np.float32)
    ssims, css = [], []
    for level in range(weights.size):
        ssim, cs = _ssim_and_cs(im1, im2, max_val=max_val)
        ssims.append(ssim)
        css.append(cs)
        if level + 1 < weights.size:
            im1, im2 = _box_downsample(im1), _box_downsample(im2)
    ssims = np.clip(np.asarray(ssims), 0.0, np.inf)
    css = np.clip(np.asarray(css), 0.0, np.inf)
    return np.prod(css[:-1] ** weights[:-1, None], axis=0) * ssims[-1] ** weights[-1]


def random_different_pairs(labels, num_pairs: int, seed: int = 0):
    """(idx_a, idx_b): `num_pairs` random pairs of images of different identities, seeded
    (np.random.default_rng(seed)); pairs may repeat, as in PGGAN's random pairs. Fewer when
    different identities are rare (at most 50 draws per pair)."""
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        raise ValueError("MS-SSIM needs images of at least two identities")
    rng = np.random.default_rng(seed)
    a, b = [], []
    for _ in range(50):
        i = rng.integers(0, len(labels), 2 * num_pairs)
        j = rng.integers(0, len(labels), 2 * num_pairs)
        keep = labels[i] != labels[j]
        a.extend(i[keep].tolist())
        b.extend(j[keep].tolist())
        if len(a) >= num_pairs:
            break
    return np.array(a[:num_pairs], np.int64), np.array(b[:num_pairs], np.int64)


def ms_ssim_pggan(x_images, y_images, batch: int = 100) -> float:
    """Mean PGGAN-reference MS-SSIM over the pairs (x_i, y_i) (see ms_ssim_pggan_values)."""
    values = [ms_ssim_pggan_values(x_images[s:s + batch], y_images[s:s + batch])
              for s in range(0, len(x_images), batch)]
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


#: what `v_variation` returns when G's output does not change across features at all but does
#: change with v (the ratio would be infinite; a finite cap keeps metrics.json standard JSON)
V_VARIATION_CAP = 1e6


def _v_variation_rows(n: int, num_features: int, labels, seed: int) -> np.ndarray:
    """Indices of the features v_variation uses: all of them when there are at most
    `num_features`, else a seeded sample that takes one image of as many different identities
    as possible before a second image of anyone (identity, not the image, is what the
    across-feature spread and the impostor pairs should be about)."""
    if n <= num_features:
        return np.arange(n)
    order = np.random.default_rng((seed, 1)).permutation(n)
    if labels is not None:
        _, first = np.unique(np.asarray(labels)[order], return_index=True)
        first = np.sort(first)
        order = np.concatenate([order[first], np.delete(order, first)])
    return np.sort(order[:num_features])


def v_variation(generate, features, real_features, embed, num_features: int = 64,
                num_draws: int = 8, seed: int = 0, labels=None, latent_dim=None,
                far: float = 1e-3) -> dict:
    """Does G's random input v change the face, and does the identity survive every v?

    G is conditioned on a matcher feature f and a random v; the paper's Figure 7 shows rows of one
    f under several v. This puts a number on that figure. For N = min(num_features, available)
    features and K = num_draws draws of v (the same K vectors for every feature, drawn as Figure 7
    draws them: `np.random.default_rng(seed).standard_normal((K, latent_dim))`):

    - `v_variation` = A / B with A = the mean over the N features of the per-pixel standard
      deviation across the K draws, and B = the mean over the K draws of the per-pixel standard
      deviation across the N features at that one v (both averaged over pixels and channels,
      sample standard deviations, ddof 1, so that K = 8 and N = 64 are not biased differently).
      0: v is ignored; 1: v changes the image as much as the identity does. A = 0 gives 0 (also
      when B = 0); B = 0 < A (an output that does not depend on f) gives `V_VARIATION_CAP`. A and
      B are reported too (`v_variation_std_across_v`, `v_variation_std_across_features`, in the
      generator's pixel units).
    - Type-I attack success for each draw k: genuine distance = d(F(G(f_i, v_k)), F(x_i)),
      impostor distances = d(F(G(f_i, v_k)), F(x_j)) for *all* ordered pairs i != j within the N
      (only those of different identities when `labels` is given), d = 2 - 2 cos of the raw
      embeddings; the threshold accepts at most a share `far` of that draw's impostors
      (`threshold_at_far`, accept d <= t) and TAR is the share of genuine pairs accepted. With
      N = 64 there are 64 x 63 = 4032 impostor pairs, so FAR 1e-3 rests on the 4 closest ones: a
      coarse operating point (`attack_type1_v_impostor_pairs` says how many). Unlike
      `attack_success`, whose threshold comes from impostor pairs of *real* images, these are
      reconstructions against other people's real images: the question is whether the
      reconstruction from draw k is still closer to its own person than to the others.
      Reported: the mean over the draws, the worst draw, and every draw in order.

    generate(features [n, D], v [n, latent_dim]) -> images [n, h, w, c] (uint8 or float; called
    once per draw with the N features); `latent_dim` defaults to `generate.latent_dim`.
    features: G's input for each held-out image; real_features: F's embedding of the same real
    images (what a reconstruction is scored against); embed(images) -> F's embeddings of
    generated images (the same scoring as real_features). labels (optional): identity of each
    image; the N features are then taken from as many different identities as possible and
    impostor pairs exclude same-identity pairs. More than N features: a seeded sample.
    """
    features = np.asarray(features, np.float32)
    real_features = np.asarray(real_features, np.float64)
    if features.ndim != 2 or real_features.ndim != 2 or len(features) != len(real_features):
        raise ValueError(f"v_variation needs one G input and one real F feature per image, got "
                         f"{features.shape} and {real_features.shape}")
    if labels is not None and len(labels) != len(features):
        raise ValueError(f"{len(labels)} labels for {len(features)} features")
    if num_draws < 2:
        raise ValueError(f"v_variation needs at least 2 draws of v, got {num_draws}")
    rows = _v_variation_rows(len(features), num_features, labels, seed)
    n = rows.size
    if n < 2:
        raise ValueError(f"v_variation needs at least 2 features, got {n}")
    latent = int(latent_dim if latent_dim is not None else generate.latent_dim)
    vs = np.random.default_rng(seed).standard_normal((num_draws, latent)).astype(np.float32)
    f = features[rows]
    real = ver.l2_normalize(real_features[rows])
    if labels is None:
        impostor = ~np.eye(n, dtype=bool)
    else:
        chosen = np.asarray(labels)[rows]
        impostor = chosen[:, None] != chosen[None, :]
    if not impostor.any():
        raise ValueError("v_variation's type-I attack needs features of at least 2 identities")
    mean = m2 = None
    across_features, tars = [], []
    for k in range(num_draws):
        images = generate(f, np.repeat(vs[k][None], n, axis=0))
        x = np.asarray(images, np.float64)
        if x.shape[0] != n:
            raise ValueError(f"the generator returned {x.shape[0]} images for {n} features")
        across_features.append(float(np.mean(np.std(x, axis=0, ddof=1))))
        if mean is None:         # Welford: an output that ignores v keeps m2 exactly 0
            mean, m2 = x.copy(), np.zeros_like(x)
        else:
            delta = x - mean
            mean += delta / (k + 1)
            m2 += delta * (x - mean)
        recon = ver.l2_normalize(np.asarray(embed(images), np.float64))
        if recon.shape != real.shape:
            raise ValueError(f"embed returned {recon.shape} for {real.shape} real features")
        d = np.clip(2.0 - 2.0 * recon @ real.T, 0.0, 4.0)
        t = threshold_at_far(d[impostor], far)
        tars.append(float(np.mean(np.diag(d) <= t)))
    across_v = float(np.mean(np.sqrt(m2 / (num_draws - 1))))
    across_f = float(np.mean(across_features))
    if across_v == 0.0:
        ratio = 0.0
    elif across_f == 0.0:
        ratio = V_VARIATION_CAP
    else:
        ratio = min(across_v / across_f, V_VARIATION_CAP)
    key = f"attack_type1_{ver.far_key(far)}_v"
    return {"v_variation": float(ratio), "v_variation_std_across_v": across_v,
            "v_variation_std_across_features": across_f, "v_variation_features": int(n),
            "v_variation_draws": int(num_draws), f"{key}_mean": float(np.mean(tars)),
            f"{key}_worst": float(np.min(tars)), f"{key}_draws": tars,
            "attack_type1_v_impostor_pairs": int(impostor.sum())}

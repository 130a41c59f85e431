"""The paper's losses, Eq. 4-9 and H's negative log-likelihood, as small pure functions of
tensors.

Conventions: every function returns a per-example loss of shape [batch] (or a scalar where the
quantity is a batch statistic, said in its docstring), so that a distributed training step can
divide the sum by the global batch size (`tf.nn.compute_average_loss`). No function here imports a
model: networks are passed in as tensors or, for the gradient penalty, as a callable.
"""
from __future__ import annotations

import tensorflow as tf


def _cosine(a, b, eps=1e-12):
    a = tf.math.l2_normalize(tf.reshape(a, [tf.shape(a)[0], -1]), axis=-1, epsilon=eps)
    b = tf.math.l2_normalize(tf.reshape(b, [tf.shape(b)[0], -1]), axis=-1, epsilon=eps)
    return tf.reduce_sum(a * b, axis=-1)


def cosine_distill_loss(target_features, predicted_features):
    """Eq. 6: || 1 - <F(x)/|F(x)|, F^S(x)/|F^S(x)|> ||_2^2 per example (the student's loss).

    The product "*" of the paper is the inner product of the two unit vectors, so the loss is the
    squared cosine distance, in [0, 4].
    """
    return tf.square(1.0 - _cosine(target_features, predicted_features))


def generator_distill_loss(fake_taps, real_taps, fake_embedding, real_embedding,
                           tap_weights=None, embedding_weight=10.0):
    """Eq. 7: sum_j lambda_j ||F_j(x~) - F_j(x)|| / (W_j H_j C_j) + lambda_a (1 - cos)^2.

    fake_taps / real_taps: lists of intermediate outputs F^S_j (any rank >= 2, batch first); the
    norm is the (unsquared) L2 norm over all of a tap's elements, divided by their number, as
    written in the paper. embedding_weight is lambda_a (10 in the paper); tap_weights the
    lambda_j (1 each by default). Returns [batch].
    """
    if len(fake_taps) != len(real_taps):
        raise ValueError(f"{len(fake_taps)} fake taps but {len(real_taps)} real taps")
    if tap_weights is None:
        tap_weights = [1.0] * len(fake_taps)
    if len(tap_weights) != len(fake_taps):
        raise ValueError(f"{len(tap_weights)} tap weights for {len(fake_taps)} taps")
    loss = embedding_weight * cosine_distill_loss(real_embedding, fake_embedding)
    for weight, fake, real in zip(tap_weights, fake_taps, real_taps):
        diff = tf.reshape(fake - real, [tf.shape(fake)[0], -1])
        size = tf.cast(tf.shape(diff)[1], diff.dtype)
        # sqrt(x + eps) - sqrt(eps): a norm whose gradient is finite at 0 and value exact there.
        eps = tf.constant(1e-12, diff.dtype)
        norm = tf.sqrt(tf.reduce_sum(tf.square(diff), axis=-1) + eps) - tf.sqrt(eps)
        loss += weight * norm / size
    return loss


# --------------------------------------------------------------------------- Eq. 4 and 5

#: How Eq. 4's "means and covariances of z~ and z" are read (`--biject_reading`).
#:  - "spatial": a latent z = H(x) of one image, [h, w, c] after the flow's squeezes, is h*w
#:    samples of a c-dimensional Gaussian with diagonal covariance; Eq. 4 compares the two
#:    images' sample statistics ("{mu~, Sigma~} and {mu, Sigma} are the means and covariances of
#:    z~ and z"). Blind to where things are: a mirrored latent has the same statistics.
#:  - "spatial_full": the same samples with the full c x c covariance, so that Eq. 4 is the
#:    general Gaussian W2 the paper writes (with the matrix square roots), not its diagonal case;
#:    it sees correlations between channels, still not positions.
#:  - "latent": each latent z is the mean of a Gaussian whose covariance is its identity's prior
#:    (H is trained with "K Gaussian distributions ... z_k ~ N(mu_k, Sigma_k)", section 3.2), so
#:    Eq. 4 is ||z~ - z||^2 ("d(z~, z) = inf E(||z~ - z||^2)") plus the covariance term between
#:    the two priors, which is zero within one identity and a constant of the two identities in
#:    Eq. 5. It sees every position.
#: Every reading is a sum over c channels averaged over the h*w positions (the "latent" reading's
#: squared distance is divided by h*w), so the three share one scale; a constant factor would
#: only rescale alpha and the data-derived margin.
BIJECT_READINGS = ("spatial", "spatial_full", "latent")


def check_biject_reading(reading: str) -> str:
    if reading not in BIJECT_READINGS:
        raise ValueError(f"unknown biject reading {reading!r}; choose from {BIJECT_READINGS}")
    return reading


def latent_gaussian_stats(z, mode="spatial", eps=1e-6):
    """The mean and diagonal standard deviation of a latent's h*w spatial samples (the
    "spatial" reading of Eq. 4, see BIJECT_READINGS).

    z: [batch, h, w, c]. Returns (mu [batch, c], sigma [batch, c]).
    """
    if mode != "spatial":
        raise ValueError(f"unknown latent statistics mode {mode!r}")
    samples = tf.reshape(z, [tf.shape(z)[0], -1, z.shape[-1]])
    mu = tf.reduce_mean(samples, axis=1)
    var = tf.reduce_mean(tf.square(samples - mu[:, None, :]), axis=1)
    return mu, tf.sqrt(var + eps)


def latent_gaussian_full_stats(z):
    """Mean [batch, c] and full covariance [batch, c, c] of z's h*w spatial samples (the
    "spatial_full" reading of Eq. 4)."""
    samples = tf.reshape(z, [tf.shape(z)[0], -1, z.shape[-1]])
    mu = tf.reduce_mean(samples, axis=1)
    centred = samples - mu[:, None, :]
    n = tf.cast(tf.shape(samples)[1], z.dtype)
    return mu, tf.einsum("bnc,bnd->bcd", centred, centred) / n


def w2_gaussian_diag(mu1, sigma1, mu2, sigma2):
    """Eq. 4 for diagonal covariances (exact): ||mu1-mu2||^2 + ||sigma1-sigma2||^2.

    With Sigma = diag(sigma^2), Tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2) = sum (s1 - s2)^2.
    Inputs [..., c]; returns [...].
    """
    return (tf.reduce_sum(tf.square(mu1 - mu2), axis=-1) +
            tf.reduce_sum(tf.square(sigma1 - sigma2), axis=-1))


@tf.custom_gradient
def _trace_sqrtm_psd(matrix):
    """Tr(M^1/2) of symmetric PSD matrices [..., c, c], with the gradient 1/2 M^-1/2 computed
    from the eigenvalues directly: the generic eigh gradient divides by eigenvalue gaps and
    gives NaN for repeated eigenvalues, which the trace does not need."""
    matrix = 0.5 * (matrix + tf.linalg.matrix_transpose(matrix))
    values, vectors = tf.linalg.eigh(matrix)
    values = tf.maximum(values, 0.0)
    eps = tf.constant(1e-8, matrix.dtype)

    def grad(upstream):
        inv_root = 0.5 / tf.sqrt(tf.maximum(values, eps))
        g = tf.matmul(vectors * inv_root[..., None, :], vectors, transpose_b=True)
        return upstream[..., None, None] * g
    return tf.reduce_sum(tf.sqrt(values), axis=-1), grad


def w2_gaussian_full(mu1, cov1, mu2, cov2, eps=None):
    """Eq. 4 for full covariances: ||mu1-mu2||^2 + Tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2).

    The cross term is Tr((L1^T S2 L1)^1/2) with S1 = L1 L1^T (Cholesky of S1 + eps I): L1^T S2 L1
    has the eigenvalues of S2 S1, as S1^1/2 S2 S1^1/2 does, and its gradient needs no matrix
    square root of S1. eps: 1e-6 in float32, 1e-12 in float64 (None). Broadcasts: mu [..., c];
    cov [..., c, c].
    """
    if eps is None:
        eps = 1e-12 if cov1.dtype == tf.float64 else 1e-6
    c = tf.shape(cov1)[-1]
    chol = tf.linalg.cholesky(cov1 + eps * tf.eye(c, dtype=cov1.dtype))
    inner = tf.matmul(tf.matmul(chol, cov2, transpose_a=True), chol)
    trace = (tf.linalg.trace(cov1) + tf.linalg.trace(cov2) - 2.0 * _trace_sqrtm_psd(inner))
    return tf.reduce_sum(tf.square(mu1 - mu2), axis=-1) + trace


def _pairwise_sq(a, b):
    """Squared Euclidean distance between every row of a [n, d] and of b [m, d]: [n, m]."""
    return (tf.reduce_sum(tf.square(a), axis=-1)[:, None]
            + tf.reduce_sum(tf.square(b), axis=-1)[None, :]
            - 2.0 * tf.matmul(a, b, transpose_b=True))


def pairwise_w2_diag(mu, sigma, mu2=None, sigma2=None):
    """Eq. 4 between every pair of rows: [batch, batch] matrix of W2^2 distances (diagonal);
    with (mu2, sigma2), between the rows of the first and of the second set: [batch, batch2]."""
    mu2 = mu if mu2 is None else mu2
    sigma2 = sigma if sigma2 is None else sigma2
    return tf.maximum(_pairwise_sq(mu, mu2) + _pairwise_sq(sigma, sigma2), 0.0)


def latent_summary(z, reading):
    """What Eq. 4 compares of each latent z [batch, h, w, c] under a reading: (mu, sigma) for
    "spatial", (mu, covariance) for "spatial_full", the latent flattened and divided by
    sqrt(h*w) for "latent" (a list of tensors, gathered across replicas as they are)."""
    check_biject_reading(reading)
    if reading == "spatial":
        return list(latent_gaussian_stats(z))
    if reading == "spatial_full":
        return list(latent_gaussian_full_stats(z))
    positions = tf.cast(tf.shape(z)[1] * tf.shape(z)[2], z.dtype)
    return [tf.reshape(z, [tf.shape(z)[0], -1]) / tf.sqrt(positions)]


def summary_w2(a, b, reading):
    """Eq. 4 between matching rows of two latent summaries: [batch]. The "latent" reading's
    covariance term is zero here: both latents carry the same identity's prior."""
    if reading == "spatial":
        return w2_gaussian_diag(a[0], a[1], b[0], b[1])
    if reading == "spatial_full":
        return w2_gaussian_full(a[0], a[1], b[0], b[1])
    return tf.reduce_sum(tf.square(a[0] - b[0]), axis=-1)


def pairwise_summary_w2(a, b, reading):
    """Eq. 4 between every row of summary a and every row of summary b: [batch_a, batch_b]
    (without the "latent" reading's prior term, see `prior_w2_table`)."""
    if reading == "spatial":
        return pairwise_w2_diag(a[0], a[1], b[0], b[1])
    if reading == "spatial_full":
        d = w2_gaussian_full(a[0][:, None], a[1][:, None], b[0][None], b[1][None])
        return tf.maximum(d, 0.0)
    return tf.maximum(_pairwise_sq(a[0], b[0]), 0.0)


def latent_w2(z1, z2, reading="spatial"):
    """Eq. 4 between matching latents z1, z2 [batch, h, w, c] of one identity: [batch]."""
    return summary_w2(latent_summary(z1, reading), latent_summary(z2, reading), reading)


def prior_w2_table(prior_scales, positions):
    """The "latent" reading's covariance term between the priors of every two identities,
    [K, K]: W2 between N(., diag(s_k^2)) and N(., diag(s_l^2)) is ||s_k - s_l||^2, divided by
    the h*w positions as the reading's distances are. prior_scales: [K, D] standard deviations
    of a diagonal class-conditional prior (numpy); returns float32 numpy."""
    import numpy as np
    s = np.asarray(prior_scales, np.float64)
    sq = np.sum(s * s, axis=1)
    table = np.maximum(sq[:, None] + sq[None, :] - 2.0 * s @ s.T, 0.0) / float(positions)
    return table.astype(np.float32)


def identity_aware_loss(distances, labels, margin, other_labels=None, offset=0):
    """Eq. 5 over all unordered pairs of a batch, averaged per example.

    distances: [batch, batch] Eq. 4 distances between reconstructions; labels: [batch] identities.
    Same identity: d; different identity: max(0, m - d). Each example gets the mean over its pairs
    with the other examples of the batch (so the result is [batch] and sums to the mean over all
    ordered pairs times batch size). A batch of one gives zeros.

    A replica's rows against the whole global batch: distances [batch, global], other_labels
    [global] and `offset`, the global index of the replica's first row (row i is itself at
    column offset + i). Each row then gets exactly the value it gets on a single device.
    """
    if other_labels is None:
        other_labels = labels
    same = tf.cast(tf.equal(labels[:, None], other_labels[None, :]), distances.dtype)
    rows, columns = tf.shape(distances)[0], tf.shape(distances)[1]
    off_diagonal = 1.0 - tf.one_hot(tf.range(rows) + offset, columns, dtype=distances.dtype)
    per_pair = same * distances + (1.0 - same) * tf.nn.relu(margin - distances)
    per_pair *= off_diagonal
    count = tf.maximum(tf.cast(columns - 1, distances.dtype), 1.0)
    return tf.reduce_sum(per_pair, axis=1) / count


def replica_gather(tensors):
    """(tensors gathered over the replicas along axis 0, global index of this replica's first
    row): the whole global batch seen from inside one replica's step (differentiable: the
    gradient of a gathered row returns to the replica that computed it). Outside a distributed
    step, or with one replica: (tensors, 0)."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return tensors, 0
    offset = tf.cast(ctx.replica_id_in_sync_group, tf.int32) * tf.shape(tensors[0])[0]
    # MultiWorkerMirroredStrategy gathers "to" the value itself and refuses a tensor without a
    # device ("destinations can not be empty"): on a worker with one replica, pin each one to
    # that replica's device first
    devices = tuple(ctx.strategy.extended.worker_devices)
    if len(devices) == 1:
        with tf.device(devices[0]):
            tensors = [tf.identity(t) for t in tensors]
    return [ctx.all_gather(t, axis=0) for t in tensors], offset


def biject_loss(fake_z, real_z, labels, margin, reading="spatial", prior_table=None):
    """L_biject of Eq. 8: Eq. 4 between H(x~) and H(x) plus Eq. 5 among the reconstructions,
    under one of BIJECT_READINGS.

    fake_z, real_z: [batch, h, w, c] latents of H (frozen); labels: [batch]. Returns [batch].
    prior_table: [K, K] (`prior_w2_table`), the "latent" reading's covariance term between two
    identities' priors, added to Eq. 5's distances (None: zero, as for identical priors).
    Eq. 5's pairs are those of the global batch: under a distribution strategy each replica's
    reconstructions are compared with every other reconstruction of the step (`replica_gather`),
    so the loss does not change with the number of replicas.
    """
    fake = latent_summary(fake_z, reading)
    real = latent_summary(tf.stop_gradient(real_z), reading)
    pointwise = summary_w2(fake, real, reading)
    gathered, offset = replica_gather(fake + [labels])
    all_summary, all_labels = gathered[:-1], gathered[-1]
    distances = pairwise_summary_w2(fake, all_summary, reading)
    if reading == "latent" and prior_table is not None:
        table = tf.convert_to_tensor(prior_table, distances.dtype)
        distances += tf.gather(tf.gather(table, tf.cast(labels, tf.int32)),
                               tf.cast(all_labels, tf.int32), axis=1)
    pairwise = identity_aware_loss(distances, labels, margin, other_labels=all_labels,
                                   offset=offset)
    return pointwise + pairwise


# --------------------------------------------------------------------------- Eq. 8-9

def reconstruction_l1(fake, real):
    """L_recon of Eq. 8: ||G(F(x)) - x||_1 per example, as the mean absolute error per pixel.

    Read literally, ||.||_1 is a sum over all pixels (~10^2-10^3 at 32x32), which would swamp
    every other term; section 4 sets the weights "to maintain the balanced values between loss
    terms", and Eq. 7 normalises its own norms by W*H*C, so L_recon is normalised the same way.
    """
    return tf.reduce_mean(tf.abs(tf.reshape(fake - real, [tf.shape(fake)[0], -1])), axis=-1)


def generator_adversarial(fake_scores):
    """L_adv of Eq. 8 for the generator, per example.

    The paper writes L_adv = E[D(G(F(x)))] next to a critic loss (Eq. 9) that *lowers* D on fakes;
    the generator must therefore raise D(fake), i.e. minimise -D(G(F(x))) (WGAN), which is what
    this returns.
    """
    return -fake_scores


def critic_wgan(real_scores, fake_scores, drift=0.001):
    """Eq. 9 without the penalty: D(fake) - D(real), plus PO-GAN's drift term eps * D(real)^2."""
    return fake_scores - real_scores + drift * tf.square(real_scores)


def gradient_penalty(critic, real, fake, epsilon):
    """Eq. 9's penalty (||grad_x~ D(x~)||_2 - 1)^2 at x~ = eps * real + (1 - eps) * fake.

    critic: callable images -> [batch] scores; epsilon: [batch] uniform samples in [0, 1] (passed
    in so the function is pure). Returns [batch].
    """
    epsilon = tf.reshape(epsilon, [-1] + [1] * (len(real.shape) - 1))
    mixed = epsilon * real + (1.0 - epsilon) * fake
    with tf.GradientTape() as tape:
        tape.watch(mixed)
        scores = critic(mixed)
    grads = tape.gradient(scores, mixed)  # a vector target: the gradient of its sum
    norms = tf.sqrt(tf.reduce_sum(tf.square(tf.reshape(grads, [tf.shape(grads)[0], -1])), -1)
                    + 1e-12)
    return tf.square(norms - 1.0)


def critic_loss(real_scores, fake_scores, penalty, gp_weight=10.0, drift=0.001):
    """Eq. 9 per example: D(fake) - D(real) + gp_weight * (||grad D(x^)|| - 1)^2, with PO-GAN's
    drift term (`critic_wgan`); `penalty` from `gradient_penalty`."""
    return critic_wgan(real_scores, fake_scores, drift) + gp_weight * penalty


def diversity_sensitive(fake_a, fake_b, v_a, v_b, cap):
    """An extension of Eq. 8, not in the paper: the diversity-sensitive term of Yang et al.
    ("Diversity-sensitive conditional GANs", ICLR 2019), -min(d(G(v_a, f), G(v_b, f)) /
    d(v_a, v_b), cap) per example, with d the mean absolute difference (per pixel, per
    dimension of v).

    Why: section 3.4 has v model what the feature leaves open (pose, expression, lighting;
    Figure 7), but L_recon pulls every draw of v towards the one real image of its feature and
    D judges images one at a time, so nothing in Eq. 8 rewards G for using v and it learns to
    ignore it. This term rewards a change of output per change of v, up to `cap` (beyond which it
    is flat, so it cannot turn G into a noise generator). fake_a / fake_b: G's images for the
    same features under two draws v_a / v_b. Returns [batch], <= 0.
    """
    n = tf.shape(fake_a)[0]
    image_distance = tf.reduce_mean(tf.abs(tf.reshape(fake_a - fake_b, [n, -1])), axis=-1)
    v_distance = tf.reduce_mean(tf.abs(v_a - v_b), axis=-1)
    return -tf.minimum(image_distance / tf.maximum(v_distance, 1e-8), cap)


#: the terms of Eq. 8, in the order they are summed; then the extensions beyond the paper
GENERATOR_TERMS = ("adversarial", "recon", "distill", "biject")
EXTENSION_TERMS = ("diversity",)


def generator_loss(terms, weights):
    """Eq. 8 per example: L_G = lambda_b L_biject + lambda_d L_distill + lambda_adv L_adv +
    lambda_r L_recon.

    terms: the per-example losses that are on, by name (GENERATOR_TERMS: "biject", "distill",
    "adversarial", "recon"; EXTENSION_TERMS: "diversity", `diversity_sensitive`); a term that
    is off is left out. weights: lambda of each name (numbers or scalar tensors; section 3.4's
    exponential weighting gives them per stage).
    """
    known = GENERATOR_TERMS + EXTENSION_TERMS
    unknown = set(terms) - set(known)
    if unknown:
        raise ValueError(f"unknown Eq. 8 terms {sorted(unknown)}; choose from {known}")
    total = None
    for name in known:
        if name in terms:
            term = weights[name] * terms[name]
            total = term if total is None else total + term
    if total is None:
        raise ValueError("Eq. 8 needs at least one term")
    return total


def flow_nll(log_prior, log_det_jacobian):
    """H's training loss (section 3.2) per example, in nats: -[log p_z(H(x), k) +
    log|det dH/dx|], the change of variables with the identity's prior Gaussian."""
    return -(log_prior + log_det_jacobian)

"""The paper's losses, Eq. 4-9, as small pure functions of tensors.

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

def latent_gaussian_stats(z, mode="spatial", eps=1e-6):
    """The mean and (diagonal) standard deviation that represent a latent z as a Gaussian.

    The paper (Eq. 4) compares "the means and covariances of z~ and z" without saying over which
    samples they are taken. We read a latent z = H(x) of one image, shaped [h, w, c] by the flow's
    squeezes, as h*w samples of a c-dimensional variable (mode "spatial"): each image then has its
    own Gaussian N(mu, Sigma) with mu, Sigma over the c channels, Eq. 4 compares two images, and
    Eq. 5 can compare two reconstructions, which is what L_biject (Eq. 8) needs. (The other
    reading, statistics over the images of a batch that share an identity, would compare
    identities rather than images; it is not implemented.)

    z: [batch, h, w, c]. Returns (mu [batch, c], sigma [batch, c]).
    """
    if mode != "spatial":
        raise ValueError(f"unknown latent statistics mode {mode!r}")
    samples = tf.reshape(z, [tf.shape(z)[0], -1, z.shape[-1]])
    mu = tf.reduce_mean(samples, axis=1)
    var = tf.reduce_mean(tf.square(samples - mu[:, None, :]), axis=1)
    return mu, tf.sqrt(var + eps)


def latent_gaussian_full_stats(z):
    """Mean [batch, c] and full covariance [batch, c, c] of z's h*w spatial samples."""
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


def _sqrtm_psd(matrix, eps=1e-10):
    """Symmetric PSD square root by eigendecomposition (batched)."""
    matrix = 0.5 * (matrix + tf.linalg.matrix_transpose(matrix))
    values, vectors = tf.linalg.eigh(matrix)
    values = tf.sqrt(tf.maximum(values, eps))
    return tf.matmul(vectors * values[..., None, :], vectors, transpose_b=True)


def w2_gaussian_full(mu1, cov1, mu2, cov2):
    """Eq. 4 for full covariances: ||mu1-mu2||^2 + Tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2).

    Differentiable (eigendecomposition-based square roots). mu: [..., c]; cov: [..., c, c].
    """
    root1 = _sqrtm_psd(cov1)
    cross = _sqrtm_psd(tf.matmul(tf.matmul(root1, cov2), root1))
    trace = tf.linalg.trace(cov1 + cov2 - 2.0 * cross)
    return tf.reduce_sum(tf.square(mu1 - mu2), axis=-1) + trace


def pairwise_w2_diag(mu, sigma, mu2=None, sigma2=None):
    """Eq. 4 between every pair of rows: [batch, batch] matrix of W2^2 distances (diagonal);
    with (mu2, sigma2), between the rows of the first and of the second set: [batch, batch2]."""
    mu2 = mu if mu2 is None else mu2
    sigma2 = sigma if sigma2 is None else sigma2

    def sq(a, b):
        return (tf.reduce_sum(tf.square(a), axis=-1)[:, None]
                + tf.reduce_sum(tf.square(b), axis=-1)[None, :]
                - 2.0 * tf.matmul(a, b, transpose_b=True))
    return tf.maximum(sq(mu, mu2) + sq(sigma, sigma2), 0.0)


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
    return [ctx.all_gather(t, axis=0) for t in tensors], offset


def biject_loss(fake_z, real_z, labels, margin):
    """L_biject of Eq. 8: Eq. 4 between H(x~) and H(x) plus Eq. 5 among the reconstructions.

    fake_z, real_z: [batch, h, w, c] latents of H (frozen); labels: [batch]. Returns [batch].
    Eq. 5's pairs are those of the global batch: under a distribution strategy each replica's
    reconstructions are compared with every other reconstruction of the step (`replica_gather`),
    so the loss does not change with the number of replicas.
    """
    mu_f, sigma_f = latent_gaussian_stats(fake_z)
    mu_r, sigma_r = latent_gaussian_stats(tf.stop_gradient(real_z))
    pointwise = w2_gaussian_diag(mu_f, sigma_f, mu_r, sigma_r)
    (all_mu, all_sigma, all_labels), offset = replica_gather([mu_f, sigma_f, labels])
    pairwise = identity_aware_loss(pairwise_w2_diag(mu_f, sigma_f, all_mu, all_sigma), labels,
                                   margin, other_labels=all_labels, offset=offset)
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

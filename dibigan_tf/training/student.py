"""Distilling the student F^S from the blackbox F's stored features (Eq. 6, section 3.3)."""
from __future__ import annotations

import weakref

import numpy as np
import tensorflow as tf

from dibigan_tf import losses
from dibigan_tf.data.images import uint8_to_unit
from dibigan_tf.models.student import build_student
from dibigan_tf.data.augment import SHIFT_NOISE, random_shift
from dibigan_tf.training import precision
from dibigan_tf.training.common import Stage, build_optimizer, learning_rate_schedule
from dibigan_tf.training.loops import distributed_step, graph_function, run_phase


# model -> (target mean, target scale) variables (not attributes: Keras would track them as
# model weights)
_TARGET_MEANS = weakref.WeakKeyDictionary()
# model -> its traced embedding function (student_embed)
_EMBED_FNS = weakref.WeakKeyDictionary()


def make_student(strategy, image_shape, embedding_dim, depth="small", width=32,
                 mixed_precision="float32"):
    with strategy.scope(), precision.policy_scope(mixed_precision):
        return build_student(image_shape, embedding_dim, depth=depth, width=width)


def train_student(run_dir, strategy, images, features, *, depth="small", width=32, epochs=10,
                  batch_size=64, learning_rate=1e-3, lr_decay="constant", max_shift=2, seed=1,
                  log_every=20, center_targets=False, mixed_precision="float32",
                  jit_compile=False, **loop_kwargs):
    """Trains F^S on (image, F(image)) pairs with Eq. 6 (or resumes); returns (model, stage).

    images: uint8 [n, h, w, c]; features: the blackbox embeddings from the feature store.
    Random shifts of up to `max_shift` pixels make the student see more than the exact training
    images (the generator's reconstructions are never pixel-exact).

    center_targets: Eq. 6 on F(x) - mu, mu the mean training feature (kept in the stage's
    checkpoint as `target_mean`, with the mean length of F(x) - mu as `target_scale`;
    `student_embed` maps F^S's output back to F's space with them). The paper's ArcFace features are spread
    over the unit sphere, so the cosine of Eq. 6 measures identity; dlib's share one dominant
    direction (on LFW, predicting the mean feature for every face already gives cosine 0.91), so
    the raw cosine barely sees identity and its gradient (1 - cos) vanishes. F^S's output (and so
    the cosine term of Eq. 7 in the GAN) then lives in the centred space. Off by default (the
    paper's Eq. 6 as written; the digits default).

    lr_decay: "constant" keeps Adam's step at learning_rate; "cosine" lowers it to 0 along a half
    cosine over the run's steps (`common.learning_rate_schedule`), as H's training does.

    mixed_precision / jit_compile: the speed flags of training/precision.py and XLA for the step.
    """
    model = make_student(strategy, images.shape[1:], features.shape[1], depth, width,
                         mixed_precision)
    optimizer = build_optimizer(strategy, model.trainable_variables,
                                learning_rate_schedule(learning_rate, lr_decay,
                                                       epochs * len(images), batch_size),
                                mixed_precision=mixed_precision)
    mean = features.mean(axis=0) if center_targets else np.zeros(features.shape[1])
    # Eq. 6 leaves the length of F^S's output free; in F's space the centred part gets the mean
    # length of the centred training features back.
    scale = float(np.mean(np.linalg.norm(features - mean, axis=1))) if center_targets else 0.0
    with strategy.scope():
        target_mean = tf.Variable(mean.astype(np.float32), trainable=False, name="target_mean")
        target_scale = tf.Variable(scale, dtype=tf.float32, trainable=False,
                                   name="target_scale")
    _TARGET_MEANS[model] = (target_mean, target_scale)
    objects = {"model": model, "optimizer": optimizer}
    if center_targets:
        objects["target_mean"] = target_mean
        objects["target_scale"] = target_scale
    stage = Stage(run_dir, "student", strategy, objects)
    stage.restore()
    if stage.is_done():
        return model, stage
    global_batch = batch_size

    def replica_step(batch):
        x = random_shift(uint8_to_unit(batch["images"]), max_shift, batch["noise_shift"])
        with tf.GradientTape() as tape:
            embedding = model(x, training=True)[-1]
            per_example = losses.cosine_distill_loss(batch["features"] - target_mean, embedding)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
            scaled = precision.scale_loss(optimizer, loss)
        grads = precision.gradients(tape, optimizer, scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        cosine = 1.0 - tf.sqrt(per_example)
        return {"loss": loss, "cosine": tf.reduce_sum(cosine) / global_batch}

    step = distributed_step(strategy, replica_step, jit_compile=jit_compile)
    run_phase(stage, step, {"images": images, "features": features.astype(np.float32)},
              batch_size, epochs * len(images), seed, log_every=log_every, noise=SHIFT_NOISE,
              **loop_kwargs)
    stage.mark_done()
    return model, stage


def student_embed(model, images, batch_size=500):
    """F^S embeddings of uint8 images (inference mode), in F's space: when the student learnt
    centred targets, its output direction at the centred features' mean length, plus the mean.
    The traced function is kept per model, so repeated calls do not trace again."""
    fn = _EMBED_FNS.get(model)
    if fn is None:
        mean, scale = _TARGET_MEANS.get(model, (None, None))
        centred = mean is not None and float(scale.numpy()) > 0.0

        def to_f_space(y):
            return mean + scale * tf.math.l2_normalize(y, axis=-1) if centred else y

        # one trace for every batch, the shorter last one included
        fn = graph_function(
            lambda x: to_f_space(model(uint8_to_unit(x), training=False)[-1]),
            input_signature=[tf.TensorSpec([None] + list(images.shape[1:]), tf.uint8)])
        _EMBED_FNS[model] = fn
    return np.concatenate([fn(tf.constant(images[i:i + batch_size])).numpy()
                           for i in range(0, len(images), batch_size)])


def student_gradient_cosine(student, reference, images, labels, *, num_images=256,
                            batch_size=16, seed=0) -> dict:
    """How well F^S imitates the real matcher's input gradients, on held-out images.

    Eq. 7's final term, lambda_a (1 - cos(F(x~), F(x)))^2, is what pulls a reconstruction x~
    towards the identity of x. Its gradient with respect to x~ is computed twice: through the
    student F^S (what a blackbox run follows) and through `reference`, a differentiable copy of
    the real matcher F (for dlib, its Keras model: `matchers.dlib_keras.differentiable_reference`;
    what a whitebox run follows). The cosine between the two gradients (flattened, per image)
    says how much of the whitebox signal the student recovers: 1 is the same direction, 0 none.

    The images are uint8 [n, h, w, c] at the size F^S takes; `reference` sees them as whitebox
    mode does (`WhiteboxNetwork`: resized to its input inside the graph), so both gradients live
    on the same pixels. Each output of the networks is taken as Eq. 7 takes it (F^S's raw output,
    in the centred space when it learnt centred targets; F's raw descriptor). Two stand-ins for
    a reconstruction, up to `num_images` seeded held-out images x each:

    - `student_gradient_cosine`: x~ = a held-out image of another person (the large-loss regime
      of early training: which way to move a face towards x's identity);
    - `student_gradient_cosine_blurred`: x~ = x shrunk to a quarter of its size and enlarged
      back (bilinear): a blurred copy of the right person, as late reconstructions look.

    Returns those two means, their medians (`..._median`) and `student_gradient_images`.
    """
    from dibigan_tf.matchers.base import WhiteboxNetwork
    images, labels = np.asarray(images), np.asarray(labels)
    if len(images) == 0:
        return {"student_gradient_images": 0}
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.permutation(len(images))[:num_images])
    partners = []
    for i in pick:
        others = np.flatnonzero(labels != labels[i])
        partners.append(rng.choice(others) if len(others) else i)
    partners = np.asarray(partners, np.int64)
    whitebox = WhiteboxNetwork(reference, images.shape[1:])
    networks = {"student": lambda x: student(x, training=False)[-1],
                "reference": lambda x: whitebox(x)[-1]}
    h, w = images.shape[1:3]

    def blurred(x):
        small = tf.image.resize(x, (max(h // 4, 1), max(w // 4, 1)), method="area")
        return tf.image.resize(small, (h, w), method="bilinear")

    def gradient(embed, fake, real):
        target = tf.stop_gradient(embed(real))
        with tf.GradientTape() as tape:
            tape.watch(fake)
            loss = tf.reduce_sum(losses.cosine_distill_loss(target, embed(fake)))
        return tf.reshape(tape.gradient(loss, fake), [tf.shape(fake)[0], -1])

    steps = {name: graph_function(lambda fake, real, embed=embed: gradient(embed, fake, real))
             for name, embed in networks.items()}
    cosines = {"": [], "_blurred": []}
    for start in range(0, len(pick), batch_size):
        real = uint8_to_unit(images[pick[start:start + batch_size]])
        fakes = {"": uint8_to_unit(images[partners[start:start + batch_size]]),
                 "_blurred": blurred(real)}
        for key, fake in fakes.items():
            a, b = (steps[name](fake, real).numpy().astype(np.float64)
                    for name in ("student", "reference"))
            norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
            cosines[key].extend(np.sum(a * b, axis=1) / np.maximum(norms, 1e-30))
    out = {"student_gradient_images": int(len(pick))}
    for key, values in cosines.items():
        out[f"student_gradient_cosine{key}"] = float(np.mean(values))
        out[f"student_gradient_cosine{key}_median"] = float(np.median(values))
    return out

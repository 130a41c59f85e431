"""Progressive training of G and D (section 3.4): Eq. 8 for G, Eq. 9 (WGAN-GP) for D, the
exponential loss weighting, fade-in, and an EMA copy of G for sampling and evaluation.

Lower-resolution stages: the real batch is average-pooled to the stage's resolution (and, during a
fade-in, blended with its 2x-blurred version by alpha, as in PO-GAN), so D and L_recon compare like
with like. F^S and H see full-resolution inputs: the fake is nearest-upsampled to full size and
compared with the equally upsampled real batch, i.e. both sides at the same level of detail.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from dibigan_tf import losses
from dibigan_tf.config import GanConfig
from dibigan_tf.training import precision
from dibigan_tf.data.images import image_grid, to_uint8, uint8_to_unit
from dibigan_tf.models.discriminator import ProgressiveDiscriminator
from dibigan_tf.models.generator import build_generator
from dibigan_tf.schedule import exponential_weights
from dibigan_tf.training.common import Stage, TrainingError, batch_noise, build_optimizer
from dibigan_tf.training.loops import distributed_step, graph_function, run_phase


def build_networks(cfg: GanConfig, feature_dim: int, image_channels: int):
    g_kwargs = dict(feature_dim=feature_dim, latent_dim=cfg.latent_dim,
                    start_resolution=cfg.start_resolution, num_blocks=cfg.num_blocks,
                    channels=tuple(cfg.g_channels), image_channels=image_channels)
    if cfg.generator == "feature_conditional":
        g_kwargs.update(mapping_layers=cfg.mapping_layers, mapping_dim=cfg.mapping_dim,
                        mapping_lr_mul=cfg.mapping_lr_mul)
    generator = build_generator(cfg.generator, name="generator", **g_kwargs)
    ema = build_generator(cfg.generator, name="generator_ema", **g_kwargs)
    discriminator = ProgressiveDiscriminator(start_resolution=cfg.start_resolution,
                                             num_blocks=cfg.num_blocks,
                                             channels=tuple(cfg.d_channels),
                                             image_channels=image_channels, name="discriminator")
    for e, w in zip(ema.weights, generator.weights):
        e.assign(w)
    return generator, ema, discriminator


def resize_nearest(images, size):
    """Nearest-neighbour resize to `size` x `size` (an integer up-scaling of a PO-GAN stage)."""
    if images.shape[1] == size:
        return images
    factor = size // images.shape[1]
    return tf.repeat(tf.repeat(images, factor, axis=1), factor, axis=2)


def average_pool(images, size):
    if images.shape[1] == size:
        return images
    factor = images.shape[1] // size
    return tf.nn.avg_pool2d(images, factor, factor, "VALID")


def flow_input(images):
    """[-1, 1] images -> the flow's [-0.5, 0.5] pixel scale."""
    return images * 0.5


def feature_statistics(features, norm="global"):
    """(mean, scale) per dimension that turn matcher features into G's condition.

    ReLU features such as LeNet's all lie in one orthant, which leaves the AdaIN branch little
    contrast to start from, so each dimension is centred on its training mean. The scale:
    - "global": one scale for every dimension (the root mean variance), so that the condition has
      unit variance on average. A dimension that never fires on the training split (about a third
      of LeNet's 1024 do) stays harmless when a held-out image fires it.
    - "per_dim": each dimension's own standard deviation, floored at 10% of the root mean variance
      (without the floor, the old std + 1e-6 multiplied a held-out activation of such a unit by
      ~1e6).
    """
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"need a [N >= 2, D] feature matrix, got shape {features.shape}")
    mean = features.mean(axis=0)
    var = features.var(axis=0)
    rms = float(np.sqrt(var.mean())) or 1.0
    if norm == "global":
        scale = np.full_like(mean, rms)
    elif norm == "per_dim":
        scale = np.maximum(np.sqrt(var), 0.1 * rms)
    else:
        raise ValueError(f"feature_norm must be 'global' or 'per_dim', got {norm!r}")
    return mean.astype(np.float32), scale.astype(np.float32)


def biject_margin_from_data(flow, images_unit, labels, max_images=512, reading="spatial",
                            prior_table=None):
    """m of Eq. 5 when not given: the median Eq. 4 distance (under `reading`) between real
    images of different identities (so the hinge pushes reconstructions of different identities
    at least as far apart as typical real images are)."""
    x = images_unit[:max_images]
    z = flow.forward(flow_input(tf.constant(x)))[0]
    summary = losses.latent_summary(z, reading)
    # in blocks of rows: under "spatial_full" every pair holds a c x c matrix (512 x 512 pairs of
    # 48 x 48 for 64x64 faces would be 2.4 GB at once)
    d = np.concatenate([losses.pairwise_summary_w2([s[i:i + 32] for s in summary], summary,
                                                   reading).numpy()
                        for i in range(0, len(x), 32)])
    lab = labels[:max_images]
    if reading == "latent" and prior_table is not None:
        d = d + prior_table[lab[:, None], lab[None, :]]
    different = lab[:, None] != lab[None, :]
    return float(np.median(d[different]))


def check_reading_prior(reading, covariance):
    """The "latent" reading's covariance term is between H's diagonal class priors: a one-line
    TrainingError for any other prior (`rundir.check_config` asks before anything trains,
    `prior_table_for` of the prior it is given)."""
    if reading == "latent" and covariance != "diag":
        raise TrainingError(f"--biject_reading=latent needs H's diagonal class priors, not "
                            f"--flow_covariance={covariance} (or choose --biject_reading=spatial "
                            f"or spatial_full)")


def prior_table_for(prior, reading, flow):
    """The "latent" reading's [K, K] covariance term between identity priors
    (`losses.prior_w2_table`), or None for the other readings or without a prior."""
    if reading != "latent" or prior is None:
        return None
    check_reading_prior(reading, prior.covariance)
    positions = int(np.prod(flow.latent_shape[:-1]))
    return losses.prior_w2_table(np.exp(prior.log_scales.numpy()), positions)


class GanTrainer:
    """Holds G, G_ema, D, their optimizers and the frozen F^S and H; trains phase by phase."""

    def __init__(self, run_dir, strategy, cfg: GanConfig, images, features, labels,
                 student=None, flow=None, name="gan", prior=None):
        losses.check_biject_reading(cfg.biject_reading)
        self.cfg = cfg
        self.strategy = strategy
        self.images, self.features = images, features.astype(np.float32)
        self.labels = labels.astype(np.int64)
        self.full_resolution = images.shape[1]
        self.schedule = cfg.schedule()
        if self.schedule.resolution(cfg.num_blocks - 1) != self.full_resolution:
            raise ValueError(f"the last stage is {self.schedule.resolution(cfg.num_blocks - 1)}px"
                             f" but the images are {self.full_resolution}px: adjust "
                             f"start_resolution/num_blocks")
        if cfg.use_distill and student is None:
            raise ValueError("use_distill needs a student (or whitebox matcher) network")
        if cfg.use_biject and flow is None:
            raise ValueError("use_biject needs the bijection H")
        self.student, self.flow = student, flow
        mean, std = feature_statistics(self.features, cfg.feature_norm)
        with strategy.scope():
            self.feature_mean = tf.Variable(mean, trainable=False, name="feature_mean")
            self.feature_std = tf.Variable(std, trainable=False, name="feature_std")
        with strategy.scope(), precision.policy_scope(cfg.mixed_precision):
            self.generator, self.ema, self.discriminator = build_networks(
                cfg, features.shape[1], images.shape[-1])
        self.g_opt = build_optimizer(strategy, self.generator.trainable_variables,
                                     cfg.learning_rate, cfg.beta_1, cfg.beta_2,
                                     mixed_precision=cfg.mixed_precision)
        self.d_opt = build_optimizer(strategy, self.discriminator.trainable_variables,
                                     cfg.learning_rate, cfg.beta_1, cfg.beta_2,
                                     mixed_precision=cfg.mixed_precision)
        self.stage = Stage(run_dir, name, strategy, {
            "generator": self.generator, "generator_ema": self.ema,
            "discriminator": self.discriminator, "g_optimizer": self.g_opt,
            "d_optimizer": self.d_opt, "feature_mean": self.feature_mean,
            "feature_std": self.feature_std})
        self.margin = cfg.biject_margin
        table = prior_table_for(prior, cfg.biject_reading, flow) if cfg.use_biject else None
        self.prior_table = None
        if table is not None:
            if self.labels.max() >= table.shape[0]:
                raise ValueError(f"--biject_reading=latent: label {self.labels.max()} has no "
                                 f"prior in H ({table.shape[0]} identities)")
            with strategy.scope():
                self.prior_table = tf.Variable(table, trainable=False, name="prior_w2_table")
        if cfg.use_biject and self.margin < 0:
            self.margin = biject_margin_from_data(flow, uint8_to_unit(images).numpy(),
                                                  self.labels, reading=cfg.biject_reading,
                                                  prior_table=table)
        rng = np.random.default_rng(cfg.seed)
        self.preview_idx = rng.choice(len(images), 16, replace=False)
        self.preview_v = rng.standard_normal((16, cfg.latent_dim)).astype(np.float32)
        self.steps = {}   # phase index -> tf.function (for trace counting)

    # ------------------------------------------------------------------ one phase's step
    def make_step(self, phase):
        cfg, G, D = self.cfg, self.generator, self.discriminator
        stage, fade, batch = phase.stage, phase.fade, phase.batch_size
        res, full = phase.resolution, self.full_resolution
        g_vars = G.variables_for_stage(stage, fade_in=fade)
        d_vars = D.variables_for_stage(stage, fade_in=fade)
        student, flow, margin = self.student, self.flow, self.margin
        ema_beta = 0.5 ** (batch / max(cfg.ema_kimg * 1000.0, 1e-8))
        cached = self.uses_cached_targets(phase)

        def replica_step(data, alpha, weights):
            real_full = uint8_to_unit(data["images"])
            f, labels = self.condition(data["features"]), data["labels"]
            # v, the interpolation eps of Eq. 9 and the condition noise come with the batch
            # (noise_spec): the same draws on one device or split over replicas
            if cfg.condition_noise > 0:
                f += cfg.condition_noise * data["noise_condition"]
            real = average_pool(real_full, res)
            if fade:
                blurred = resize_nearest(average_pool(real, res // 2), res)
                real = blurred + (real - blurred) * alpha
            v = data["noise_v"]

            # ---- critic (Eq. 9)
            with tf.GradientTape() as tape:
                fake = G(v, f, stage=stage, alpha=alpha, training=True)
                d_real = D(real, stage=stage, alpha=alpha, training=True)
                d_fake = D(fake, stage=stage, alpha=alpha, training=True)
                eps = data["noise_eps"]
                gp = losses.gradient_penalty(lambda x: D(x, stage=stage, alpha=alpha,
                                                         training=True), real, fake, eps)
                d_ex = losses.critic_loss(d_real, d_fake, gp, cfg.gp_weight, cfg.drift)
                d_loss = tf.nn.compute_average_loss(d_ex, global_batch_size=batch)
                d_scaled = precision.scale_loss(self.d_opt, d_loss)
            self.d_opt.apply_gradients(zip(
                precision.gradients(tape, self.d_opt, d_scaled, d_vars), d_vars))

            # ---- generator (Eq. 8)
            out = {"d_loss": d_loss,
                   "gp": tf.reduce_sum(gp) / batch,
                   "wasserstein": tf.reduce_sum(d_real - d_fake) / batch}
            with tf.GradientTape() as tape:
                fake = G(v, f, stage=stage, alpha=alpha, training=True)
                terms = {}
                if cfg.use_adv:
                    terms["adversarial"] = losses.generator_adversarial(
                        D(fake, stage=stage, alpha=alpha, training=True))
                    out["adv"] = tf.reduce_sum(terms["adversarial"]) / batch
                if cfg.use_recon:
                    terms["recon"] = losses.reconstruction_l1(fake, real)
                    out["recon_l1"] = tf.reduce_sum(terms["recon"]) / batch
                if cfg.use_distill or cfg.use_biject:
                    fake_up = resize_nearest(fake, full)
                    if not cached:
                        real_up = tf.stop_gradient(resize_nearest(real, full))
                if cfg.use_distill:
                    s_fake = student(fake_up, training=False)
                    if cached:
                        s_real = [data[f"target_student_{j}"] for j in range(len(s_fake))]
                    else:
                        s_real = [tf.stop_gradient(t) for t in student(real_up, training=False)]
                    distill = losses.generator_distill_loss(
                        s_fake[:-1], s_real[:-1], s_fake[-1], s_real[-1],
                        tap_weights=[cfg.tap_weight] * (len(s_fake) - 1),
                        embedding_weight=cfg.embedding_weight)
                    terms["distill"] = distill
                    out["distill"] = tf.reduce_sum(distill) / batch
                    cos = 1.0 - tf.sqrt(losses.cosine_distill_loss(s_real[-1], s_fake[-1]))
                    out["student_cosine"] = tf.reduce_sum(cos) / batch
                if cfg.use_biject:
                    z_fake = flow.forward(flow_input(fake_up))[0]
                    z_real = (data["target_flow"] if cached
                              else flow.forward(flow_input(real_up))[0])
                    biject = losses.biject_loss(z_fake, z_real, labels, margin,
                                                reading=cfg.biject_reading,
                                                prior_table=self.prior_table)
                    terms["biject"] = biject
                    out["biject"] = tf.reduce_sum(biject) / batch
                lambdas = {"biject": weights[0], "distill": weights[1],
                           "adversarial": weights[2], "recon": cfg.recon_weight * weights[3]}
                if cfg.diversity_weight > 0:
                    # a second draw of v for the same features (losses.diversity_sensitive)
                    v_other = data["noise_v_other"]
                    fake_other = G(v_other, f, stage=stage, alpha=alpha, training=True)
                    terms["diversity"] = losses.diversity_sensitive(
                        tf.cast(fake, tf.float32), tf.cast(fake_other, tf.float32), v, v_other,
                        cfg.diversity_cap)
                    out["diversity"] = -tf.reduce_sum(terms["diversity"]) / batch
                    lambdas["diversity"] = cfg.diversity_weight * weights[3]
                total = losses.generator_loss(terms, lambdas)
                g_loss = tf.nn.compute_average_loss(total, global_batch_size=batch)
                g_scaled = precision.scale_loss(self.g_opt, g_loss)
            self.g_opt.apply_gradients(zip(
                precision.gradients(tape, self.g_opt, g_scaled, g_vars), g_vars))
            out["g_loss"] = g_loss
            return out

        def ema_update():
            for e, w in zip(self.ema.trainable_variables, G.trainable_variables):
                e.assign(w + (e - w) * ema_beta)

        return distributed_step(self.strategy, replica_step, jit_compile=cfg.jit_compile,
                                post_fn=ema_update)

    def noise_spec(self) -> dict:
        """The random inputs of a G+D step, drawn per global batch in the input pipeline
        (common.array_dataset): G's latent v, the gradient penalty's interpolation weights, the
        condition noise when --condition_noise > 0 and a second v when --diversity_weight > 0."""
        spec = {"noise_v": ((self.cfg.latent_dim,), "normal"), "noise_eps": ((), "uniform")}
        if self.cfg.condition_noise > 0:
            spec["noise_condition"] = ((self.features.shape[1],), "normal")
        if self.cfg.diversity_weight > 0:
            # sorts after the others: their draws stay those of a run without the term
            spec["noise_v_other"] = ((self.cfg.latent_dim,), "normal")
        return spec

    def with_noise(self, batch: dict, batch_number: int = 0, seed: int = 0) -> dict:
        """A hand-made batch dict with its step noise added (tests, benchmarks)."""
        n = int(batch["images"].shape[0])
        return dict(batch, **batch_noise(self.noise_spec(), n, seed, batch_number))

    def uses_cached_targets(self, phase) -> bool:
        """In a stable phase the real image a G step compares with is fixed per training image
        (the average-pooled image, no alpha blend), so its F^S outputs and H latent are computed
        once per phase (`real_targets`) instead of at every step: the same losses, two fewer
        network passes per step. Fade-ins blend by alpha and compute them in the step."""
        return (self.cfg.cache_real_targets and not phase.fade
                and (self.cfg.use_distill or self.cfg.use_biject))

    def real_targets(self, resolution, batch_size=200) -> dict:
        """{"target_student_j": F^S outputs, "target_flow": H latents} of every training image
        average-pooled to `resolution` and upsampled to full size, as in the G step."""
        student, flow, full = self.student, self.flow, self.full_resolution

        # One trace for every batch, the last (shorter) one included.
        def targets(images):
            real_up = resize_nearest(average_pool(uint8_to_unit(images), resolution), full)
            out = {}
            if self.cfg.use_distill:
                for j, t in enumerate(student(real_up, training=False)):
                    out[f"target_student_{j}"] = t
            if self.cfg.use_biject:
                out["target_flow"] = flow.forward(flow_input(real_up))[0]
            return out

        targets = graph_function(targets, input_signature=[
            tf.TensorSpec([None] + list(self.images.shape[1:]), tf.uint8)])
        parts = [targets(tf.constant(self.images[i:i + batch_size]))
                 for i in range(0, len(self.images), batch_size)]
        return {k: np.concatenate([p[k].numpy() for p in parts]) for k in parts[0]}

    def condition(self, features):
        """Raw matcher features -> G's conditioning input (standardised)."""
        return (features - self.feature_mean) / self.feature_std

    def step_args(self, seen):
        alpha = self.schedule.alpha(seen)
        w = exponential_weights(self.schedule.scale(seen), self.cfg.num_blocks - 1,
                                self.cfg.alpha_b, self.cfg.beta_adv)
        return (tf.constant(alpha, tf.float32),
                tf.constant([w.biject, w.distill, w.adversarial, w.recon], tf.float32))

    # ------------------------------------------------------------------ previews
    def preview(self, stage, alpha=1.0):
        """EMA generator's images for 16 fixed training features, with their real images."""
        fake = self.ema(tf.constant(self.preview_v),
                        self.condition(tf.constant(self.features[self.preview_idx])),
                        stage=stage, alpha=tf.constant(alpha, tf.float32), training=False)
        fake = resize_nearest(fake, self.full_resolution).numpy()
        real = self.images[self.preview_idx]
        cells = np.concatenate([real, to_uint8(fake)], axis=0)
        return image_grid(cells, 16)

    # ------------------------------------------------------------------ training
    def train(self, **loop_kwargs):
        stage = self.stage
        stage.restore()
        if stage.is_done():
            return
        arrays = {"images": self.images, "features": self.features, "labels": self.labels}
        total = self.schedule.total_images
        for phase in self.schedule.phases():
            if int(stage.images_seen.numpy()) >= phase.end_image:
                continue
            step = self.make_step(phase)
            self.steps[phase.index] = step
            phase_arrays = arrays
            if self.uses_cached_targets(phase):
                phase_arrays = dict(arrays, **self.real_targets(phase.resolution))
            image_every = max(self.cfg.image_every, 1)

            def on_log(step_number, values, phase=phase):
                if step_number % image_every < self.cfg.log_every:
                    seen = int(stage.images_seen.numpy())
                    stage.images(f"preview/{phase.resolution}px",
                                 self.preview(phase.stage, self.schedule.alpha(seen)), step_number)
                    stage.scalars({"alpha": self.schedule.alpha(seen),
                                   "scale_R": self.schedule.scale(seen)}, step_number)

            run_phase(stage, step, phase_arrays, phase.batch_size, phase.end_image,
                      seed=self.cfg.seed + phase.index, total_images=total,
                      step_args=self.step_args, log_every=self.cfg.log_every, on_log=on_log,
                      label=phase.name, noise=self.noise_spec(), **loop_kwargs)
            stage.images(f"preview/{phase.resolution}px", self.preview(phase.stage),
                         int(stage.step.numpy()))
            stage.save()
        stage.mark_done({"biject_margin": self.margin})

    # ------------------------------------------------------------------ inference
    def reconstruct(self, features, seed=0, batch_size=250, v=None):
        """uint8 reconstructions G_ema(v, f) at full resolution, v ~ N(0, I) with a fixed seed
        (or the given v, one row per feature)."""
        rng = np.random.default_rng(seed)
        last = self.cfg.num_blocks - 1
        if not hasattr(self, "_reconstruct_fn"):
            self._reconstruct_fn = graph_function(
                lambda v, f: self.ema(v, self.condition(f), stage=last, alpha=1.0,
                                      training=False), reduce_retracing=True)
        out = []
        for i in range(0, len(features), batch_size):
            f = features[i:i + batch_size].astype(np.float32)
            vv = (rng.standard_normal((len(f), self.cfg.latent_dim)).astype(np.float32)
                  if v is None else np.asarray(v[i:i + batch_size], np.float32))
            out.append(to_uint8(self._reconstruct_fn(tf.constant(vv), tf.constant(f)).numpy()))
        return np.concatenate(out)


class TrainedGenerator:
    """The EMA generator of a finished (or interrupted) run, for reconstruction outside training:
    `TrainedGenerator(run_dir)(features, seed)` -> uint8 images at full resolution.

    G's structure is rebuilt from the run's `config.json` (its `gan` section), the feature size
    and the condition's mean/scale are read from the `gan` checkpoint, and only G_ema's weights
    are restored (every one of them is checked to be in the checkpoint)."""

    def __init__(self, run_dir: str, stage_name: str = "gan"):
        import json
        import os
        config_path = os.path.join(run_dir, "config.json")
        ckpt = tf.train.latest_checkpoint(os.path.join(run_dir, stage_name, "ckpt"))
        if not os.path.exists(config_path) or ckpt is None:
            raise ValueError(f"{run_dir}: not a run with a trained generator (needs config.json "
                             f"and {stage_name}/ckpt)")
        with open(config_path) as handle:
            saved = json.load(handle)
        fields = {f.name for f in dataclasses.fields(GanConfig)}
        self.cfg = GanConfig(**{k: v for k, v in saved["gan"].items() if k in fields})
        reader = tf.train.load_checkpoint(ckpt)
        mean = reader.get_tensor("feature_mean/.ATTRIBUTES/VARIABLE_VALUE")
        std = reader.get_tensor("feature_std/.ATTRIBUTES/VARIABLE_VALUE")
        self.feature_dim = int(mean.shape[-1])
        self.channels = 1 if saved.get("dataset", "digits") == "digits" else 3
        _, self.ema, _ = build_networks(self.cfg, self.feature_dim, self.channels)
        self.feature_mean = tf.constant(mean)
        self.feature_std = tf.constant(std)
        status = tf.train.Checkpoint(generator_ema=self.ema).restore(ckpt)
        status.expect_partial()
        status.assert_existing_objects_matched()
        self.resolution = self.cfg.schedule().resolution(self.cfg.num_blocks - 1)
        last = self.cfg.num_blocks - 1
        self._fn = graph_function(lambda v, f: self.ema(
            v, (f - self.feature_mean) / self.feature_std, stage=last, alpha=1.0,
            training=False))

    def float_images(self, features, v):
        """G_ema's float output in [-1, 1] for given features and v (one batch)."""
        return self._fn(tf.constant(np.asarray(v, np.float32)),
                        tf.constant(np.asarray(features, np.float32))).numpy()

    def __call__(self, features, seed=0, batch_size=250, v=None):
        features = np.asarray(features, np.float32)
        if features.ndim != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(f"the generator takes {self.feature_dim}-D features, got "
                             f"{features.shape}")
        rng = np.random.default_rng(seed)
        out = []
        for i in range(0, len(features), batch_size):
            f = features[i:i + batch_size]
            vv = (rng.standard_normal((len(f), self.cfg.latent_dim)).astype(np.float32)
                  if v is None else np.asarray(v[i:i + batch_size], np.float32))
            out.append(to_uint8(self._fn(tf.constant(vv), tf.constant(f)).numpy()))
        return np.concatenate(out)

"""The diversity-sensitive extension of Eq. 8 (--diversity_weight): in G's step it compares two
draws of v for the same features, reports the mean capped ratio, and its gradient makes G's image
depend more on v than the same steps without it."""
import dataclasses

import numpy as np
import tensorflow as tf

from dibigan_tf.keras_compat import keras
from dibigan_tf.training.common import make_strategy
from dibigan_tf.training.gan import GanConfig, GanTrainer
from tests.support import TINY_GAN, stable_phase, tiny_gan_batch, tiny_gan_data


def _v_spread(trainer, feats, stage):
    """Mean absolute change of G's (not the EMA's) image between two fixed draws of v."""
    rng = np.random.default_rng(7)
    f = trainer.condition(tf.constant(feats))
    a, b = (tf.constant(rng.standard_normal((len(feats), trainer.cfg.latent_dim)), tf.float32)
            for _ in range(2))
    out = [trainer.generator(v, f, stage=stage, alpha=1.0, training=False).numpy()
           for v in (a, b)]
    return float(np.abs(out[0] - out[1]).mean())


def test_diversity_term_makes_g_use_v(tmp_path):
    _, images, feats, labels = tiny_gan_data()
    # L_recon alone pulls every draw of v to the one real image: G learns to ignore v
    base = GanConfig(**dict(TINY_GAN, use_biject=False, use_distill=False, use_adv=False,
                            use_recon=True, recon_weight=1.0, learning_rate=0.01,
                            diversity_cap=10.0))
    spreads, reported = {}, {}
    for name, weight in (("off", 0.0), ("on", 1.0)):
        keras.utils.set_random_seed(0)
        cfg = dataclasses.replace(base, diversity_weight=weight)
        trainer = GanTrainer(str(tmp_path / name), make_strategy("default"), cfg, images,
                             feats, labels)
        assert ("noise_v_other" in trainer.noise_spec()) == (weight > 0)
        stable = stable_phase(trainer)
        step = trainer.make_step(stable)
        before = _v_spread(trainer, feats, stable.stage)
        for k in range(15):
            out = step(tiny_gan_batch(trainer, images, feats, labels, k),
                       *trainer.step_args(stable.start_image))
        spreads[name] = _v_spread(trainer, feats, stable.stage) / before
        reported[name] = {k: float(v) for k, v in out.items()}
    assert "diversity" not in reported["off"]
    assert reported["on"]["diversity"] > 0
    # the same starting G and data: with the term, G's image changes more with v than without
    assert spreads["on"] > 1.5 * spreads["off"], spreads


def test_diversity_report_is_the_capped_ratio(tmp_path):
    keras.utils.set_random_seed(0)
    _, images, feats, labels = tiny_gan_data()
    cfg = GanConfig(**dict(TINY_GAN, use_biject=False, use_distill=False, use_adv=False,
                           diversity_weight=1.0, diversity_cap=1e-6))
    trainer = GanTrainer(str(tmp_path), make_strategy("default"), cfg, images, feats, labels)
    stable = stable_phase(trainer)
    out = trainer.make_step(stable)(tiny_gan_batch(trainer, images, feats, labels),
                                    *trainer.step_args(stable.start_image))
    # every example's ratio is above a cap this small: the report is the cap itself
    np.testing.assert_allclose(float(out["diversity"]), 1e-6, rtol=1e-4)

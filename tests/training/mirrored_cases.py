"""The MirroredStrategy cases of tests/training/test_mirrored.py, run in processes whose CPU is
split into logical devices, and (the four-device case, with the cluster strategy in place of
MirroredStrategy) in the worker processes of tests/training/test_multi_worker.py."""
import numpy as np
import tensorflow as tf

from dibigan_tf.keras_compat import keras


def two_device_case(out_dir, make_strategy):
    """Every trainable's whole training (F^S, H, then G/D over its three phases) under
    MirroredStrategy on two devices: the replicas, G/D's step count, the traces per phase and
    whether G's weights stayed finite."""
    from dibigan_tf.training.flow import train_flow
    from dibigan_tf.training.gan import GanConfig, GanTrainer
    from dibigan_tf.training.student import train_student
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, 16, 16, 1)).astype(np.uint8)
    feats = rng.standard_normal((64, 12)).astype(np.float32)
    labels = np.repeat(np.arange(4), 16)
    # (equality with the default strategy: the four-device test below, step by step)
    strategy = make_strategy("mirrored")
    keras.utils.set_random_seed(0)
    student, _ = train_student(out_dir, strategy, images, feats, width=4, epochs=1,
                               batch_size=16, max_shift=0, seed=0, log_every=1)
    flow, prior = train_flow(out_dir, strategy, images, labels, 4, num_steps=2,
                             hidden_channels=4, num_res_blocks=1, epochs=1, batch_size=16,
                             log_every=1)
    cfg = GanConfig(start_resolution=8, num_blocks=2, g_channels=(4, 4), d_channels=(4, 4),
                    mapping_layers=2, mapping_dim=8, latent_dim=4, stable_images=(32, 32),
                    fade_images=(0, 32), batch_sizes=(16, 16), log_every=1, image_every=2)
    trainer = GanTrainer(out_dir, strategy, cfg, images, feats, labels,
                         student=student, flow=flow)
    trainer.train()
    return {"replicas": strategy.num_replicas_in_sync,
               "gan_steps": int(trainer.stage.step.numpy()),
               "traces": [s.trace_counter["traces"] for s in trainer.steps.values()],
               "finite": bool(all(np.isfinite(v.numpy()).all()
                                  for v in trainer.generator.weights))}


def four_device_case(out_dir, make_strategy, with_flow_step=True):
    """One step of F^S, of H (`with_flow_step`) and a fade-in G+D step under `make_strategy(
    "mirrored")` and under the default strategy, from the same weights and batch: the largest
    differences between the two strategies' weights and losses."""
    from dibigan_tf.models.flow import dequantize, nll_loss
    from dibigan_tf.training.common import array_dataset
    from dibigan_tf.training.flow import make_flow
    from dibigan_tf.training.gan import GanConfig, GanTrainer
    from dibigan_tf.training.loops import distributed_step
    from dibigan_tf.training.student import train_student
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 16, 16, 1)).astype(np.uint8)
    x_fixed = dequantize(tf.constant(images), seed=7)
    feats = rng.standard_normal((16, 12)).astype(np.float32)
    labels = np.repeat(np.arange(4), 4)
    weights = {}
    for name in ("default", "mirrored"):
        strategy = make_strategy(name)
        keras.utils.set_random_seed(0)
        # (random shifts on: the shift is drawn per global batch in the input pipeline; Adam's
        # first step is lr * g / (|g| + eps), so a component with |g| ~ 1e-10 summed in another
        # order moves by up to ~lr / 100: lr 1e-4 keeps that under the tolerance)
        student, s_stage = train_student(f"{out_dir}/{name}", strategy, images, feats, width=4,
                                         epochs=1, batch_size=16, max_shift=2, seed=0,
                                         learning_rate=1e-4)
        # H: the same step on the same dequantised batch (train_flow draws its dequantisation
        # noise from each replica's own random stream, so its noise differs between strategies)
        keras.utils.set_random_seed(0)
        flow, prior = make_flow(strategy, (16, 16, 1), 4, num_steps=2, hidden_channels=4,
                                num_res_blocks=1)
        flow.initialize(x_fixed)
        prior.initialize_from(flow.forward(x_fixed)[0], labels)
        if not with_flow_step:
            variables = []
        else:
            variables = flow.trainable_variables + prior.trainable_variables
            # SGD: Adam's first step is lr * sign(g), so gradient components that are ~0
            # (summed in another order over 4 replicas) could flip sign; SGD's update is
            # linear in g
            with strategy.scope():
                opt = keras.optimizers.SGD(0.1)
                opt.build(variables)

            def replica_step(batch):
                with tf.GradientTape() as tape:
                    nll = nll_loss(flow, prior, batch["x"], batch["labels"])
                    loss = tf.nn.compute_average_loss(nll, global_batch_size=16)
                opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
                return {"loss": loss}

            step = distributed_step(strategy, replica_step)
            data = array_dataset({"x": x_fixed.numpy(), "labels": labels.astype(np.int64)},
                                 16, 0, 0, strategy)
            step(next(iter(data)))
        weights[name] = [v.numpy() for v in student.weights] + [v.numpy() for v in variables]
        weights[name + "_steps"] = int(s_stage.step.numpy())
        weights[name + "_replicas"] = strategy.num_replicas_in_sync

        # G+D: one fade-in step of the trainer's own step function (alpha blend, Eq. 9 with its
        # gradient penalty and minibatch stddev, Eq. 8 with F^S and H on the fakes, the EMA
        # update, the diversity extension), its v / second v / eps / condition noise drawn in the
        # input pipeline. SGD for the same reason as above (and SGD's update shows a gradient
        # mis-scaled by the replica count).
        keras.utils.set_random_seed(0)
        cfg = GanConfig(start_resolution=8, num_blocks=2, g_channels=(8, 8), d_channels=(8, 8),
                        mapping_layers=2, mapping_dim=8, latent_dim=4, stable_images=(16, 16),
                        fade_images=(0, 16), batch_sizes=(16, 16), biject_margin=1.0,
                        condition_noise=0.1, diversity_weight=0.5, cache_real_targets=False,
                        ema_kimg=0.01)
        trainer = GanTrainer(f"{out_dir}/{name}-gan", strategy, cfg, images, feats, labels,
                             student=student, flow=flow)
        with strategy.scope():
            trainer.g_opt = keras.optimizers.SGD(0.05)
            trainer.g_opt.build(trainer.generator.trainable_variables)
            trainer.d_opt = keras.optimizers.SGD(0.05)
            trainer.d_opt.build(trainer.discriminator.trainable_variables)
        fade = [p for p in trainer.schedule.phases() if p.fade][0]
        gan_step = trainer.make_step(fade)
        gan_data = array_dataset({"images": images, "features": feats,
                                  "labels": labels.astype(np.int64)}, 16, 0, 0, strategy,
                                 noise=trainer.noise_spec())
        # alpha 0.5: both the new block and the faded-out path get gradients
        losses_out = gan_step(next(iter(gan_data)), tf.constant(0.5),
                              trainer.step_args(fade.start_image)[1])
        weights[name + "_gan"] = [v.numpy() for v in trainer.generator.weights
                                  + trainer.discriminator.weights + trainer.ema.weights]
        weights[name + "_gan_losses"] = {k: float(v) for k, v in losses_out.items()}
    diffs = [float(np.abs(a - b).max()) for a, b in zip(weights["default"], weights["mirrored"])]
    gan_diffs = [float(np.abs(a - b).max())
                 for a, b in zip(weights["default_gan"], weights["mirrored_gan"])]
    n_student = len(student.weights)
    return {"max_diff": max(diffs), "count": len(diffs),
            "student_diff": max(diffs[:n_student]),
            "flow_diff": max(diffs[n_student:]) if with_flow_step else 0.0,
            "gan_diff": max(gan_diffs), "gan_count": len(gan_diffs),
            "gan_losses": [weights["default_gan_losses"], weights["mirrored_gan_losses"]],
            "steps": weights["mirrored_steps"], "replicas": weights["mirrored_replicas"]}

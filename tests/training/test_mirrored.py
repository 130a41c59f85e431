"""MirroredStrategy on one CPU split into logical devices (which must be configured before
TensorFlow initialises, hence a subprocess): every trainable's whole training runs distributed
(two devices, each G/D phase traced once), and one step of each on four devices equals the
default strategy's."""
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = textwrap.dedent("""
    import json, sys
    from dibigan_tf.keras_compat import keras
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from dibigan_tf.training.common import make_strategy
    from dibigan_tf.training.gan import GanConfig, GanTrainer
    from dibigan_tf.training.student import train_student
    from dibigan_tf.training.flow import train_flow
    out_dir = sys.argv[1]
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
    results = {"replicas": strategy.num_replicas_in_sync,
               "gan_steps": int(trainer.stage.step.numpy()),
               "traces": [s.trace_counter["traces"] for s in trainer.steps.values()],
               "finite": bool(all(np.isfinite(v.numpy()).all()
                                  for v in trainer.generator.weights))}
    print("RESULTS " + json.dumps(results))
""")


def test_every_trainable_under_mirrored_strategy_on_two_logical_cpus(tmp_path):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True,
                          text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULTS ")][-1]
    import json
    r = json.loads(line[len("RESULTS "):])
    assert r["replicas"] == 2
    # 2 + 2 + 2 steps of 16 over the three phases; one trace per phase
    assert r["gan_steps"] == 6
    assert r["traces"] == [1, 1, 1]
    assert r["finite"]


MULTI_WORKER = textwrap.dedent("""
    import json, sys
    from dibigan_tf.keras_compat import keras
    import numpy as np, tensorflow as tf
    from dibigan_tf.training.common import make_strategy
    strategy = make_strategy("multi_worker")        # first: before any TensorFlow operation
    from dibigan_tf.training.student import train_student
    out_dir = sys.argv[1]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, 16, 16, 1)).astype(np.uint8)
    feats = rng.standard_normal((64, 12)).astype(np.float32)
    results = {"replicas": strategy.num_replicas_in_sync}
    for name, s in (("multi_worker", strategy), ("default", make_strategy("default"))):
        keras.utils.set_random_seed(0)
        student, stage = train_student(f"{out_dir}/{name}", s, images, feats, width=4,
                                       epochs=1, batch_size=16, max_shift=0, seed=0, log_every=1)
        results[name] = [float(v.numpy().sum()) for v in student.trainable_variables]
        results[name + "_steps"] = int(stage.step.numpy())
    print("RESULTS " + json.dumps(results))
""")


def test_multi_worker_strategy_without_tf_config_is_one_local_worker(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    proc = subprocess.run([sys.executable, "-c", MULTI_WORKER, str(tmp_path)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    import json
    import numpy as np
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULTS ")][-1]
    r = json.loads(line[len("RESULTS "):])
    assert r["replicas"] == 1 and r["multi_worker_steps"] == r["default_steps"] == 4
    np.testing.assert_allclose(r["multi_worker"], r["default"], rtol=2e-4, atol=2e-4)


FOUR = textwrap.dedent("""
    import json, sys
    from dibigan_tf.keras_compat import keras
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 4)
    from dibigan_tf.training.common import make_strategy
    from dibigan_tf.training.student import train_student
    from dibigan_tf.training.flow import make_flow
    from dibigan_tf.models.flow import dequantize, nll_loss
    from dibigan_tf.training.common import array_dataset
    from dibigan_tf.training.loops import distributed_step
    from dibigan_tf.training.gan import GanConfig, GanTrainer
    out_dir = sys.argv[1]
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
        variables = flow.trainable_variables + prior.trainable_variables
        # SGD: Adam's first step is lr * sign(g), so gradient components that are ~0 (summed in
        # another order over 4 replicas) could flip sign; SGD's update is linear in g
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
        data = array_dataset({"x": x_fixed.numpy(), "labels": labels.astype(np.int64)}, 16, 0,
                             0, strategy)
        step(next(iter(data)))
        weights[name] = [v.numpy() for v in student.weights] + [v.numpy() for v in variables]
        weights[name + "_steps"] = int(s_stage.step.numpy())
        weights[name + "_replicas"] = strategy.num_replicas_in_sync

        # G+D: one fade-in step of the trainer's own step function (alpha blend, Eq. 9 with its
        # gradient penalty and minibatch stddev, Eq. 8 with F^S and H on the fakes, the EMA
        # update), its v / eps / condition noise drawn in the input pipeline. SGD for the same
        # reason as above (and SGD's update shows a gradient mis-scaled by the replica count).
        keras.utils.set_random_seed(0)
        cfg = GanConfig(start_resolution=8, num_blocks=2, g_channels=(8, 8), d_channels=(8, 8),
                        mapping_layers=2, mapping_dim=8, latent_dim=4, stable_images=(16, 16),
                        fade_images=(0, 16), batch_sizes=(16, 16), biject_margin=1.0,
                        condition_noise=0.1, cache_real_targets=False, ema_kimg=0.01)
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
    print("RESULTS " + json.dumps({"max_diff": max(diffs), "count": len(diffs),
                                   "student_diff": max(diffs[:n_student]),
                                   "flow_diff": max(diffs[n_student:]),
                                   "gan_diff": max(gan_diffs), "gan_count": len(gan_diffs),
                                   "gan_losses": [weights["default_gan_losses"],
                                                  weights["mirrored_gan_losses"]],
                                   "steps": weights["mirrored_steps"],
                                   "replicas": weights["mirrored_replicas"]}))
""")


def test_one_step_on_four_logical_devices_equals_the_default_strategy(tmp_path):
    proc = subprocess.run([sys.executable, "-c", FOUR, str(tmp_path)], capture_output=True,
                          text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    import json
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULTS ")][-1]
    r = json.loads(line[len("RESULTS "):])
    print(line)   # the measured differences (pytest -s)
    assert r["replicas"] == 4 and r["steps"] == 1 and r["count"] > 20
    assert r["max_diff"] < 1e-5, r   # every weight of F^S (incl. BN statistics), H and priors
    # every weight of G, D and G's EMA after one fade-in G+D step
    assert r["gan_count"] > 30 and r["gan_diff"] < 1e-5, r
    default_losses, mirrored_losses = r["gan_losses"]
    for key, value in default_losses.items():
        assert abs(value - mirrored_losses[key]) < 1e-4 * max(1.0, abs(value)), (key, r)

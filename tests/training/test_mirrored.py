"""MirroredStrategy on one CPU split into logical devices: every trainable's whole training runs
distributed (two devices, each G/D phase traced once), and one step of each on four devices
equals the default strategy's (the cases are in tests/training/mirrored_cases.py).

Each case runs in a process of its own (a fork of tests/forkserver.py, whose TensorFlow has
not initialised). The logical devices must be configured before
TensorFlow initialises, and two MirroredStrategy instances of different sizes cannot share a
process: each numbers its collective groups from 1, so the second one's all-gather joins the
first one's group and TensorFlow cancels the step ("joining a group with size 4, but that group
has size 2")."""
import json
import os
import sys
import textwrap

from tests import forkserver
from tests.support import ROOT


def _case(tmp_path, devices, call):
    """Runs `call` (a mirrored_cases call on `out_dir` and `make_strategy`) in a fresh process
    whose CPU is split into `devices` logical devices; returns its result dict."""
    script = textwrap.dedent(f"""
        import json, sys
        from dibigan_tf import keras_compat  # selects Keras 2 before TF loads
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * {devices})
        from dibigan_tf.training.common import make_strategy
        from tests.training.mirrored_cases import four_device_case, two_device_case
        out_dir = sys.argv[1]
        print("RESULTS " + json.dumps({call}))
        """)
    proc = forkserver.run([sys.executable, "-c", script, str(tmp_path)], timeout=900, cwd=ROOT)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULTS ")][-1]
    print(line)   # the measured differences (pytest -s)
    return json.loads(line[len("RESULTS "):])


def test_every_trainable_under_mirrored_strategy_on_two_logical_cpus(tmp_path):
    r = _case(tmp_path, 2, "two_device_case(out_dir, make_strategy)")
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
    proc = forkserver.run([sys.executable, "-c", MULTI_WORKER, str(tmp_path)], timeout=600,
                          cwd=ROOT, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    import numpy as np
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULTS ")][-1]
    r = json.loads(line[len("RESULTS "):])
    assert r["replicas"] == 1 and r["multi_worker_steps"] == r["default_steps"] == 4
    np.testing.assert_allclose(r["multi_worker"], r["default"], rtol=2e-4, atol=2e-4)


def test_one_step_on_four_logical_devices_equals_the_default_strategy(tmp_path):
    r = _case(tmp_path, 4, "four_device_case(out_dir, make_strategy)")
    assert r["replicas"] == 4 and r["steps"] == 1 and r["count"] > 20
    assert r["max_diff"] < 1e-5, r   # every weight of F^S (incl. BN statistics), H and priors
    # every weight of G, D and G's EMA after one fade-in G+D step
    assert r["gan_count"] > 30 and r["gan_diff"] < 1e-5, r
    default_losses, mirrored_losses = r["gan_losses"]
    for key, value in default_losses.items():
        assert abs(value - mirrored_losses[key]) < 1e-4 * max(1.0, abs(value)), (key, r)

"""Train DiBiGAN end to end (blackbox mode by default) and write the run's report.

    python experiments/train.py --flagfile=experiments/flagfiles/digits_blackbox.flags

Every stage checkpoints under --checkpoint_dir/--run_name; running the same command again resumes
where it stopped (finished stages are loaded, the interrupted one continues from its last step).
"""
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dibigan_tf import keras_compat  # noqa: E402,F401  (selects Keras 2 before TF loads)
from experiments.matcher_flags import matcher_config  # noqa: E402  (defines the matcher flags)
from experiments.config_flags import FlagError, config_from_flags, define_flags  # noqa: E402

FLAGS = flags.FLAGS

# Every setting of the run is a flag generated from its field in dibigan_tf/config.py (default,
# help and allowed values written there once); the matcher and face flags come with
# matcher_flags. Only what is not a setting of the run is defined here.
define_flags(groups=("run",))
flags.DEFINE_integer("cpu_replicas", 0, "Split the CPU into this many logical devices (tests "
                     "and CPU runs of --strategy=mirrored).")
# Test hooks: how a run is driven in the crash-safety tests, not settings of the run (they are
# not in its config.json); passed to the training loops (training/loops.run_phase).
flags.DEFINE_integer("stop_after_steps", 0, "Test hook: stop the GAN stage cleanly after this "
                     "many steps in this process (to test resumption).", lower_bound=0)
flags.DEFINE_string("inject_nan", "", "Test hook (fault injection): '<stage>:<step>' makes that "
                    "step's first loss NaN (the run must stop, naming it, with the last good "
                    "checkpoint kept).")
flags.DEFINE_enum("stage", "all", ["all", "align", "features", "student", "flow", "figure3"],
                  "all: every stage and the report; align: only the face alignment (counts and "
                  "photos/s); features: only F's answers for every image, "
                  "into the feature store; student: only F and F^S, with F^S measured "
                  "on held-out people in <run>/student/metrics.json; flow: only H, with held-out bits per "
                  "dimension in <run>/flow/metrics.json; figure3: the paper's Figure 3 (a second "
                  "G trained without L_biject, compared with the run's G) in <run>/report/.")


def build_config():
    """RunConfig from the flags, after the checks that need more than one flag."""
    from dibigan_tf.config import GanConfig
    n = FLAGS.num_blocks
    for name in ("g_channels", "d_channels", "stable_images", "fade_images"):
        if len(getattr(FLAGS, name)) != n:
            raise app.UsageError(f"--{name} needs {n} values (one per block), got "
                                 f"{getattr(FLAGS, name)}")
    if FLAGS.batch_sizes and len(FLAGS.batch_sizes) != n:
        raise app.UsageError(f"--batch_sizes needs {n} values, got {FLAGS.batch_sizes}")
    dataset = FLAGS.dataset
    if FLAGS.data_dir and dataset == "digits":
        if not FLAGS["dataset"].present:
            dataset = "faces"
        else:
            raise app.UsageError("--data_dir is for the face datasets (digits are embedded)")
    if dataset != "digits" and FLAGS.matcher == "lenet":
        raise app.UsageError(f"--dataset={dataset} needs a face matcher: --matcher=dlib (or "
                             f"dlib_keras, onnx, keras, savedmodel, http)")
    try:
        gan = config_from_flags(GanConfig, "gan", seed=FLAGS.seed + 3)
        matcher = matcher_config()
        return config_from_flags(dataset=dataset, gan=gan, matcher=matcher)
    except FlagError as error:
        raise app.UsageError(str(error)) from None


def _test_hooks() -> dict:
    """The test hooks as the training loops' keyword arguments; --stop_after_steps only for the
    stages that train G/D (stages.train_stages applies it to G/D alone)."""
    hooks = {}
    if FLAGS.inject_nan:
        hooks["inject_nan"] = FLAGS.inject_nan
    if FLAGS.stop_after_steps and FLAGS.stage in ("all", "figure3"):
        hooks["stop_after_steps"] = FLAGS.stop_after_steps
    return hooks


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import tensorflow as tf
    if FLAGS.cpu_replicas:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * FLAGS.cpu_replicas)
    from dibigan_tf.data.base import DataError
    from dibigan_tf.matchers.base import MatcherError
    from dibigan_tf.training.common import StopRequested, TrainingError
    from dibigan_tf.training.pipeline import (run_align, run_blackbox, run_features,
                                             run_figure3, run_flow, run_student)
    from dibigan_tf.training.rundir import check_config
    try:
        cfg = build_config()
        check_config(cfg, FLAGS.stage)   # every check that needs no data, before any work
    except (MatcherError, TrainingError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        metrics = {"flow": run_flow, "figure3": run_figure3, "all": run_blackbox,
                   "student": run_student, "features": run_features,
                   "align": run_align}[FLAGS.stage](cfg, _test_hooks())
    except StopRequested as stop:
        print(f"stopped: {stop}")
        return 3
    except (DataError, MatcherError, TrainingError) as error:
        print(f"error: {error}", file=sys.stderr)   # once (absl's log would print it again)
        return 2
    keys = ("real_verification_accuracy", "recon_verification_accuracy",
            "recon_class_agreement", "feature_cosine_mean", "flow_bits_per_dim",
            "blackbox_queries", "seconds_total")
    if FLAGS.stage not in ("student", "features", "align"):   # those print all their keys below
        print("\n".join(f"{k}: {metrics[k]:.4f}" if isinstance(metrics[k], float)
                        else f"{k}: {metrics[k]}" for k in keys if k in metrics))
    if FLAGS.stage == "figure3":
        for key, value in sorted(metrics.items()):
            print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
        print(f"figure: {os.path.join(cfg.checkpoint_dir, cfg.run_name, 'report', 'figure3.png')}")
        return 0
    if FLAGS.stage in ("student", "features", "align"):
        for key, value in sorted(metrics.items()):
            if not isinstance(value, dict):
                print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
        if FLAGS.stage == "student":
            print(f"metrics: {os.path.join(cfg.checkpoint_dir, cfg.run_name, 'student', 'metrics.json')}")
        return 0
    if FLAGS.stage == "flow":
        print(f"flow_bits_per_dim_mixture: {metrics['flow_bits_per_dim_mixture']:.4f}")
        print(f"metrics: {os.path.join(cfg.checkpoint_dir, cfg.run_name, 'flow', 'metrics.json')}")
        return 0
    print(f"report: {os.path.join(cfg.checkpoint_dir, cfg.run_name, 'report', 'report.md')}")
    return 0


if __name__ == "__main__":
    app.run(main)

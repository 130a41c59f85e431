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
from dibigan_tf.training.precision import POLICIES  # noqa: E402
from dibigan_tf.losses import BIJECT_READINGS  # noqa: E402

FLAGS = flags.FLAGS

# run
flags.DEFINE_string("run_name", "digits-blackbox", "Run folder under --checkpoint_dir.")
flags.DEFINE_string("checkpoint_dir", "checkpoints", "Where runs are written.")
flags.DEFINE_enum("dataset", "digits", ["digits", "faces", "celeba"], "Training data (digits: "
                  "embedded MNIST; faces: identity folders under --data_dir, aligned by dlib; "
                  "celeba: CelebA's identity file and photos under --data_dir).")
flags.DEFINE_string("people", "", "faces: an LFW people file (name count) listing the images "
                    "to use instead of every identity folder.")
flags.DEFINE_string("data_dir", "", "Image root for face datasets (<root>/<identity>/<image>, "
                    "or <root>/images/<identity>/<image> as LFW). Setting it selects "
                    "--dataset=faces.")
flags.DEFINE_string("feature_store_dir", "", "Feature store of matchers opened from a file or "
                    "service (default <checkpoint_dir>/features; shared by runs).")
flags.DEFINE_string("pairs", "", "An LFW pairs file: its pairs among held-out people are "
                    "also scored.")
flags.DEFINE_enum("mode", "blackbox", ["blackbox", "whitebox"], "blackbox: F^S is distilled "
                  "from F's answers; whitebox: F itself (differentiable: lenet, keras, "
                  "savedmodel, dlib_keras) gives L_distill's gradients and no F^S is trained.")
flags.DEFINE_enum("strategy", "default", ["default", "mirrored", "multi_worker"],
                  "tf.distribute strategy (multi_worker: the cluster in TF_CONFIG).")
flags.DEFINE_integer("num_gpus", 0, "Replicas for --strategy=mirrored (0: all devices).")
flags.DEFINE_integer("cpu_replicas", 0, "Split the CPU into this many logical devices (tests "
                     "and CPU runs of --strategy=mirrored).")
flags.DEFINE_enum("stage", "all", ["all", "align", "features", "student", "flow", "figure3"],
                  "all: every stage and the report; align: only the face alignment (counts and "
                  "photos/s); features: only F's answers for every image, "
                  "into the feature store; student: only F and F^S, with F^S measured "
                  "on held-out people in <run>/student/metrics.json; flow: only H, with held-out bits per "
                  "dimension in <run>/flow/metrics.json; figure3: the paper's Figure 3 (a second "
                  "G trained without L_biject, compared with the run's G) in <run>/report/.")
flags.DEFINE_integer("seed", 0, "Seed of the split, pairs and every stage.")
flags.DEFINE_integer("holdout_per_class", 100, "Held-out digits per class (never trained on).")
flags.DEFINE_integer("max_train_images", 0, "Use only this many training images (0: all); for "
                     "quick runs and tests.")
flags.DEFINE_integer("augment_copies", 0, "Fixed random affine copies of each training image, "
                     "each queried through F once, added to the attacker's (image, feature) "
                     "pairs (0: none).")
flags.DEFINE_list("augment_stages", ["student", "gan"], "Stages that train on the augmented "
                  "pairs: any of student, flow, gan.")
flags.DEFINE_integer("figure3_seeds", 1, "Figure 3: pairs of G (with and without L_biject) "
                     "compared, one per G seed (1-9); seed 0 is the run's own G. Each further "
                     "seed trains two more G.", lower_bound=1, upper_bound=9)
flags.DEFINE_integer("eval_positive_pairs", 3000, "Positive verification pairs.")
flags.DEFINE_integer("eval_negative_pairs", 3000, "Negative verification pairs.")
flags.DEFINE_float("checkpoint_every_seconds", 120.0, "Checkpoint period (seconds).")
flags.DEFINE_integer("checkpoint_every_steps", 0, "Checkpoint period (steps; 0: off).")
flags.DEFINE_string("inject_nan", "", "Fault injection for tests: '<stage>:<step>' makes that "
                    "step's first loss NaN (the run must stop, naming it, with the last good "
                    "checkpoint kept).")
flags.DEFINE_integer("stop_after_steps", 0, "Stop the GAN stage after this many steps in this "
                     "process (to test resumption).")
# matcher
flags.DEFINE_integer("matcher_feature_dim", 1024, "LeNet feature size (1x1024 in the paper).")
flags.DEFINE_integer("matcher_epochs", 8, "LeNet training epochs.")
# student
flags.DEFINE_string("student_depth", "small", "ResNet depth of F^S: small, 18, 34, 50, 101.")
flags.DEFINE_integer("student_width", 16, "Channels of F^S's first stage (64: standard).")
flags.DEFINE_integer("student_epochs", 10, "F^S distillation epochs.")
flags.DEFINE_integer("student_batch_size", 64, "F^S batch size.")
flags.DEFINE_bool("student_center_targets", False, "Eq. 6 on F(x) minus the mean training "
                  "feature (for matchers whose features share a dominant direction, like "
                  "dlib's; see dibigan_tf/training/student.py).")
# flow
flags.DEFINE_integer("flow_steps", 5, "Sub-mappings of H (5 in the paper).")
flags.DEFINE_integer("flow_hidden_channels", 32, "Feature maps of H's residual blocks.")
flags.DEFINE_integer("flow_res_blocks", 2, "Residual blocks per sub-mapping.")
flags.DEFINE_enum("flow_mixing", "conv1x1", ["conv1x1", "permute"], "Channel mixing of H.")
flags.DEFINE_enum("flow_covariance", "diag", ["diag", "full"], "Class prior covariance.")
flags.DEFINE_integer("flow_epochs", 10, "H training epochs.")
flags.DEFINE_integer("flow_batch_size", 64, "H batch size.")
flags.DEFINE_float("flow_learning_rate", 1e-3, "H learning rate.")
flags.DEFINE_enum("flow_lr_decay", "cosine", ["cosine", "constant"],
                  "H learning rate over the run: cosine decay to 0 or constant.")
flags.DEFINE_integer("flow_max_shift", 0, "Shift each H training batch by up to this many "
                     "whole pixels (a regulariser; 0: none).", lower_bound=0)
flags.DEFINE_string("flow_from_run", "", "Load the finished H of this run directory (trained by "
                    "--stage=flow) instead of training H in this run.")
# G and D
flags.DEFINE_enum("generator", "feature_conditional", ["feature_conditional", "pggan"],
                  "G structure: ours (D-F) or the PO-GAN baseline (A-C).")
flags.DEFINE_integer("latent_dim", 128, "Size of the random variable v.")
flags.DEFINE_integer("start_resolution", 8, "Resolution of the first block.")
flags.DEFINE_integer("num_blocks", 3, "Progressive blocks (3 for 32x32 digits).")
flags.DEFINE_list("g_channels", ["128", "64", "32"], "G feature maps per block.")
flags.DEFINE_list("d_channels", ["128", "64", "32"], "D feature maps per block.")
flags.DEFINE_integer("mapping_layers", 8, "Fully connected layers of the feature branch.")
flags.DEFINE_integer("mapping_dim", 256, "Width of the feature branch.")
flags.DEFINE_float("mapping_lr_mul", 1.0, "Learning-rate multiplier of the feature branch.")
flags.DEFINE_list("stable_images", ["20000", "20000", "40000"], "Images per stable phase.")
flags.DEFINE_list("fade_images", ["0", "10000", "10000"], "Images per fade-in phase.")
flags.DEFINE_integer("base_batch_size", 128, "Batch at --base_batch_resolution (paper: 128 "
                     "at 4x4, halved per doubling).")
flags.DEFINE_list("batch_sizes", [], "Per-stage batch sizes (overrides the rule).")
flags.DEFINE_float("learning_rate", 0.0015, "Adam learning rate of G and D.")
flags.DEFINE_float("alpha_b", 0.001, "alpha of the exponential weighting.")
flags.DEFINE_float("beta_adv", 1.0, "beta of the exponential weighting.")
flags.DEFINE_float("tap_weight", 1.0, "lambda_j of Eq. 7.")
flags.DEFINE_float("embedding_weight", 10.0, "lambda_a of Eq. 7.")
flags.DEFINE_float("biject_margin", -1.0, "m of Eq. 5 (< 0: from data).")
flags.DEFINE_enum("biject_reading", "spatial", list(BIJECT_READINGS),
                  "How Eq. 4 reads H's latents: 'spatial' (each image's h*w positions as samples "
                  "of a c-dim diagonal Gaussian), 'spatial_full' (the same with the full c x c "
                  "covariance), 'latent' (the whole latent as the mean of its identity's prior "
                  "Gaussian; dibigan_tf/losses.py).")
flags.DEFINE_float("recon_weight", 1.0, "Constant factor on lambda_r (L_recon is a per-pixel "
                   "mean absolute error).")
flags.DEFINE_bool("use_biject", True, "L_biject in Eq. 8.")
flags.DEFINE_bool("use_distill", True, "L_distill in Eq. 8.")
flags.DEFINE_bool("use_adv", True, "L_adv in Eq. 8.")
flags.DEFINE_bool("use_recon", True, "L_recon in Eq. 8.")
flags.DEFINE_enum("feature_norm", "global", ["global", "per_dim"], "How matcher features are "
                  "scaled before G: centred, then one scale for all dimensions or one each.")
flags.DEFINE_float("condition_noise", 0.0, "Std of Gaussian noise on G's (scaled) condition "
                   "while training.")
flags.DEFINE_float("ema_kimg", 10.0, "Half-life of G's EMA in thousands of images.")
flags.DEFINE_integer("log_every", 50, "Steps between TensorBoard scalars.")
flags.DEFINE_integer("image_every", 500, "Steps between TensorBoard image grids.")
flags.DEFINE_bool("jit_compile", False, "XLA-compile the training steps (F^S, H, G/D); off by "
                  "default: slower on this machine's CPU (README, make bench).")
flags.DEFINE_enum("mixed_precision", "float32", list(POLICIES),
                  "Keras precision policy of F^S and G/D (H stays float32); mixed_float16 adds "
                  "dynamic loss scaling. float32 by default: the mixed policies are slower on "
                  "CPU (README, make bench).")


def _ints(values):
    try:
        return [int(v) for v in values]
    except ValueError:
        raise app.UsageError(f"expected integers, got {values}") from None


def build_config():
    from dibigan_tf.config import FlowConfig, MatcherConfig, RunConfig, StudentConfig
    from dibigan_tf.training.gan import GanConfig
    n = FLAGS.num_blocks
    for name in ("g_channels", "d_channels", "stable_images", "fade_images"):
        if len(getattr(FLAGS, name)) != n:
            raise app.UsageError(f"--{name} needs {n} values (one per block), got "
                                 f"{getattr(FLAGS, name)}")
    if FLAGS.batch_sizes and len(FLAGS.batch_sizes) != n:
        raise app.UsageError(f"--batch_sizes needs {n} values, got {FLAGS.batch_sizes}")
    gan = GanConfig(
        generator=FLAGS.generator, latent_dim=FLAGS.latent_dim,
        start_resolution=FLAGS.start_resolution, num_blocks=n,
        g_channels=_ints(FLAGS.g_channels), d_channels=_ints(FLAGS.d_channels),
        mapping_layers=FLAGS.mapping_layers, mapping_dim=FLAGS.mapping_dim,
        mapping_lr_mul=FLAGS.mapping_lr_mul, stable_images=_ints(FLAGS.stable_images),
        fade_images=_ints(FLAGS.fade_images), base_batch_size=FLAGS.base_batch_size,
        batch_sizes=_ints(FLAGS.batch_sizes) or None, learning_rate=FLAGS.learning_rate,
        alpha_b=FLAGS.alpha_b, beta_adv=FLAGS.beta_adv, tap_weight=FLAGS.tap_weight,
        embedding_weight=FLAGS.embedding_weight, biject_margin=FLAGS.biject_margin,
        biject_reading=FLAGS.biject_reading, recon_weight=FLAGS.recon_weight,
        use_biject=FLAGS.use_biject, use_distill=FLAGS.use_distill, use_adv=FLAGS.use_adv,
        use_recon=FLAGS.use_recon, ema_kimg=FLAGS.ema_kimg, feature_norm=FLAGS.feature_norm,
        condition_noise=FLAGS.condition_noise, seed=FLAGS.seed + 3,
        log_every=FLAGS.log_every, image_every=FLAGS.image_every,
    )
    dataset = FLAGS.dataset
    if FLAGS.data_dir and dataset == "digits":
        if not FLAGS["dataset"].present:
            dataset = "faces"
        else:
            raise app.UsageError("--data_dir is for --dataset=faces (digits are embedded)")
    if dataset != "digits" and FLAGS.matcher == "lenet":
        raise app.UsageError("--dataset=faces needs a face matcher: --matcher=dlib (or onnx, "
                             "keras, savedmodel, http)")
    return RunConfig(
        run_name=FLAGS.run_name, checkpoint_dir=FLAGS.checkpoint_dir, dataset=dataset,
        data_dir=FLAGS.data_dir, mode=FLAGS.mode, align_size=FLAGS.align_size,
        image_size=FLAGS.image_size, heldout_fraction=FLAGS.heldout_fraction,
        align_multiple=FLAGS.align_multiple, align_none=FLAGS.align_none,
        align_template=FLAGS.align_template, align_upsample=FLAGS.align_upsample,
        align_cache_dir=FLAGS.align_cache_dir, pairs=FLAGS.pairs, people=FLAGS.people,
        feature_store_dir=FLAGS.feature_store_dir, strategy=FLAGS.strategy,
        num_gpus=FLAGS.num_gpus, seed=FLAGS.seed, holdout_per_class=FLAGS.holdout_per_class,
        max_train_images=FLAGS.max_train_images,
        augment_copies=FLAGS.augment_copies, augment_stages=",".join(FLAGS.augment_stages),
        figure3_seeds=FLAGS.figure3_seeds, eval_positive_pairs=FLAGS.eval_positive_pairs,
        eval_negative_pairs=FLAGS.eval_negative_pairs,
        checkpoint_every_seconds=FLAGS.checkpoint_every_seconds,
        checkpoint_every_steps=FLAGS.checkpoint_every_steps,
        stop_after_steps=FLAGS.stop_after_steps, inject_nan=FLAGS.inject_nan,
        jit_compile=FLAGS.jit_compile, mixed_precision=FLAGS.mixed_precision,
        matcher=matcher_config(feature_dim=FLAGS.matcher_feature_dim,
                               epochs=FLAGS.matcher_epochs),
        student=StudentConfig(depth=FLAGS.student_depth, width=FLAGS.student_width,
                              center_targets=FLAGS.student_center_targets,
                              epochs=FLAGS.student_epochs, batch_size=FLAGS.student_batch_size),
        flow=FlowConfig(num_steps=FLAGS.flow_steps, hidden_channels=FLAGS.flow_hidden_channels,
                        num_res_blocks=FLAGS.flow_res_blocks, mixing=FLAGS.flow_mixing,
                        covariance=FLAGS.flow_covariance, epochs=FLAGS.flow_epochs,
                        batch_size=FLAGS.flow_batch_size,
                        learning_rate=FLAGS.flow_learning_rate,
                        lr_decay=FLAGS.flow_lr_decay, max_shift=FLAGS.flow_max_shift,
                        from_run=FLAGS.flow_from_run),
        gan=gan)


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
    from dibigan_tf.training.pipeline import (check_config, run_align, run_blackbox,
                                             run_features, run_figure3, run_flow, run_student)
    try:
        cfg = build_config()
        check_config(cfg, FLAGS.stage)   # every check that needs no data, before any work
    except (MatcherError, TrainingError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        metrics = {"flow": run_flow, "figure3": run_figure3, "all": run_blackbox,
                   "student": run_student, "features": run_features,
                   "align": run_align}[FLAGS.stage](cfg)
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

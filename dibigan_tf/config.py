"""Run configuration: plain dataclasses, the one place every setting and its default is written.

Each field is declared with `setting(default, help, ...)`: its metadata holds the help text, the
command-line flag's name (by default the field's name, with the section's prefix: `student_`,
`flow_`, `matcher_`; none for the run and G/D settings) and its allowed values. The flags of
`experiments/train.py` and `experiments/evaluate.py` are generated from these fields
(`experiments/config_flags.py`), so a default is never written twice. A field declared with
`derived(...)` has no flag: its value follows from others (said beside it).
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

from dibigan_tf.schedule import ProgressiveSchedule

#: Keras precision policies of F^S and G/D (training/precision.py applies them)
PRECISION_POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")
#: readings of Eq. 4 (losses.BIJECT_READINGS, where each is documented; a test keeps them equal)
BIJECT_READINGS = ("spatial", "spatial_full", "latent")


def setting(default, help, *, flag: str | None = None, choices: Sequence | None = None,
            kind: str = "", group: str = "", lower_bound=None, upper_bound=None):
    """A config field with its flag's description.

    kind: "" (the default's type decides: bool, int, float, str, or a sequence of ints);
    "int_list" for an optional sequence of ints (None: empty flag); "str_list" for a str field
    given as a comma list on the command line; "multi" for a list of strings given by repeating
    the flag. group: "matcher" and "faces" flags are shared by train.py and evaluate.py.
    """
    meta = {"help": help, "flag": flag, "choices": tuple(choices) if choices else None,
            "kind": kind, "group": group, "lower_bound": lower_bound,
            "upper_bound": upper_bound}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def derived(default, why: str):
    """A config field without a flag; `why` says what sets it."""
    return dataclasses.field(default=default, metadata={"derived": why})


@dataclasses.dataclass
class GanConfig:
    """G and D (section 3.4), their losses (Eq. 7-9) and the progressive schedule."""
    generator: str = setting("feature_conditional", "G structure: ours (D-F) or the PO-GAN "
                             "baseline (A-C).", choices=("feature_conditional", "pggan"))
    latent_dim: int = setting(128, "Size of the random variable v.")
    start_resolution: int = setting(8, "Resolution of the first block.")
    num_blocks: int = setting(3, "Progressive blocks (3 for 32x32 digits).")
    g_channels: Sequence[int] = setting((128, 64, 32), "G feature maps per block.")
    d_channels: Sequence[int] = setting((128, 64, 32), "D feature maps per block.")
    mapping_layers: int = setting(8, "Fully connected layers of the feature branch.")
    mapping_dim: int = setting(256, "Width of the feature branch.")
    # StyleGAN slows its mapping by 0.01 because its input is noise; here the branch carries the
    # identity and must learn at G's pace (the paper gives no multiplier).
    mapping_lr_mul: float = setting(1.0, "Learning-rate multiplier of the feature branch.")
    stable_images: Sequence[int] = setting((20000, 20000, 40000), "Images per stable phase.")
    fade_images: Sequence[int] = setting((0, 10000, 10000), "Images per fade-in phase.")
    base_batch_size: int = setting(128, "Batch at --base_batch_resolution (paper: 128 at 4x4, "
                                   "halved per doubling).")
    base_batch_resolution: int = setting(4, "Resolution at which --base_batch_size applies.")
    batch_sizes: Optional[Sequence[int]] = setting(None, "Per-stage batch sizes (overrides the "
                                                   "rule).", kind="int_list")
    learning_rate: float = setting(0.0015, "Adam learning rate of G and D.")
    beta_1: float = setting(0.0, "Adam beta_1 of G and D (PGGAN: 0).")
    beta_2: float = setting(0.99, "Adam beta_2 of G and D (PGGAN: 0.99).")
    gp_weight: float = setting(10.0, "WGAN-GP gradient penalty weight of Eq. 9.")
    drift: float = setting(0.001, "PGGAN's drift penalty on D's real scores (Eq. 9).")
    alpha_b: float = setting(0.001, "alpha of the exponential weighting "
                             "(lambda_b = alpha e^(R_M - R), section 3.4).")
    beta_adv: float = setting(1.0, "beta of the exponential weighting (lambda_adv = beta e^R).")
    tap_weight: float = setting(1.0, "lambda_j of Eq. 7.")
    embedding_weight: float = setting(10.0, "lambda_a of Eq. 7.")
    recon_weight: float = setting(1.0, "Constant factor on lambda_r (L_recon is a per-pixel "
                                  "mean absolute error).")
    biject_margin: float = setting(-1.0, "m of Eq. 5 (< 0: the median inter-identity distance "
                                   "of the reals).")
    # "latent" by default: on digits (Figure 3 over three G seeds, docs/bijective-metric.md) the
    # two spatial readings loosen the identity clusters at the paper's alpha, "latent" does not
    # and keeps the best class agreement; it needs H's diagonal class priors
    biject_reading: str = setting(
        "latent", "How Eq. 4 reads H's latents: 'latent' (the whole latent as the mean of its "
        "identity's prior Gaussian), 'spatial' (each image's h*w positions as samples of a c-dim "
        "diagonal Gaussian), 'spatial_full' (the same with the full c x c covariance); "
        "dibigan_tf/losses.py, docs/bijective-metric.md.", choices=BIJECT_READINGS)
    # Extension beyond the paper (losses.diversity_sensitive): off at 0
    diversity_weight: float = setting(0.0, "Extension, not in the paper: weight of the "
                                      "diversity-sensitive term that rewards G for changing its "
                                      "image with v (0: off; it follows L_recon's schedule "
                                      "e^(R_M - R)).", lower_bound=0.0)
    diversity_cap: float = setting(0.15, "Extension: the cap tau of the diversity-sensitive "
                                   "term (mean absolute image change in [-1, 1] units per unit "
                                   "of mean absolute change of v).", lower_bound=0.0)
    use_biject: bool = setting(True, "L_biject in Eq. 8.")
    use_distill: bool = setting(True, "L_distill in Eq. 8.")
    use_adv: bool = setting(True, "L_adv in Eq. 8.")
    use_recon: bool = setting(True, "L_recon in Eq. 8.")
    ema_kimg: float = setting(10.0, "Half-life of G's EMA in thousands of images.")
    # How matcher features are scaled before G (see GanTrainer.condition): "global" centres each
    # dimension and divides by one scale for all; "per_dim" divides each dimension by its own
    # standard deviation (with a floor).
    feature_norm: str = setting("global", "How matcher features are scaled before G: centred, "
                                "then one scale for all dimensions or one each.",
                                choices=("global", "per_dim"))
    condition_noise: float = setting(0.0, "Std of Gaussian noise on G's (scaled) condition "
                                     "while training.")
    seed: int = derived(3, "the run's --seed + 3 (experiments/train.py)")
    log_every: int = setting(50, "Steps between TensorBoard scalars.")
    image_every: int = setting(500, "Steps between TensorBoard image grids.")
    jit_compile: bool = derived(False, "RunConfig.jit_compile (RunConfig.__post_init__)")
    # float32, mixed_float16 or mixed_bfloat16 for G and D (training/precision.py)
    mixed_precision: str = derived("float32", "RunConfig.mixed_precision "
                                   "(RunConfig.__post_init__)")
    # Stable phases read the real images' F^S/H outputs from a per-phase cache (see
    # GanTrainer.uses_cached_targets); False computes them in every step (same losses, slower).
    cache_real_targets: bool = setting(True, "Stable phases read the real images' F^S / H "
                                       "outputs from a per-phase cache (false: computed in "
                                       "every step; same losses, slower, less memory).")

    def schedule(self) -> ProgressiveSchedule:
        return ProgressiveSchedule(self.num_blocks, self.start_resolution,
                                   list(self.stable_images), list(self.fade_images),
                                   base_batch_size=self.base_batch_size,
                                   base_batch_resolution=self.base_batch_resolution,
                                   batch_sizes=(list(self.batch_sizes) if self.batch_sizes
                                                else None))


@dataclasses.dataclass
class MatcherConfig:
    """The matcher F under attack (dibigan_tf/matchers/registry.py opens it)."""
    name: str = setting("lenet", "The matcher F under attack (lenet: trained here on the "
                        "digits; dlib_keras: dlib's descriptor rebuilt in Keras from its weight "
                        "file, differentiable, aligned chips only).", flag="matcher",
                        choices=("lenet", "keras", "savedmodel", "onnx", "dlib", "dlib_keras",
                                 "http"), group="matcher")
    feature_dim: int = setting(1024, "LeNet feature size (1x1024 in the paper).")
    epochs: int = setting(8, "LeNet training epochs.")
    batch_size: int = setting(128, "LeNet training batch size.")
    learning_rate: float = setting(1e-3, "LeNet Adam learning rate.")
    # Adapters other than lenet (dibigan_tf/matchers/registry.py)
    path: str = setting("", "keras/savedmodel/onnx: the model file or directory.",
                        group="matcher")
    url: str = setting("", "http: the endpoint (see dibigan_tf/matchers/http.py).",
                       group="matcher")
    embedding_dim: int = setting(0, "http: length of the returned vectors.", group="matcher")
    http_format: str = setting("json", "http: request format.", choices=("json", "npy"),
                               group="matcher")
    timeout: float = setting(30.0, "http: seconds per request.", group="matcher")
    retries: int = setting(3, "http: retries (exponential backoff) per request.",
                           group="matcher")
    query_budget: int = setting(0, "http: images it may send, over every run sharing its "
                                "feature store (0: no limit).", group="matcher")
    headers: list = setting([], "http: a header sent with every request, its secret value read "
                            "at start from an environment variable or a file: Name:env:VAR or "
                            "Name:file:PATH (repeatable; the value is never written to "
                            "config.json, logs or errors).", flag="matcher_header",
                            kind="multi", group="matcher")
    input_size: int = setting(0, "The matcher's input size when it cannot say (0: the aligned "
                              "crops').", group="matcher")
    input_range: str = setting("minus1_1", "keras/savedmodel: the pixel range the model "
                               "expects.", choices=("minus1_1", "zero_1", "raw", "arcface"),
                               group="matcher")
    layout: str = setting("", "onnx: input layout (empty: from the model).",
                          choices=("", "nchw", "nhwc"), group="matcher")
    mean: float = setting(127.5, "onnx: (x - mean) / std normalisation.", group="matcher")
    std: float = setting(127.5, "onnx: (x - mean) / std normalisation.", group="matcher")
    channel_order: str = setting("rgb", "onnx: channel order.", choices=("rgb", "bgr"),
                                 group="matcher")
    chip: str = setting("aligned", "dlib: the images are aligned face chips, or dlib's landmark "
                        "+ chip step runs on each.", flag="dlib_chip",
                        choices=("aligned", "landmarks"), group="matcher")
    num_jitters: int = setting(0, "dlib (not dlib_keras): average the descriptor over this "
                               "many jittered copies (0: none, as dlib's default).",
                               flag="dlib_jitters", group="matcher")


@dataclasses.dataclass
class StudentConfig:
    """F^S, the student distilled from F's answers (Eq. 6, blackbox mode)."""
    depth: str = setting("small", "ResNet depth of F^S: small, 18, 34, 50, 101.",
                         choices=("small", "18", "34", "50", "101"))
    width: int = setting(16, "Channels of F^S's first stage (64: standard).")
    epochs: int = setting(10, "F^S distillation epochs.")
    batch_size: int = setting(64, "F^S batch size.")
    learning_rate: float = setting(1e-3, "F^S Adam learning rate.")
    lr_decay: str = setting("constant", "F^S learning rate over the run: constant, or cosine "
                            "decay to 0.", choices=("constant", "cosine"))
    max_shift: int = setting(2, "Random whole-pixel shift of F^S's training images, up to this "
                             "many pixels.", lower_bound=0)
    center_targets: bool = setting(False, "Eq. 6 on F(x) minus the mean training feature (for "
                                   "matchers whose features share a dominant direction, like "
                                   "dlib's; see dibigan_tf/training/student.py). In whitebox "
                                   "mode Eq. 7's cosine term compares F's outputs minus that "
                                   "mean, the same space.")


@dataclasses.dataclass
class FlowConfig:
    """H, the bijection of section 3.2 (TFP bijectors, dibigan_tf/models/flow.py)."""
    num_steps: int = setting(5, "Sub-mappings of H (5 in the paper).", flag="flow_steps")
    hidden_channels: int = setting(32, "Feature maps of H's residual blocks.")
    num_res_blocks: int = setting(2, "Residual blocks per sub-mapping.", flag="flow_res_blocks")
    mixing: str = setting("conv1x1", "Channel mixing of H.", choices=("conv1x1", "permute"))
    covariance: str = setting("diag", "Class prior covariance.", choices=("diag", "full"))
    epochs: int = setting(10, "H training epochs.")
    batch_size: int = setting(64, "H batch size.")
    learning_rate: float = setting(1e-3, "H learning rate.")
    # "cosine": the step decays from learning_rate to 0 over the run (training/flow.py);
    # "constant": it stays at learning_rate.
    lr_decay: str = setting("cosine", "H learning rate over the run: cosine decay to 0 or "
                            "constant.", choices=("cosine", "constant"))
    max_shift: int = setting(0, "Shift each H training batch by up to this many whole pixels "
                             "(a regulariser; 0: none).", lower_bound=0)
    # A run directory whose finished flow stage is loaded instead of training H here (H trained
    # on its own by `train.py --stage=flow`); empty: H is trained in this run.
    from_run: str = setting("", "Load the finished H of this run directory (trained by "
                            "--stage=flow) instead of training H in this run.")


_FACES = "faces"


@dataclasses.dataclass
class RunConfig:
    """One run: data, mode, stages, and the four networks' sections."""
    run_name: str = setting("digits-blackbox", "Run folder under --checkpoint_dir.")
    checkpoint_dir: str = setting("checkpoints", "Where runs are written.")
    dataset: str = setting("digits", "Training data (digits: embedded MNIST; faces: identity "
                           "folders under --data_dir, aligned by dlib; celeba: CelebA's "
                           "identity file and photos under --data_dir; tfds: a TensorFlow "
                           "Datasets build prepared under --data_dir, --tfds_name).",
                           choices=("digits", "faces", "celeba", "tfds"))
    data_dir: str = setting("", "Image root for face datasets (<root>/<identity>/<image>, or "
                            "<root>/images/<identity>/<image> as LFW; tfds: the TFDS data_dir). "
                            "Setting it selects --dataset=faces unless --dataset is given.")
    # faces: aligned crop size (what the matcher sees), training size of F^S, H, G (0: the
    # dataset's own), share of the people held out, alignment rules and cache
    align_size: int = setting(150, "faces: size of the aligned crops (dlib's face chip: 150), "
                              "what the matcher sees.", group=_FACES)
    image_size: int = setting(0, "Size F^S, H and G train on (faces: 64 on a CPU, 128 as in "
                              "the paper's figures; 0: the dataset's own).", group=_FACES)
    heldout_fraction: float = setting(0.25, "faces: share of the people held out (no network "
                                      "trains on them).", group=_FACES)
    tuning_split: bool = setting(False, "faces: tune without the held-out people: they are "
                                 "set aside (used by nothing, the report included) and the "
                                 "training people are split again, --heldout_fraction of them "
                                 "becoming the tuning people the report measures. Final runs "
                                 "leave it off and report on the held-out people.",
                                 group=_FACES)
    align_multiple: str = setting("largest", "faces: which face of a photo with several.",
                                  choices=("largest", "central"), group=_FACES)
    align_none: str = setting("skip", "faces: a photo without a detected face is skipped (and "
                              "counted) or centre-cropped.", choices=("skip", "center_crop"),
                              group=_FACES)
    align_upsample: int = setting(1, "faces: times dlib's detector may upsample a photo in "
                                  "which it found no face (each doubles the size; finds smaller "
                                  "faces, slower).", group=_FACES)
    align_template: str = setting("dlib", "faces: dlib's face chip (dlib's matcher), the ArcFace "
                                  "112x112 five-point template (insightface matchers; 68 dlib "
                                  "landmarks give the five points), or none (already aligned "
                                  "crops: the whole image resized to --align_size).",
                                  choices=("dlib", "arcface", "none"), group=_FACES)
    align_cache_dir: str = setting("", "Aligned-crop cache (default <checkpoint_dir>/aligned).",
                                   group=_FACES)
    pairs: str = setting("", "An LFW pairs file: its pairs among held-out people are also "
                         "scored.")
    people: str = setting("", "faces: an LFW people file (name count) listing the images to "
                          "use instead of every identity folder.")
    # tfds: a TensorFlow Datasets build prepared under data_dir (data/tfds_faces.py): its name
    # (lfw or celeb_a) and split; faces from it are aligned and split like an identity folder's
    tfds_name: str = setting("lfw", "tfds: the prepared TensorFlow Datasets build (no download "
                             "ever happens).", choices=("lfw", "celeb_a"))
    tfds_split: str = setting("train", "tfds: the split read.")
    feature_store_dir: str = setting("", "Feature store of matchers opened from a file or "
                                     "service (default <checkpoint_dir>/features; shared by "
                                     "runs).")
    mode: str = setting("blackbox", "blackbox: F^S is distilled from F's answers; whitebox: F "
                        "itself (differentiable: lenet, keras, savedmodel, dlib_keras) gives "
                        "L_distill's gradients and no F^S is trained.",
                        choices=("blackbox", "whitebox"))
    strategy: str = setting("default", "tf.distribute strategy (multi_worker: the cluster in "
                            "TF_CONFIG).", choices=("default", "mirrored", "multi_worker"))
    num_gpus: int = setting(0, "Replicas for --strategy=mirrored (0: all devices).")
    seed: int = setting(0, "Seed of every stage (and of the split and pairs unless "
                        "--split_seed is set).")
    split_seed: int = setting(-1, "Seed of the split into training and held-out images (people, "
                              "for faces) and of the report's verification pairs; -1: --seed. "
                              "Fix it to compare training seeds on the same held-out people.",
                              lower_bound=-1)
    holdout_per_class: int = setting(100, "Held-out digits per class (never trained on).")
    max_train_images: int = setting(0, "Use only this many training images (0: all); for quick "
                                    "runs and tests.")
    # Fixed random affine copies of each training image (dibigan_tf/data/augment.py), queried
    # through F once each and added to the attacker's (image, feature) pairs of the stages named
    # in augment_stages (any of "student", "flow", "gan"); 0: none.
    augment_copies: int = setting(0, "Fixed random affine copies of each training image, each "
                                  "queried through F once, added to the attacker's (image, "
                                  "feature) pairs (0: none).")
    augment_mirror: float = setting(0.0, "Chance that an affine copy is also mirrored "
                                    "left-right (0: never).", lower_bound=0.0, upper_bound=1.0)
    augment_mix: float = setting(0.0, "Chance that an affine copy is blended with another copy "
                                 "(mixup, weight < 0.5 on the other; an extension beyond the "
                                 "paper; 0: never).", lower_bound=0.0, upper_bound=1.0)
    augment_stages: str = setting("student,gan", "Stages that train on the augmented pairs: any "
                                  "of student, flow, gan.", kind="str_list")
    # Figure 3 (stage figure3): pairs of G, with and without L_biject, on this many G seeds; the
    # first pair is the run's own G and its twin, each further pair trains two more G.
    figure3_seeds: int = setting(1, "Figure 3: pairs of G (with and without L_biject) compared, "
                                 "one per G seed (1-9); seed 0 is the run's own G. Each further "
                                 "seed trains two more G.", lower_bound=1, upper_bound=9)
    v_variation_draws: int = setting(8, "The report's v_variation: draws of v per held-out "
                                     "feature (0: not measured; each image is one query of F).",
                                     lower_bound=0)
    v_variation_features: int = setting(64, "The report's v_variation: held-out features it "
                                        "uses (at most).", lower_bound=2)
    eval_positive_pairs: int = setting(3000, "Positive verification pairs.")
    eval_negative_pairs: int = setting(3000, "Negative verification pairs.")
    checkpoint_every_seconds: float = setting(120.0, "Checkpoint period (seconds).")
    checkpoint_every_steps: int = setting(0, "Checkpoint period (steps; 0: off).")
    # speed flags of every training (F^S, H, G/D): XLA, and the Keras precision policy of F^S and
    # G/D (training/precision.py; H stays float32). The run's values; `gan`'s copies are set from
    # them (__post_init__), so the G/D trainer and config.json never disagree with F^S and H.
    jit_compile: bool = setting(False, "XLA-compile the training steps (F^S, H, G/D); off by "
                                "default: slower on this machine's CPU (docs/speed.md, make "
                                "bench).")
    mixed_precision: str = setting("float32", "Keras precision policy of F^S and G/D (H stays "
                                   "float32); mixed_float16 adds dynamic loss scaling. float32 "
                                   "by default: the mixed policies are slower on CPU "
                                   "(docs/speed.md, make bench).", choices=PRECISION_POLICIES)
    matcher: MatcherConfig = dataclasses.field(default_factory=MatcherConfig)
    student: StudentConfig = dataclasses.field(default_factory=StudentConfig)
    flow: FlowConfig = dataclasses.field(default_factory=FlowConfig)
    gan: GanConfig = dataclasses.field(default_factory=GanConfig)

    def __post_init__(self):
        self.gan = dataclasses.replace(self.gan, jit_compile=self.jit_compile,
                                       mixed_precision=self.mixed_precision)

    @property
    def data_seed(self) -> int:
        """The seed of the split and of the report's pairs: --split_seed, or --seed when unset
        (so two training seeds can be measured on the same held-out people)."""
        return self.seed if self.split_seed < 0 else self.split_seed

    def to_dict(self):
        return dataclasses.asdict(self)


#: the flag prefix of each section of RunConfig
SECTIONS = {"matcher": ("matcher_", MatcherConfig), "student": ("student_", StudentConfig),
            "flow": ("flow_", FlowConfig), "gan": ("", GanConfig)}

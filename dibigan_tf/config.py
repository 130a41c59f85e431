"""Run configuration: plain dataclasses, built from flags in one place (experiments/train.py)."""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

from dibigan_tf.schedule import ProgressiveSchedule


@dataclasses.dataclass
class GanConfig:
    generator: str = "feature_conditional"   # or "pggan" (configurations A-C)
    latent_dim: int = 128
    start_resolution: int = 8
    num_blocks: int = 3
    g_channels: Sequence[int] = (128, 64, 32)
    d_channels: Sequence[int] = (128, 64, 32)
    mapping_layers: int = 8
    mapping_dim: int = 256
    # StyleGAN slows its mapping by 0.01 because its input is noise; here the branch carries the
    # identity and must learn at G's pace (the paper gives no multiplier).
    mapping_lr_mul: float = 1.0
    stable_images: Sequence[int] = (20000, 20000, 40000)
    fade_images: Sequence[int] = (0, 10000, 10000)
    base_batch_size: int = 128
    base_batch_resolution: int = 4
    batch_sizes: Optional[Sequence[int]] = None
    learning_rate: float = 0.0015
    beta_1: float = 0.0
    beta_2: float = 0.99
    gp_weight: float = 10.0
    drift: float = 0.001
    alpha_b: float = 0.001        # alpha of section 3.4 (lambda_b = alpha e^(R_M - R))
    beta_adv: float = 1.0         # beta of section 3.4 (lambda_adv = beta e^R)
    tap_weight: float = 1.0       # lambda_j
    embedding_weight: float = 10.0  # lambda_a
    recon_weight: float = 1.0     # a constant on lambda_r (L_recon is a per-pixel mean, see losses)
    biject_margin: float = -1.0   # m of Eq. 5; < 0: the median inter-identity distance of reals
    biject_reading: str = "spatial"   # how Eq. 4 reads a latent (losses.BIJECT_READINGS)
    use_biject: bool = True
    use_distill: bool = True
    use_adv: bool = True
    use_recon: bool = True
    ema_kimg: float = 10.0        # EMA half-life in thousands of images
    # How matcher features are scaled before G (see GanTrainer.condition): "global" centres each
    # dimension and divides by one scale for all; "per_dim" divides each dimension by its own
    # standard deviation (with a floor).
    feature_norm: str = "global"
    condition_noise: float = 0.0  # std of Gaussian noise added to G's condition while training
    seed: int = 3
    log_every: int = 50
    image_every: int = 500
    jit_compile: bool = False
    # float32, mixed_float16 or mixed_bfloat16 for G and D (training/precision.py)
    mixed_precision: str = "float32"
    # Stable phases read the real images' F^S/H outputs from a per-phase cache (see
    # GanTrainer.uses_cached_targets); False computes them in every step (same losses, slower).
    cache_real_targets: bool = True

    def schedule(self) -> ProgressiveSchedule:
        return ProgressiveSchedule(self.num_blocks, self.start_resolution,
                                   list(self.stable_images), list(self.fade_images),
                                   base_batch_size=self.base_batch_size,
                                   base_batch_resolution=self.base_batch_resolution,
                                   batch_sizes=(list(self.batch_sizes) if self.batch_sizes
                                                else None))


@dataclasses.dataclass
class MatcherConfig:
    name: str = "lenet"
    feature_dim: int = 1024
    epochs: int = 8
    batch_size: int = 128
    learning_rate: float = 1e-3
    # Adapters other than lenet (dibigan_tf/matchers/registry.py)
    path: str = ""              # keras/savedmodel/onnx model file or directory
    url: str = ""               # http endpoint
    embedding_dim: int = 0      # http: length of the vectors
    http_format: str = "json"
    timeout: float = 30.0
    retries: int = 3            # http: retries with exponential backoff
    query_budget: int = 0       # http: images it may send, over every process (0: no limit)
    headers: list = dataclasses.field(default_factory=list)   # http: Name:env:VAR/Name:file:PATH
    input_size: int = 0         # the matcher's input size when it cannot say (0: the crops')
    input_range: str = "minus1_1"   # keras/savedmodel: what pixel range the model expects
    layout: str = ""            # onnx: nchw/nhwc (empty: read from the model)
    mean: float = 127.5         # onnx: (x - mean) / std
    std: float = 127.5
    channel_order: str = "rgb"
    chip: str = "aligned"       # dlib: images are aligned chips, or run dlib's landmark step
    num_jitters: int = 0        # dlib


@dataclasses.dataclass
class StudentConfig:
    depth: str = "small"
    width: int = 32
    epochs: int = 12
    batch_size: int = 64
    learning_rate: float = 1e-3
    max_shift: int = 2
    center_targets: bool = False    # Eq. 6 on F(x) - mean (see training/student.py)


@dataclasses.dataclass
class FlowConfig:
    num_steps: int = 5
    hidden_channels: int = 32
    num_res_blocks: int = 2
    mixing: str = "conv1x1"
    covariance: str = "diag"
    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 1e-3
    # "cosine": the step decays from learning_rate to 0 over the run (training/flow.py);
    # "constant": it stays at learning_rate.
    lr_decay: str = "cosine"
    # whole-pixel random shift of each training batch, up to this many pixels (0: none)
    max_shift: int = 0
    # A run directory whose finished flow stage is loaded instead of training H here (H trained
    # on its own by `train.py --stage=flow`); empty: H is trained in this run.
    from_run: str = ""


@dataclasses.dataclass
class RunConfig:
    run_name: str = "digits-blackbox"
    checkpoint_dir: str = "checkpoints"
    dataset: str = "digits"
    data_dir: str = ""
    # faces: aligned crop size (what the matcher sees), training size of F^S, H, G (0: the
    # dataset's own), share of the people held out, alignment rules and cache
    align_size: int = 150
    image_size: int = 0
    heldout_fraction: float = 0.25
    align_multiple: str = "largest"
    align_none: str = "skip"
    align_upsample: int = 1
    align_template: str = "dlib"    # dlib's face chip, or "arcface" (the 112x112 template)
    align_cache_dir: str = ""
    pairs: str = ""
    people: str = ""                # faces: an LFW people file listing the images to use
    # tfds: a TensorFlow Datasets build prepared under data_dir (data/tfds_faces.py): its name
    # (lfw or celeb_a) and split; faces from it are aligned and split like an identity folder's
    tfds_name: str = "lfw"
    tfds_split: str = "train"
    feature_store_dir: str = ""     # default: <checkpoint_dir>/features (lenet: inside the run)
    mode: str = "blackbox"
    strategy: str = "default"
    num_gpus: int = 0
    seed: int = 0
    holdout_per_class: int = 100
    max_train_images: int = 0
    # Fixed random affine copies of each training image (dibigan_tf/data/augment.py), queried
    # through F once each and added to the attacker's (image, feature) pairs of the stages named
    # in augment_stages (any of "student", "flow", "gan"); 0: none.
    augment_copies: int = 0
    augment_stages: str = "student,gan"
    # Figure 3 (stage figure3): pairs of G, with and without L_biject, on this many G seeds; the
    # first pair is the run's own G and its twin, each further pair trains two more G.
    figure3_seeds: int = 1
    eval_positive_pairs: int = 3000
    eval_negative_pairs: int = 3000
    checkpoint_every_seconds: float = 120.0
    checkpoint_every_steps: int = 0
    stop_after_steps: int = 0
    inject_nan: str = ""            # "<stage>:<step>": fault injection (tests of the NaN guard)
    # speed flags of every training (F^S, H, G/D): XLA, and the Keras precision policy of F^S and
    # G/D (training/precision.py; H stays float32). The run's values; `gan`'s copies are set from
    # them (__post_init__), so the G/D trainer and config.json never disagree with F^S and H.
    jit_compile: bool = False
    mixed_precision: str = "float32"
    matcher: MatcherConfig = dataclasses.field(default_factory=MatcherConfig)
    student: StudentConfig = dataclasses.field(default_factory=StudentConfig)
    flow: FlowConfig = dataclasses.field(default_factory=FlowConfig)
    gan: GanConfig = dataclasses.field(default_factory=GanConfig)

    def __post_init__(self):
        self.gan = dataclasses.replace(self.gan, jit_compile=self.jit_compile,
                                       mixed_precision=self.mixed_precision)

    def to_dict(self):
        return dataclasses.asdict(self)

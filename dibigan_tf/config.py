"""Run configuration: plain dataclasses, built from flags in one place (experiments/train.py)."""
from __future__ import annotations

import dataclasses

from dibigan_tf.training.gan import GanConfig


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

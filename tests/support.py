"""Plain helpers shared by the test modules (fixtures are in tests/conftest.py)."""
import os
import re
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image

from dibigan_tf.data.align import AlignResult
from dibigan_tf.matchers.base import Matcher
from tests import forkserver

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "--max_train_images=400", "--holdout_per_class=20", "--matcher_epochs=2",
    "--matcher_feature_dim=64", "--student_width=8", "--student_epochs=1",
    "--flow_steps=2", "--flow_hidden_channels=8", "--flow_res_blocks=1", "--flow_epochs=1",
    "--start_resolution=16", "--num_blocks=2", "--g_channels=8,8", "--d_channels=8,8",
    "--mapping_layers=2", "--mapping_dim=32", "--latent_dim=16",
    "--stable_images=64,1024", "--fade_images=0,64", "--batch_sizes=16,16",
    "--eval_positive_pairs=300", "--eval_negative_pairs=300",
    "--log_every=1", "--image_every=20", "--augment_copies=1", "--augment_stages=student,gan",
]
#: TINY with a checkpoint after every step, for the tests that SIGKILL a run part-way and resume
#: it (a checkpoint per step costs a tiny run about 10 s, so the other tests leave it out)
TINY_KILLABLE = TINY + ["--checkpoint_every_steps=1"]
#: the G/D of the shared tiny run (tests/conftest.py: tiny_run) and of the other runs whose
#: test is not about progressive growth (Figure 3, the export, whitebox mode, the ablation
#: driver): one stable 32x32 phase of 8 steps of 16 images. Each phase is a trace of G/D's step,
#: most of a tiny run's time; the runs that test growth keep several phases (the SIGKILL resume's
#: TINY, the faces run, the MirroredStrategy cases).
TINY_GAN_FLAGS = ["--start_resolution=32", "--num_blocks=1", "--g_channels=8",
                  "--d_channels=8", "--stable_images=128", "--fade_images=0", "--batch_sizes=16"]


def train_command(args, flagfile="digits_blackbox.flags"):
    """The argv of `experiments/train.py --flagfile=experiments/flagfiles/<flagfile> <args>`
    (no --flagfile when `flagfile` is None), for subprocess.run or Popen."""
    flags = ([] if flagfile is None else
             [f"--flagfile={os.path.join(ROOT, 'experiments', 'flagfiles', flagfile)}"])
    return [sys.executable, os.path.join(ROOT, "experiments", "train.py")] + flags + list(args)


def run_train(args, flagfile="digits_blackbox.flags", timeout=900, env=None, fork=True):
    """`train_command(args, flagfile)` run to its end, output captured and unbuffered, `env`
    added to this process's environment; the CompletedProcess. A fork of the test process's
    fork server (tests/forkserver.py: TensorFlow already imported) unless `fork` is False (a
    fresh interpreter, as a user's shell starts it)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    if fork:
        return forkserver.run(train_command(args, flagfile), env=env, timeout=timeout)
    return subprocess.run(train_command(args, flagfile), capture_output=True, text=True,
                          timeout=timeout, env=env)


def copy_stages(source, target, names=None):
    """Copies a run's stage directories and files (all of them by default) into `target`; a run
    there loads the finished stages (done.json) and trains the rest."""
    os.makedirs(target, exist_ok=True)
    for name in names if names is not None else sorted(os.listdir(source)):
        src, dst = os.path.join(source, name), os.path.join(target, name)
        (shutil.copytree if os.path.isdir(src) else shutil.copy2)(src, dst)


def latest_step(ckpt_dir):
    path = os.path.join(ckpt_dir, "checkpoint")
    if not os.path.exists(path):
        return -1
    with open(path) as handle:
        match = re.search(r'model_checkpoint_path: "ckpt-(\d+)"', handle.read())
    return int(match.group(1)) if match else -1


class StepReached:
    """A `forkserver.run(..., kill_when=...)` condition: true once `ckpt_dir` holds a checkpoint
    of `step` or later; `seen` is the step found at the last check (the one the run was killed
    at)."""

    def __init__(self, ckpt_dir, step):
        self.ckpt_dir, self.step, self.seen = str(ckpt_dir), step, -1

    def __call__(self):
        self.seen = latest_step(self.ckpt_dir)
        return self.seen >= self.step


def server_embedding(images):
    """What the test server answers: per-image channel means, then 1 and -2."""
    means = images.astype(np.float64).mean(axis=(1, 2))
    return np.concatenate([means, np.tile([1.0, -2.0], (len(images), 1))], axis=1)


def astronaut():
    """scikit-image's real face photo (Eileen Collins) as uint8 RGB; the test is skipped, with the
    reason, when scikit-image or the photo is missing."""
    import pytest
    skdata = pytest.importorskip("skimage.data", reason="scikit-image (ships the test face photo) "
                                 "is not installed")
    path = os.path.join(os.path.dirname(skdata.__file__), "astronaut.png")
    if not os.path.exists(path):
        pytest.skip("scikit-image does not ship astronaut.png here")
    return np.asarray(Image.open(path).convert("RGB"))


def write_people(root, people=6, per_person=4):
    """people x per_person photos: the face shifted, scaled, recoloured and mirrored, named in
    LFW's layout (<root>/images/<name>/<name>_NNNN.jpg)."""
    photo = Image.fromarray(astronaut())
    rng = np.random.default_rng(0)
    for p in range(people):
        name = f"Person_{p}"
        folder = root / "images" / name
        folder.mkdir(parents=True)
        tint = rng.uniform(0.75, 1.25, 3)
        for i in range(per_person):
            size = int(rng.integers(300, 420))
            image = np.asarray(photo.resize((size, size)), np.float64) * tint
            canvas = np.zeros((460, 460, 3))
            top, left = rng.integers(0, 460 - size, 2)
            canvas[top:top + size, left:left + size] = image
            if i % 2:
                canvas = canvas[:, ::-1]
            Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8)).save(
                folder / f"{name}_{i + 1:04d}.jpg", quality=92)
    (root / "images" / "Person_0" / "Person_0_0009.jpg").write_bytes(b"truncated")
    (root / "pairs.txt").write_text("3\nPerson_4\t1\t2\nPerson_3\t1\tPerson_4\t3\nPerson_0\t1\t2\n")


class CountingMatcher(Matcher):
    """A blackbox stand-in: embedding = pixel means per row, counts every image it sees."""
    name = "counting"

    def __init__(self, dim=4, fail_after=None, nan=False, wrong_dim=False):
        self.seen = 0
        self.dim, self.fail_after, self.nan, self.wrong_dim = dim, fail_after, nan, wrong_dim

    @property
    def input_shape(self):
        return (4, 4, 1)

    @property
    def embedding_dim(self):
        return self.dim

    def _embed(self, images):
        if self.fail_after is not None and self.seen + len(images) > self.fail_after:
            raise ConnectionError("matcher went away")
        self.seen += len(images)
        out = images.reshape(len(images), 4, 4).mean(axis=2).astype(np.float32) + 1.0
        if self.nan:
            out[0, 0] = np.nan
        return out[:, :3] if self.wrong_dim else out


class MeanAligner:
    """Stand-in for DlibAligner: 'finds a face' unless the image is all black; the crop is a
    constant image of the input's mean colour (so identities can be checked)."""
    key = "mean-8"
    size = 8

    def __init__(self):
        self.calls = 0

    def align(self, image):
        self.calls += 1
        if image.max() == 0:
            return AlignResult(None, "none", 0)
        colour = image.reshape(-1, 3).mean(axis=0).astype(np.uint8)
        return AlignResult(np.tile(colour, (8, 8, 1)), "ok", 1)


#: a G and D of two blocks (8x8 -> 16x16) and a few maps: one G+D step in about a second
TINY_GAN = dict(start_resolution=8, num_blocks=2, g_channels=(4, 4), d_channels=(4, 4),
                mapping_layers=2, mapping_dim=8, latent_dim=4, stable_images=(32, 32),
                fade_images=(0, 32), batch_sizes=(16, 16))


def tiny_gan_batch(trainer, images, feats, labels, batch_number=0, n=16):
    """The first `n` examples as one G+D step's batch, with the step noise the input pipeline
    would draw for batch `batch_number` (GanTrainer.with_noise)."""
    import tensorflow as tf   # here, not at the top: conftest imports this module everywhere
    return trainer.with_noise({"images": tf.constant(images[:n]),
                               "features": tf.constant(feats[:n]),
                               "labels": tf.constant(labels[:n].astype(np.int64))},
                              batch_number)


def stable_phase(trainer, stage=1):
    """The stable (not fading-in) phase of block `stage` of the trainer's schedule."""
    return [p for p in trainer.schedule.phases() if not p.fade and p.stage == stage][0]


def tiny_gan_data(seed=0):
    """(rng, images, features, labels): 32 random 16x16 grey images with 12-D features and 4
    identities, for one-step G+D tests; `rng` continues the same draws."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (32, 16, 16, 1)).astype(np.uint8)
    feats = rng.standard_normal((32, 12)).astype(np.float32)
    return rng, images, feats, np.repeat(np.arange(4), 8)

"""What every training shares: the tf.distribute strategy, the resumable stage (checkpoints, step
counter, elapsed time, done marker), the deterministic input pipeline, progress and TensorBoard.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time

import numpy as np
import tensorflow as tf
from absl import logging

from dibigan_tf.data.files import write_json_atomic
from dibigan_tf.keras_compat import keras
from dibigan_tf.training import precision


def save_json(path, data):
    """A run's JSON file (config, split, metrics), written atomically and readably."""
    write_json_atomic(path, data, indent=2, sort_keys=True, default=str)


def read_done(stage_dir: str) -> dict:
    """A finished stage's done.json (`Stage.mark_done`): its step, images seen and seconds."""
    with open(os.path.join(stage_dir, "done.json")) as handle:
        return json.load(handle)


def stage_seconds(run_dir: str, name: str) -> float:
    """Seconds the stage `name` of a run trained, from its done.json."""
    return float(read_done(os.path.join(run_dir, name))["seconds"])


class TrainingError(RuntimeError):
    """A training cannot go on (non-finite loss, bad configuration...)."""


class StopRequested(Exception):
    """The run was asked to stop early (--stop_after_steps); its last step is checkpointed."""


# --------------------------------------------------------------------------- strategy

def make_strategy(name: str = "default", num_gpus: int | None = None):
    """`default`: TensorFlow's default (one-device) strategy; `mirrored`: MirroredStrategy over the
    GPUs (or, without GPUs, over the logical CPUs configured before TensorFlow initialised);
    `multi_worker`: MultiWorkerMirroredStrategy over the cluster that the `TF_CONFIG` environment
    variable describes (every worker runs the same command; without TF_CONFIG, one local
    worker). It must be made before TensorFlow runs any operation, which `train.py` does."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "multi_worker":
        if num_gpus:
            raise TrainingError("--num_gpus is for --strategy=mirrored; a multi_worker cluster "
                                "uses every GPU of every worker (TF_CONFIG)")
        try:
            return tf.distribute.MultiWorkerMirroredStrategy()
        except (ValueError, RuntimeError) as error:
            raise TrainingError(f"--strategy=multi_worker: {error} (TF_CONFIG="
                                f"{os.environ.get('TF_CONFIG', '')!r})") from None
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        if num_gpus:
            if num_gpus > len(devices):
                raise TrainingError(f"--num_gpus={num_gpus} but only {len(devices)} devices: "
                                    f"{devices}")
            devices = devices[:num_gpus]
        return tf.distribute.MirroredStrategy(devices)
    raise TrainingError(f"unknown strategy {name!r} (default, mirrored or multi_worker)")


# --------------------------------------------------------------------------- input pipeline

def index_batches(num_items: int, batch_size: int, start_position: int, seed: int):
    """Yields index batches of an endless stream of epochs, each a fresh permutation.

    The image at global stream position p is permutation_{p // n}[p % n] with permutation_e drawn
    from (seed, e), so a run resumed at position p sees exactly the batches it would have seen.
    """
    position = start_position
    cache = {}

    def permutation(epoch):
        if epoch not in cache:
            cache.clear()
            cache[epoch] = np.random.default_rng([seed, epoch]).permutation(num_items)
        return cache[epoch]

    while True:
        out = np.empty(batch_size, np.int64)
        for i in range(batch_size):
            epoch, offset = divmod(position + i, num_items)
            out[i] = permutation(epoch)[offset]
        position += batch_size
        yield out


def batch_noise(noise: dict, batch_size: int, seed: int, batch_number):
    """Random tensors of one global batch: name -> (shape per example, "normal" | "uniform" |
    "uniform_per_batch" (one draw repeated in every row)),
    drawn stateless from (seed, name's rank, batch_number). The noise of the k-th batch of a phase
    is thus fixed by the data position alone: the same however the batch is split over replicas,
    and the same after a resume as in an uninterrupted run."""
    out = {}
    for i, name in enumerate(sorted(noise)):
        shape, kind = noise[name]
        key = tf.stack([tf.constant(seed * 64 + i, tf.int64), tf.cast(batch_number, tf.int64)])
        if kind == "uniform_per_batch":   # one draw for the whole batch, in every row
            draw = tf.random.stateless_uniform((1,) + tuple(shape), seed=key)
            out[name] = tf.tile(draw, [batch_size] + [1] * len(shape))
            continue
        draw = {"normal": tf.random.stateless_normal,
                "uniform": tf.random.stateless_uniform}[kind]
        out[name] = draw((batch_size,) + tuple(shape), seed=key)
    return out


def array_dataset(arrays: dict, batch_size: int, start_position: int, seed: int,
                  strategy=None, prefetch: int = 4, noise: dict | None = None):
    """An endless, prefetched, resumable tf.data pipeline of batches gathered from numpy arrays.

    arrays: name -> numpy array with the same first dimension. With a strategy, the global batch
    is distributed over the replicas. noise: name -> (shape, "normal" | "uniform") random
    tensors added to each global batch before it is split (`batch_noise`; batch number
    start_position // batch_size onwards), so that a step's random draws do not depend on the
    number of replicas.
    """
    names = sorted(arrays)
    n = len(arrays[names[0]])
    for k in names:
        if len(arrays[k]) != n:
            raise TrainingError(f"array {k} has {len(arrays[k])} rows, expected {n}")

    def generator():
        for idx in index_batches(n, batch_size, start_position, seed):
            yield tuple(arrays[k][idx] for k in names)

    signature = tuple(tf.TensorSpec((batch_size,) + arrays[k].shape[1:],
                                    tf.as_dtype(arrays[k].dtype)) for k in names)
    ds = tf.data.Dataset.from_generator(generator, output_signature=signature)
    ds = ds.map(lambda *t: dict(zip(names, t)))
    if noise:
        counter = tf.data.Dataset.counter(start_position // batch_size, dtype=tf.int64)
        ds = tf.data.Dataset.zip((ds, counter)).map(
            lambda batch, k: dict(batch, **batch_noise(noise, batch_size, seed, k)))
    options = tf.data.Options()
    # Every worker builds the same stream of global batches (the seeded index batches); DATA
    # sharding makes each worker keep only its replicas' slices of each global batch (a single
    # worker keeps all), so a global batch is split over the whole cluster, never repeated.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    ds = ds.with_options(options).prefetch(prefetch)
    if strategy is not None and strategy.num_replicas_in_sync > 1:
        return strategy.experimental_distribute_dataset(ds)
    return ds


# --------------------------------------------------------------------------- progress

class Progress:
    """A progress line per stage: in-place on a terminal, every `interval` s in a log file."""

    def __init__(self, name: str, total: int, unit: str = "step", interval: float | None = None):
        self.name, self.total, self.unit = name, max(int(total), 1), unit
        self.tty = sys.stdout.isatty()
        self.interval = interval if interval is not None else (0.5 if self.tty else 30.0)
        self.start = time.time()
        self.last = 0.0

    def update(self, current: int, values: dict | None = None, force: bool = False):
        now = time.time()
        if not force and now - self.last < self.interval and current < self.total:
            return
        self.last = now
        frac = min(current / self.total, 1.0)
        elapsed = now - self.start
        bar = "#" * int(24 * frac) + "." * (24 - int(24 * frac))
        text = f"[{self.name}] {bar} {current}/{self.total} {self.unit}s {elapsed:6.0f}s"
        if values:
            text += " " + " ".join(f"{k}={v:.4g}" for k, v in values.items())
        if self.tty:
            sys.stdout.write("\r" + text[:200].ljust(120))
            if current >= self.total:
                sys.stdout.write("\n")
        else:
            sys.stdout.write(text + "\n")
        sys.stdout.flush()


# --------------------------------------------------------------------------- resumable stage

def progress_callback(name: str, unit: str):
    """A `progress(done, total, seconds)` callback drawing a Progress line (made on first use)."""
    bars = {}

    def update(done, total, _seconds):
        if total not in bars:
            bars[total] = Progress(name, total, unit=unit)
        bars[total].update(done)
    return update


class Stage:
    """One resumable training: `checkpoints/<run>/<name>/` with ckpt/, tb/ and done.json.

    `objects` are the trackables to checkpoint (models, optimizers, EMA models...). The stage owns
    a `step` counter, an `images_seen` counter (the data position) and the `elapsed` seconds, all
    checkpointed with them.
    """

    def __init__(self, run_dir: str, name: str, strategy, objects: dict, keep: int = 3):
        self.name = name
        self.dir = os.path.join(run_dir, name)
        os.makedirs(self.dir, exist_ok=True)
        self.strategy = strategy
        with strategy.scope():
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
            self.images_seen = tf.Variable(0, dtype=tf.int64, trainable=False, name="images_seen")
            self.elapsed = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="elapsed")
        self.checkpoint = tf.train.Checkpoint(step=self.step, images_seen=self.images_seen,
                                              elapsed=self.elapsed, **objects)
        self._objects = dict(objects)
        self.manager = _checkpoint_manager(self.checkpoint, os.path.join(self.dir, "ckpt"), keep)
        self._writer = None
        self._clock = time.time()

    @property
    def writer(self):
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(os.path.join(self.dir, "tb"))
        return self._writer

    @property
    def done_path(self):
        return os.path.join(self.dir, "done.json")

    def is_done(self) -> bool:
        return os.path.exists(self.done_path)

    def done_info(self) -> dict:
        return read_done(self.dir)

    def restore(self) -> bool:
        """Restores the latest checkpoint if there is one; returns whether it did.

        A damaged checkpoint (cut short, empty index, unreadable data) is passed over for the
        newest intact one, with a warning naming both; when the damaged one was a finished
        stage's final checkpoint, the stage is no longer finished and trains on from the intact
        one. Every checkpoint damaged: a TrainingError naming the folder to delete."""
        candidates = list(reversed(self.manager.checkpoints))
        if not candidates:
            self._agreed_checkpoint(None, candidates)
            return False
        damaged = []
        for path in candidates:
            try:
                self.checkpoint.restore(path).expect_partial()
                break
            except Exception as error:  # TensorFlow raises many types for a broken file
                damaged.append(f"{path} ({type(error).__name__}: {_one_line(error)})")
        else:
            raise TrainingError(f"{self.name}: every checkpoint in {self.manager.directory} is "
                                f"damaged ({'; '.join(damaged)}); delete that folder to train "
                                f"the stage from the start")
        agreed = self._agreed_checkpoint(path, candidates)
        if agreed != path:
            self.checkpoint.restore(agreed).expect_partial()
            path = agreed
            if self.is_done():   # this worker had finished; the others had not: train on
                os.replace(self.done_path, self.done_path + ".ahead")
        if damaged:
            logging.warning("%s: damaged checkpoint %s; resuming from the newest intact one, %s",
                            self.name, "; ".join(damaged), path)
            if self.is_done():
                os.replace(self.done_path, self.done_path + ".damaged")
                logging.warning("%s: its final checkpoint was damaged, so the stage trains on "
                                "from %s", self.name, path)
        self._check_networks_restored(path)
        self._keep_configured_learning_rates()
        self._clock = time.time()
        if self.is_done():
            logging.info("%s: loaded the finished stage (%s)", self.name, path)
        else:
            logging.info("%s: resuming at step %d (%d images seen) from %s", self.name,
                         int(self.step.numpy()), int(self.images_seen.numpy()), path)
        return True

    def _agreed_checkpoint(self, path, candidates):
        """Under a multi-worker strategy, the checkpoint every worker resumes from: the one of
        the lowest step any worker has as its latest (a worker killed between a step and its
        save is one checkpoint behind the others; resuming at different steps would put the
        workers at different data positions). Every worker calls this at the same point, with or
        without a checkpoint. A TrainingError when a worker lacks the agreed checkpoint."""
        workers = getattr(getattr(self.strategy, "extended", None), "_num_workers", 1)
        if workers <= 1:
            return path
        local = int(os.path.basename(path).rsplit("-", 1)[1]) if path else 0
        device = self.strategy.extended.worker_devices[0]

        def gather():
            with tf.device(device):
                mine = tf.identity(tf.constant([local], tf.int64))
            return tf.distribute.get_replica_context().all_gather(mine, axis=0)
        steps = self.strategy.experimental_local_results(
            tf.function(lambda: self.strategy.run(gather))())[0].numpy()
        common = int(steps.min())
        if common == local:
            return path
        for candidate in candidates:
            if int(os.path.basename(candidate).rsplit("-", 1)[1]) == common:
                logging.warning("%s: the workers' latest checkpoints are at steps %s; every "
                                "worker resumes from step %d (%s)", self.name,
                                sorted(set(steps.tolist())), common, candidate)
                return candidate
        raise TrainingError(f"{self.name}: the workers' latest checkpoints are at steps "
                            f"{sorted(set(steps.tolist()))} and this worker has none at step "
                            f"{common}; delete {self.manager.directory} on every worker to "
                            f"train the stage from the start")

    def _check_networks_restored(self, path):
        """Every weight of the stage's networks must come from the checkpoint: one built with
        other shape flags would otherwise resume, or load as finished, with some weights fresh.
        Optimizers are left out (a learning-rate schedule has no variable of its own; the slots
        follow their variables). Values in the checkpoint that no object here asks for (an
        optimizer's saved learning rate) are allowed."""
        networks = {k: v for k, v in self._objects.items() if "optimizer" not in k}
        try:
            tf.train.Checkpoint(**networks).restore(path).expect_partial() \
                .assert_existing_objects_matched()
        except AssertionError as error:
            first = str(error).splitlines()[0][:300]
            raise TrainingError(f"{self.name}: the checkpoint {path} does not hold every weight "
                                f"of this run's networks (were they built with other flags? "
                                f"give them the run's flags, or another --run_name): "
                                f"{first}") from None

    def _keep_configured_learning_rates(self):
        """A checkpoint holds its optimizers' learning rates; a run resumed with another
        --learning_rate would train on at the saved one, silently. The flag wins, and the log
        says so."""
        for key, obj in self._objects.items():
            wanted = getattr(obj, "_configured_learning_rate", None)
            if wanted is None:
                continue
            # (a MirroredVariable under a multi-worker strategy: read it as a tensor)
            saved = float(tf.convert_to_tensor(obj.learning_rate))
            if abs(saved - wanted) > 1e-6 * max(abs(wanted), 1e-12):
                logging.warning("%s: %s learning rate %g from the flags (the checkpoint had %g)",
                                self.name, key, wanted, saved)
                obj.learning_rate = wanted

    def tick(self):
        now = time.time()
        self.elapsed.assign_add(now - self._clock)
        self._clock = now

    def save(self):
        self.tick()
        self.manager.save(checkpoint_number=int(self.step.numpy()))

    def mark_done(self, info: dict | None = None):
        self.save()
        info = dict(info or {})
        info.update(step=int(self.step.numpy()), images_seen=int(self.images_seen.numpy()),
                    seconds=float(self.elapsed.numpy()))
        write_json_atomic(self.done_path, info, indent=2)
        if self._writer is not None:
            self._writer.flush()

    def scalars(self, values: dict, step: int | None = None):
        step = int(self.step.numpy()) if step is None else step
        with self.writer.as_default(step=step):
            for key, value in values.items():
                tf.summary.scalar(key, value)

    def images(self, name: str, grid: np.ndarray, step: int | None = None):
        """grid: uint8 [h, w, c] (one image grid)."""
        step = int(self.step.numpy()) if step is None else step
        with self.writer.as_default(step=step):
            tf.summary.image(name, grid[None], step=step)


def _one_line(error) -> str:
    return " ".join(str(error).split())[:200]


def _checkpoint_manager(checkpoint, directory: str, keep: int):
    """A CheckpointManager on `directory`. When its state file (`checkpoint`) cannot be parsed
    (TensorFlow then ignores it, and would start the stage again from nothing), it is set aside
    and rebuilt from the checkpoints present, oldest first, with a warning."""
    manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=keep)
    found = sorted((int(name[len("ckpt-"):-len(".index")]), name[:-len(".index")])
                   for name in (os.listdir(directory) if os.path.isdir(directory) else [])
                   if name.startswith("ckpt-") and name.endswith(".index")
                   and name[len("ckpt-"):-len(".index")].isdigit())
    if manager.checkpoints or not found:
        return manager
    state = os.path.join(directory, "checkpoint")
    if os.path.exists(state):
        os.replace(state, state + ".damaged")
    paths = [os.path.join(directory, name) for _, name in found]
    logging.warning("%s: checkpoint state file missing or damaged (set aside as "
                    "checkpoint.damaged); rebuilt from the %d checkpoints found, the newest %s",
                    directory, len(paths), paths[-1])
    times = [os.path.getmtime(p + ".index") for p in paths]
    tf.compat.v1.train.update_checkpoint_state(directory, paths[-1], paths,
                                               all_model_checkpoint_timestamps=times,
                                               last_preserved_timestamp=min(times) - 1.0)
    return tf.train.CheckpointManager(checkpoint, directory, max_to_keep=keep)


def check_finite(values: dict, stage: str, step: int):
    """Stops a run with a message naming the loss, stage and step when a loss is NaN or Inf."""
    for key, value in values.items():
        if not math.isfinite(float(value)):
            raise TrainingError(f"loss {key!r} is {float(value)} in stage {stage} at step {step}; "
                                f"the last good checkpoint is kept")


def learning_rate_schedule(learning_rate, decay, total_images, batch_size):
    """An Adam step for `build_optimizer`: the float itself ("constant") or a cosine decay from
    it to 0 ("cosine") over the steps that `loops.run_phase` takes for `total_images` in batches
    of `batch_size`; a function of the optimizer's step count, so that a resumed run continues
    the same curve."""
    if decay == "constant":
        return learning_rate
    if decay != "cosine":
        raise ValueError(f"lr_decay must be 'cosine' or 'constant', not {decay!r}")
    steps = max(1, -(-total_images // batch_size))
    return keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=steps, alpha=0.0)


def build_optimizer(strategy, variables, learning_rate, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                    mixed_precision="float32"):
    """Adam, created inside the strategy scope and built on its variables (so checkpoint restore
    needs no deferred slot creation); under mixed_float16 wrapped in a dynamic loss scale
    (training/precision.py)."""
    with strategy.scope():
        opt = keras.optimizers.Adam(learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon)
        opt = precision.wrap_optimizer(opt, mixed_precision)
        opt.build(variables)
    if not callable(learning_rate):
        # a checkpoint restores the step it was saved with; Stage.restore sets this one back
        opt._configured_learning_rate = float(learning_rate)
    return opt

"""Exporting a trained generator for use outside this project.

`export_generator(run_dir, out_dir)` writes a SavedModel whose signatures take matcher features
and give images, with G's structure, weights and the run's feature normalisation inside:

- `serving_default(features float32 [n, d])`: v drawn from N(0, I) by a stateless generator
  seeded from the features themselves (the same features give the same image);
- `with_latent(features [n, d], v float32 [n, latent])`: the caller's v.

Both return `images` (uint8 [n, h, w, c], 0..255) and `images_float` (float32 in [-1, 1], G's own
output). `load_exported(path)` loads it back (only TensorFlow is needed). The same G_ema is also
written as a Keras file (`generator_ema.keras`, with `feature_norm.npz`), loaded by
`load_keras_generator`.
"""
from __future__ import annotations

import json
import os

import numpy as np
import tensorflow as tf

from dibigan_tf.training.gan import TrainedGenerator


class _Exported(tf.Module):
    def __init__(self, generator: TrainedGenerator):
        super().__init__()
        g = generator
        self.ema = g.ema
        self.feature_mean = tf.Variable(g.feature_mean, trainable=False)
        self.feature_std = tf.Variable(g.feature_std, trainable=False)
        self.latent_dim = g.cfg.latent_dim
        self.last = g.cfg.num_blocks - 1
        d = g.feature_dim
        self.serving_default = tf.function(
            self._default, input_signature=[tf.TensorSpec([None, d], tf.float32, "features")])
        self.with_latent = tf.function(
            self._with_latent, input_signature=[tf.TensorSpec([None, d], tf.float32, "features"),
                                                tf.TensorSpec([None, self.latent_dim],
                                                              tf.float32, "v")])

    def _images(self, features, v):
        f = (features - self.feature_mean) / self.feature_std
        x = self.ema(v, f, stage=self.last, alpha=1.0, training=False)
        pixels = tf.cast(tf.clip_by_value(tf.round((x + 1.0) * 127.5), 0.0, 255.0), tf.uint8)
        return {"images": pixels, "images_float": x}

    def _default(self, features):
        # a per-row seed from the feature bits: reproducible, different for different features
        bits = tf.bitcast(features, tf.int32)
        seeds = tf.stack([tf.reduce_sum(bits, axis=1), tf.reduce_sum(bits * 31 + 7, axis=1)], 1)
        v = tf.map_fn(lambda s: tf.random.stateless_normal([self.latent_dim], s), seeds,
                      fn_output_signature=tf.float32)
        return self._images(features, v)

    def _with_latent(self, features, v):
        return self._images(features, v)


def export_generator(run_dir: str, out_dir: str) -> str:
    """SavedModel of the run's EMA G in `out_dir` (plus `dibigan.json`: feature size, latent
    size, resolution, run); returns out_dir."""
    generator = TrainedGenerator(run_dir)
    module = _Exported(generator)
    tf.saved_model.save(module, out_dir, signatures={
        "serving_default": module.serving_default, "with_latent": module.with_latent})
    # the same G_ema as a Keras file (+ its feature normalisation), for Keras users
    generator.ema.save(os.path.join(out_dir, KERAS_FILE))
    np.savez(os.path.join(out_dir, NORM_FILE), mean=generator.feature_mean.numpy(),
             std=generator.feature_std.numpy())
    with open(os.path.join(out_dir, "dibigan.json"), "w") as handle:
        json.dump({"feature_dim": generator.feature_dim, "latent_dim": generator.cfg.latent_dim,
                   "resolution": generator.resolution, "channels": generator.channels,
                   "run": os.path.abspath(run_dir)}, handle, indent=2)
    return out_dir


KERAS_FILE = "generator_ema.keras"
NORM_FILE = "feature_norm.npz"


def load_keras_generator(out_dir: str):
    """(G_ema as a Keras model, condition function): `model(v, condition(features), stage=last,
    alpha=1.0)` gives G's float images; the custom layers come from dibigan_tf.models."""
    from dibigan_tf.keras_compat import keras
    import dibigan_tf.models.generator as generator_module
    import dibigan_tf.models.layers as layers_module
    objects = {}
    for module in (layers_module, generator_module):
        objects.update({k: v for k, v in vars(module).items() if isinstance(v, type)})
    model = keras.models.load_model(os.path.join(out_dir, KERAS_FILE), custom_objects=objects,
                                    compile=False)
    with np.load(os.path.join(out_dir, NORM_FILE)) as norm:
        mean, std = norm["mean"], norm["std"]
    return model, (lambda features: (np.asarray(features, np.float32) - mean) / std)


def load_exported(path: str):
    """(signature callables {"serving_default", "with_latent"}, metadata dict)."""
    loaded = tf.saved_model.load(path)
    with open(os.path.join(path, "dibigan.json")) as handle:
        meta = json.load(handle)
    return loaded, meta


def reconstruct_with(generator_path: str, features: np.ndarray, v: np.ndarray | None = None,
                     batch_size: int = 250, seed: int = 0) -> np.ndarray:
    """uint8 images from an exported SavedModel directory or a run directory."""
    features = np.asarray(features, np.float32)
    if os.path.exists(os.path.join(generator_path, "saved_model.pb")):
        loaded, meta = load_exported(generator_path)
        if features.ndim != 2 or features.shape[1] != meta["feature_dim"]:
            raise ValueError(f"the generator takes {meta['feature_dim']}-D features, got "
                             f"{features.shape}")
        out = []
        for i in range(0, len(features), batch_size):
            f = tf.constant(features[i:i + batch_size])
            if v is None:
                res = loaded.signatures["serving_default"](features=f)
            else:
                res = loaded.signatures["with_latent"](
                    features=f, v=tf.constant(np.asarray(v[i:i + batch_size], np.float32)))
            out.append(res["images"].numpy())
        return np.concatenate(out)
    return TrainedGenerator(generator_path)(features, seed=seed, v=v)

"""Throughput of one training step of each trainable, as a table and a JSON file.

    python experiments/bench.py [--only=flow,student,gan,pipeline,features] [--steps=10]
        [--jit_compile] [--mixed_precision=mixed_bfloat16] [--out=bench.json] [--tf_threads=1]

Each row: images per second after a warm-up (the first call traces the tf.function), with the
batch size and resolution stated; the G+D rows also give that first call's seconds (`first s`:
the trace and first execution a training pays once per phase). Run on an otherwise idle machine.
"""
import dataclasses
import json
import os
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dibigan_tf import keras_compat  # noqa: E402,F401
from dibigan_tf.training.precision import POLICIES  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("only", ["flow", "student", "gan", "pipeline", "features"], "Which "
                  "benchmarks to run (pipeline: the prefetched input pipeline alone; features: "
                  "dlib alignment, and dlib's descriptor against its Keras model).")
flags.DEFINE_integer("feature_images", 64, "Images per dlib extraction row.")
flags.DEFINE_integer("descriptor_batch", 16, "Chips per call in the dlib descriptor rows, the "
                     "same for dlib and for its Keras model.")
flags.DEFINE_integer("tf_threads", 0, "TensorFlow's intra- and inter-op threads for every row "
                     "(0: its default, every core; dlib's descriptor, built without BLAS, always "
                     "runs on one thread, so --tf_threads=1 compares the two thread for thread).")
flags.DEFINE_list("query_runs", [], "Run directories whose report/metrics.json query counts "
                  "are listed with the time they take at the measured dlib rate.")
flags.DEFINE_integer("steps", 10, "Timed steps per row (after one warm-up step).")
flags.DEFINE_string("out", "checkpoints/bench.json", "JSON output path.")
flags.DEFINE_bool("jit_compile", False, "XLA-compile every training step (H, F^S, G+D).")
flags.DEFINE_enum("mixed_precision", "float32", list(POLICIES),
                  "Precision policy of the F^S and G+D rows (H is always float32).")
flags.DEFINE_list("gan_rows", ["digits", "faces", "pggan512"], "GAN rows: digits (32x32, the "
                  "default run's G/D), faces (64x64), pggan512 (512 maps at every scale up to "
                  "32x32, 8x512 mapping, batch 16, stable, G+D losses only: the width of "
                  "published StyleGAN/PGGAN code); faces-whitebox (the faces G/D in whitebox "
                  "mode with dlib's network in Keras as F; not by default: it needs the faces "
                  "extra).")
flags.DEFINE_bool("flops", True, "Count each step's FLOPs (TensorFlow's profiler) and give the "
                  "utilisation of the machine's measured matmul FLOP/s.")


def step_flops(tf_function, *args):
    """Floating-point operations of one call of a tf.function, counted by TensorFlow's profiler
    on its graph (convolutions, matmuls and their gradients; elementwise ops mostly uncounted)."""
    import tensorflow as tf
    graph = tf_function.get_concrete_function(*args).graph
    opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    info = tf.compat.v1.profiler.profile(graph=graph, options=opts)
    return int(info.total_float_ops)


def machine_flops(n=4096, repeats=5):
    """Measured float32 matmul FLOP/s of this machine (n x n by n x n, best of `repeats`; 4096:
    smaller matmuls measured well below what the convolutions of a wide G+D step reach)."""
    import tensorflow as tf
    a = tf.random.normal([n, n])
    b = tf.random.normal([n, n])
    mm = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)))
    float(mm())
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        float(mm())
        best = min(best, time.perf_counter() - start)
    return 2.0 * n ** 3 / best


def _time(fn, steps):
    """(seconds per call after a trace + warm-up call, seconds of the first call: the trace and
    first execution a training pays once per phase). The peak of TensorFlow's CPU allocator
    over the timed calls is left for `_peak_mb` (tensors only: weights, activations, gradients,
    optimizer slots; not the Python process around them)."""
    import tensorflow as tf
    start = time.perf_counter()
    fn()  # trace + warm-up
    first = time.perf_counter() - start
    fn()
    try:
        tf.config.experimental.reset_memory_stats("CPU:0")
    except ValueError:   # a CPU allocator without statistics (TensorFlow's build, this CPU)
        pass
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps, first


def _peak_mb():
    """Peak allocator memory of the timed calls in MB, or None where TensorFlow keeps no
    statistics for the CPU allocator (then the row says so rather than the bench failing)."""
    import tensorflow as tf
    try:
        return tf.config.experimental.get_memory_info("CPU:0")["peak"] / 2 ** 20
    except ValueError:
        return None


def _speed(row, jit_compile, precision="float32"):
    row.update({"xla": bool(jit_compile), "precision": precision, "peak_memory_mb": _peak_mb()})
    return row


def bench_flow(steps, jit_compile=False):
    import numpy as np
    import tensorflow as tf
    from dibigan_tf.models.flow import dequantize, nll_loss
    from dibigan_tf.training.common import build_optimizer, make_strategy
    from dibigan_tf.training.flow import make_flow
    rows = []
    strategy = make_strategy("default")
    for shape in [(32, 32, 1), (64, 64, 3)]:
        batch = 64
        flow, prior = make_flow(strategy, shape, 10)
        variables = flow.trainable_variables + prior.trainable_variables
        opt = build_optimizer(strategy, variables, 1e-3)
        images = tf.constant(np.random.default_rng(0).integers(0, 256, (batch,) + shape),
                             tf.uint8)
        labels = tf.constant(np.arange(batch) % 10, tf.int64)

        @tf.function(jit_compile=jit_compile or None)
        def step():
            x = dequantize(images)
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(nll_loss(flow, prior, x, labels))
            opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
            return loss

        dt, _ = _time(lambda: float(step()), steps)
        rows.append(_speed({"name": "H (flow) train step",
                            "resolution": f"{shape[0]}x{shape[1]}x{shape[2]}",
                            "batch": batch, "seconds_per_step": dt,
                            "images_per_second": batch / dt, "params": flow.count_params()},
                           jit_compile))
        if FLAGS.flops:
            rows[-1]["flops_per_step"] = step_flops(step)
    return rows


def bench_student(steps, jit_compile=False, precision="float32"):
    import tensorflow as tf
    from dibigan_tf import losses
    from dibigan_tf.training.common import build_optimizer, make_strategy
    from dibigan_tf.training import precision as mp
    from dibigan_tf.training.student import make_student
    rows = []
    strategy = make_strategy("default")
    for shape, depth, width, batch in [((32, 32, 1), "small", 16, 64),
                                       ((64, 64, 3), "18", 32, 64)]:
        model = make_student(strategy, shape, 128, depth, width, precision)
        opt = build_optimizer(strategy, model.trainable_variables, 1e-3,
                              mixed_precision=precision)
        x = tf.random.uniform((batch,) + shape, -1, 1)
        t = tf.random.normal([batch, 128])

        @tf.function(jit_compile=jit_compile or None)
        def step():
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(losses.cosine_distill_loss(t, model(x, training=True)[-1]))
                scaled = mp.scale_loss(opt, loss)
            grads = mp.gradients(tape, opt, scaled, model.trainable_variables)
            opt.apply_gradients(zip(grads, model.trainable_variables))
            return loss

        dt, _ = _time(lambda: float(step()), steps)
        rows.append(_speed({"name": f"F^S train step (resnet-{depth}, width {width})",
                            "resolution": f"{shape[0]}x{shape[1]}x{shape[2]}", "batch": batch,
                            "seconds_per_step": dt, "images_per_second": batch / dt,
                            "params": model.count_params()}, jit_compile, precision))
        if FLAGS.flops:
            rows[-1]["flops_per_step"] = step_flops(step)
    return rows


def bench_gan(steps, jit_compile, precision="float32"):
    import numpy as np
    import tensorflow as tf
    from dibigan_tf.training.common import make_strategy
    from dibigan_tf.training.flow import make_flow
    from dibigan_tf.training.gan import GanConfig, GanTrainer
    from dibigan_tf.training.student import make_student
    rows = []
    strategy = make_strategy("default")
    # the G/D of faces_blackbox.flags and lfw_blackbox_dlib.flags
    faces_gan = GanConfig(
        start_resolution=8, num_blocks=4, g_channels=(256, 128, 64, 32),
        d_channels=(64, 64, 32, 32), stable_images=(1,) * 4, fade_images=(0,) + (1,) * 3,
        batch_sizes=(64, 32, 32, 16), biject_margin=1.0, jit_compile=jit_compile,
        mixed_precision=precision)
    configs = [
        ("digits (F)", (32, 32, 1), 1024, GanConfig(
            g_channels=(128, 64, 16), d_channels=(64, 32, 16), batch_sizes=(64, 64, 64),
            biject_margin=1.0, jit_compile=jit_compile, mixed_precision=precision),
         ("small", 16)),
        # with their F^S
        ("faces 64x64 (F)", (64, 64, 3), 128, faces_gan, ("18", 32)),
    ]
    # the same G/D in whitebox mode: F itself (dlib's network in Keras, lfw_whitebox_dlib.flags)
    # gives Eq. 7's taps and embedding, through 150x150 chips resized inside the step
    configs.append(("faces-whitebox 64x64 (F = dlib_keras)", (64, 64, 3), 128, faces_gan,
                    ("dlib_keras", 0)))
    configs.append(("pggan512 32x32 (G+D only)", (32, 32, 3), 512, GanConfig(
        start_resolution=4, num_blocks=4, g_channels=(512,) * 4, d_channels=(512,) * 4,
        mapping_layers=8, mapping_dim=512, latent_dim=512, stable_images=(1,) * 4,
        fade_images=(0,) + (1,) * 3, batch_sizes=(16,) * 4, use_distill=False,
        use_biject=False, jit_compile=jit_compile, mixed_precision=precision), ("small", 8)))
    configs = [c for c in configs if c[0].split()[0] in FLAGS.gan_rows]
    for label, shape, fdim, cfg, (depth, width) in configs:
        rng = np.random.default_rng(0)
        n = 128
        images = rng.integers(0, 256, (n,) + shape).astype(np.uint8)
        feats = rng.standard_normal((n, fdim)).astype(np.float32)
        labels = rng.integers(0, 10, n)
        if depth == "dlib_keras":
            from dibigan_tf.matchers.base import WhiteboxNetwork
            from dibigan_tf.matchers.dlib_keras import DlibKerasMatcher
            student = WhiteboxNetwork(DlibKerasMatcher(), shape)
        else:
            student = make_student(strategy, shape, fdim, depth, width)
        flow, _ = make_flow(strategy, shape, 10)
        trainer = GanTrainer("/tmp/dibigan-bench", strategy, cfg, images, feats, labels,
                             student=student, flow=flow)
        for phase in cfg.schedule().phases():
            if phase.fade or (label.startswith("pggan512") and
                              phase.resolution != shape[0]):
                continue
            b = phase.batch_size
            batch = trainer.with_noise({"images": tf.constant(images[:b]),
                                        "features": tf.constant(feats[:b]),
                                        "labels": tf.constant(labels[:b].astype(np.int64))})
            args = trainer.step_args(phase.start_image)
            # The stable-phase step as trained (real F^S/H targets from the per-phase cache) and
            # the same step computing them every time (before the cache), for comparison.
            for variant in ("cached targets", "direct"):
                trainer.cfg = dataclasses.replace(cfg, cache_real_targets=(
                    variant == "cached targets"))
                data = dict(batch)
                if trainer.uses_cached_targets(phase):
                    data.update({k: tf.constant(v[:b])
                                 for k, v in trainer.real_targets(phase.resolution).items()})
                if variant == "direct" and not (cfg.use_distill or cfg.use_biject):
                    continue    # no F^S/H targets: one variant only
                step = trainer.make_step(phase)
                dt, first = _time(lambda: float(step(data, *args)["g_loss"]), steps)
                row = _speed({"name": f"G+D step, {label}, stable, {variant}",
                              "resolution": f"{phase.resolution}x{phase.resolution}", "batch": b,
                              "seconds_per_step": dt, "images_per_second": b / dt,
                              "first_call_seconds": first},
                             jit_compile, precision)
                if FLAGS.flops:
                    row["flops_per_step"] = step_flops(step, data, *args)
                rows.append(row)
    return rows


def bench_pipeline(steps):
    """Batches per second the training input pipeline (`array_dataset`: seeded index batches
    gathered from the in-memory arrays, prefetched) delivers on its own, at the shapes the steps
    consume: it must outrun every step above, or the step would wait for data."""
    import numpy as np
    from dibigan_tf.training.common import array_dataset
    rows = []
    rng = np.random.default_rng(0)
    for shape, fdim, batch, n in [((32, 32, 1), 1024, 64, 4000), ((64, 64, 3), 128, 16, 7000),
                                  ((64, 64, 3), 128, 64, 7000)]:
        arrays = {"images": rng.integers(0, 256, (n,) + shape).astype(np.uint8),
                  "features": rng.standard_normal((n, fdim)).astype(np.float32),
                  "labels": rng.integers(0, 100, n).astype(np.int64)}
        # with the G+D step's noise (v, 128-D, and eps; GanTrainer.noise_spec)
        noise = {"noise_v": ((128,), "normal"), "noise_eps": ((), "uniform")}
        iterator = iter(array_dataset(arrays, batch, 0, 0, noise=noise))
        count = max(steps * 20, 200)
        dt, _ = _time(lambda: next(iterator), count)
        rows.append({"name": "input pipeline (array_dataset + G noise, prefetch 4)",
                     "resolution": f"{shape[0]}x{shape[1]}x{shape[2]}", "batch": batch,
                     "seconds_per_step": dt, "images_per_second": batch / dt})
    return rows


def _face_photo():
    """A real face photo from a package (scikit-image's astronaut), or None."""
    try:
        import skimage.data
        from PIL import Image
        import numpy as np
        path = os.path.join(os.path.dirname(skimage.data.__file__), "astronaut.png")
        return np.asarray(Image.open(path).convert("RGB"))
    except (ImportError, OSError):
        return None


def _descriptor_chips(chip, n, size):
    """n chips of `size`: the photo's chip shifted by up to 3 pixels and mirrored (98 distinct
    ones, then again), the same for every matcher."""
    import numpy as np
    from PIL import Image
    out = []
    for i in range(n):
        dy, dx = i % 7 - 3, (i // 7) % 7 - 3
        moved = np.roll(chip, (dy, dx), axis=(0, 1))
        moved = moved[:, ::-1] if (i // 49) % 2 else moved
        out.append(np.asarray(Image.fromarray(np.ascontiguousarray(moved)).resize((size, size))))
    return np.stack(out)


def bench_features(n):
    """dlib's ResNet descriptor per image (the blackbox queries of a face run), by dlib and by
    its Keras model (--matcher=dlib_keras) on the same chips in batches of the same size, side
    by side, and the detector + 5-point alignment per photo."""
    from dibigan_tf.data.align import DlibAligner
    from dibigan_tf.matchers.dlib_keras import DlibKerasMatcher
    from dibigan_tf.matchers.dlib_matcher import DlibMatcher
    from PIL import Image
    import numpy as np
    rows = []
    photo = _face_photo()
    if photo is None:
        print("features: scikit-image's astronaut.png is missing; skipped")
        return rows
    aligner = DlibAligner(size=150)
    chip = aligner.align(photo).image
    batch = FLAGS.descriptor_batch
    for size in (150, 64):
        images = _descriptor_chips(chip, n, size)
        rates = {}
        for label, matcher in (
                ("dlib descriptor (blackbox query), aligned chip",
                 DlibMatcher(image_size=size, batch_size=batch)),
                ("Keras model of dlib's descriptor (dlib_keras)",
                 DlibKerasMatcher(image_size=size, batch_size=batch))):
            matcher.embed(images[:batch])   # warm-up (and the Keras model's trace)
            start = time.perf_counter()
            matcher.embed(images)
            dt = (time.perf_counter() - start) / n
            rates[matcher.name] = 1.0 / dt
            rows.append({"name": label, "resolution": f"{size}x{size}x3", "batch": batch,
                         "images": n, "seconds_per_step": dt * batch,
                         "images_per_second": 1.0 / dt})
        rows[-1]["speedup_over_dlib"] = rates["dlib_keras"] / rates["dlib"]
    photos = [np.asarray(Image.fromarray(photo).resize((250, 250)))] * max(n // 2, 4)
    start = time.perf_counter()
    for p in photos:
        aligner.align(p)
    dt = (time.perf_counter() - start) / len(photos)
    rows.append({"name": "dlib detect + 5 landmarks + chip (alignment)",
                 "resolution": "250x250x3", "batch": 1, "seconds_per_step": dt,
                 "images_per_second": 1.0 / dt})
    return rows


def _query_lines(rows):
    rate = next((r["images_per_second"] for r in rows
                 if r["name"].startswith("dlib descriptor") and r["resolution"].startswith("150")),
                None)
    out = []
    for run in FLAGS.query_runs:
        path = os.path.join(run, "report", "metrics.json")
        if not os.path.exists(path):
            path = os.path.join(run, "student", "metrics.json")
        if not os.path.exists(path):
            out.append(f"{run}: no report/metrics.json or student/metrics.json")
            continue
        with open(path) as handle:
            queries = json.load(handle).get("blackbox_queries")
        line = f"{run}: blackbox_queries {queries}"
        config = os.path.join(run, "config.json")
        matcher = ""
        if os.path.exists(config):
            with open(config) as handle:
                matcher = json.load(handle).get("matcher", {}).get("name", "")
        if rate and queries and matcher == "dlib":
            line += f" (at {rate:.1f} dlib queries/s: {queries / rate / 60:.1f} min)"
        out.append(line)
    return out


def main(argv):
    del argv
    if FLAGS.tf_threads:
        import tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(FLAGS.tf_threads)
        tf.config.threading.set_inter_op_parallelism_threads(FLAGS.tf_threads)
    rows = []
    if "flow" in FLAGS.only:
        rows += bench_flow(FLAGS.steps, FLAGS.jit_compile)
    if "student" in FLAGS.only:
        rows += bench_student(FLAGS.steps, FLAGS.jit_compile, FLAGS.mixed_precision)
    if "gan" in FLAGS.only:
        rows += bench_gan(FLAGS.steps, FLAGS.jit_compile, FLAGS.mixed_precision)
    if "pipeline" in FLAGS.only:
        rows += bench_pipeline(FLAGS.steps)
    if "features" in FLAGS.only:
        rows += bench_features(FLAGS.feature_images)
    peak = machine_flops() if FLAGS.flops and any("flops_per_step" in r for r in rows) else None
    if peak:
        print(f"machine: {peak / 1e9:.1f} GFLOP/s (float32 4096x4096 matmul, best of 5)")
    print(f"{'benchmark':<56} {'input':>10} {'batch':>6} {'mode':>9} {'ms/step':>9} "
          f"{'img/s':>8} {'first s':>8} {'peak MB':>8} {'GFLOP/step':>11} {'util':>6}")
    for r in rows:
        extra = ""
        if peak and "flops_per_step" in r:
            r["gflops_per_second"] = r["flops_per_step"] / r["seconds_per_step"] / 1e9
            r["utilisation"] = r["flops_per_step"] / r["seconds_per_step"] / peak
            extra = f" {r['flops_per_step'] / 1e9:>11.2f} {100 * r['utilisation']:>5.0f}%"
        mem = (f"{r['peak_memory_mb']:>8.0f}" if r.get("peak_memory_mb") is not None
               else f"{'':>8}")
        mode = ""
        if "precision" in r:
            mode = {"float32": "f32", "mixed_float16": "f16", "mixed_bfloat16": "bf16"}[
                r["precision"]] + ("+xla" if r["xla"] else "")
        first = (f"{r['first_call_seconds']:>8.1f}" if "first_call_seconds" in r
                 else f"{'':>8}")
        print(f"{r['name']:<56} {r['resolution']:>10} {r['batch']:>6} {mode:>9} "
              f"{1000 * r['seconds_per_step']:>9.1f} {r['images_per_second']:>8.1f} {first}"
              f"{mem}{extra}")
    if peak:
        rows.append({"name": "machine matmul", "gflops_per_second": peak / 1e9})
    for r in rows:
        if "speedup_over_dlib" in r:
            print(f"dlib_keras / dlib at {r['resolution']}, batch {r['batch']}: "
                  f"{r['speedup_over_dlib']:.1f}x")
    for line in _query_lines(rows):
        print(line)
    os.makedirs(os.path.dirname(FLAGS.out) or ".", exist_ok=True)
    with open(FLAGS.out, "w") as handle:
        json.dump(rows, handle, indent=2)
    print(f"written: {FLAGS.out}")


if __name__ == "__main__":
    app.run(main)

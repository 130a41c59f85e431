"""Mixed precision for the trainings (`--mixed_precision`).

`float32` (the default), `mixed_float16` (float16 arithmetic with dynamic loss scaling) or
`mixed_bfloat16` (bfloat16 arithmetic; its float32-sized exponent needs no loss scaling). Variables
stay float32 in every policy; models built inside `policy_scope` compute in the half type and
return float32 outputs (the generator's images, the critic's scores, F^S's taps and embedding), so
every loss is summed in float32.

What it applies to: F^S and G/D. The flow H always trains and runs in float32: its log-determinant
is a sum of thousands of log-scales and its bits per dimension are compared to the second decimal,
which half precision cannot hold; the frozen H and F^S inside the GAN step are float32 networks fed
float32 images.

On this machine's CPU (no float16 units; bfloat16 is emulated unless the CPU has AVX-512 BF16 or
AMX) both policies are slower than float32, which is why float32 is the default: see the README's
benchmark table for the measured numbers.
"""
from __future__ import annotations

import contextlib

from dibigan_tf.config import PRECISION_POLICIES as POLICIES
from dibigan_tf.keras_compat import keras


def check_policy(name: str) -> str:
    if name not in POLICIES:
        raise ValueError(f"--mixed_precision must be one of {', '.join(POLICIES)}, got {name!r}")
    return name


@contextlib.contextmanager
def policy_scope(name: str = "float32"):
    """Keras layers created inside compute in `name`'s dtype; the previous global policy is put
    back afterwards (so networks built elsewhere, e.g. the frozen H, stay float32)."""
    check_policy(name)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def wrap_optimizer(optimizer, name: str):
    """A LossScaleOptimizer (dynamic loss scale) around `optimizer` under mixed_float16; the
    optimizer itself otherwise."""
    if check_policy(name) == "mixed_float16":
        return keras.mixed_precision.LossScaleOptimizer(optimizer)
    return optimizer


def is_loss_scaled(optimizer) -> bool:
    return isinstance(optimizer, keras.mixed_precision.LossScaleOptimizer)


def scale_loss(optimizer, loss):
    """Call inside the GradientTape: the loss the tape differentiates (times the loss scale under
    mixed_float16, so small float16 gradients do not flush to zero)."""
    return optimizer.get_scaled_loss(loss) if is_loss_scaled(optimizer) else loss


def gradients(tape, optimizer, scaled_loss, variables):
    """d loss / d variables from `scaled_loss = scale_loss(optimizer, loss)`, unscaled. Under
    mixed_float16 a step whose gradients overflow is skipped by the optimizer and the scale
    halved (LossScaleOptimizer's dynamic scaling)."""
    grads = tape.gradient(scaled_loss, variables)
    if is_loss_scaled(optimizer):
        grads = optimizer.get_unscaled_gradients(grads)
    return grads

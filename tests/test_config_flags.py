"""The flags are generated from the config dataclasses: every setting has exactly one flag (or
says what derives it), every flag reaches its field, and the defaults are the dataclasses'."""
import dataclasses
import os
import sys

import pytest
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dibigan_tf import config as config_module  # noqa: E402
from dibigan_tf.config import RunConfig, SECTIONS  # noqa: E402
from experiments.config_flags import (FlagError, config_from_flags, define_flags,  # noqa: E402
                                      flag_specs, _kind)


def _flag_values(args=()):
    values = flags.FlagValues()
    define_flags(flag_values=values)
    values(["prog", *args])
    return values


def _field(cfg, path):
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


def test_every_field_has_a_flag_or_a_reason():
    for cls in [RunConfig] + [c for _, c in SECTIONS.values()]:
        for field in dataclasses.fields(cls):
            if cls is RunConfig and field.name in SECTIONS:
                continue
            meta = field.metadata
            assert ("help" in meta) != ("derived" in meta), f"{cls.__name__}.{field.name}"
            assert meta.get("help", meta.get("derived")), f"{cls.__name__}.{field.name}"
    names = [spec.name for spec in flag_specs()]
    assert len(names) == len(set(names)), "two fields share a flag name"


def test_loss_weights_and_optimizer_settings_have_flags():
    names = {spec.name for spec in flag_specs()}
    for name in ("alpha_b", "beta_adv", "tap_weight", "embedding_weight", "recon_weight",
                 "gp_weight", "drift", "biject_margin", "learning_rate", "beta_1", "beta_2",
                 "mapping_lr_mul", "student_learning_rate", "student_batch_size",
                 "flow_learning_rate", "flow_batch_size", "matcher_learning_rate",
                 "matcher_batch_size", "ema_kimg"):
        assert name in names, name


def test_defaults_are_the_dataclasses():
    values = _flag_values()
    assert config_from_flags(flag_values=values) == RunConfig()
    for spec in flag_specs():
        default = values[spec.name].default
        if _kind(spec) == "int_list":
            assert default == [str(v) for v in spec.default or ()], spec.name
        elif _kind(spec) != "str_list":
            assert default == spec.default, spec.name


def _other(spec):
    """A valid value different from the default, as (command-line text, expected field)."""
    kind, default, meta = _kind(spec), spec.default, spec.meta
    if kind == "bool":
        return ("true" if not default else "false"), not default
    if kind == "int":
        value = (meta["lower_bound"] or 0) + 1 if default != (meta["lower_bound"] or 0) + 1 \
            else default + 1
        return str(value), value
    if kind == "float":
        value = default * 2 + 1.5
        if meta["upper_bound"] is not None:      # inside the range: halfway to its top
            value = (default + meta["upper_bound"]) / 2
        return str(value), value
    if meta["choices"]:
        value = [c for c in meta["choices"] if c != default][0]
        return value, value
    if kind == "str":
        return "some/where", "some/where"
    if kind == "int_list":
        return "7,9", (7, 9)
    if kind == "str_list":
        return "flow", "flow"
    if kind == "multi":
        return "X-Key:env:SOME_VAR", ["X-Key:env:SOME_VAR"]
    raise AssertionError(kind)


@pytest.mark.parametrize("spec", list(flag_specs()), ids=lambda s: s.name)
def test_each_flag_reaches_its_field(spec):
    text, expected = _other(spec)
    cfg = config_from_flags(flag_values=_flag_values([f"--{spec.name}={text}"]))
    assert _field(cfg, spec.path) == expected
    assert _field(cfg, spec.path) != _field(RunConfig(), spec.path)


def test_a_bad_integer_list_is_a_one_line_error():
    with pytest.raises(FlagError, match="--g_channels expects integers"):
        config_from_flags(flag_values=_flag_values(["--g_channels=64,wide"]))


def test_choices_shared_with_the_code_agree():
    from dibigan_tf import losses
    from dibigan_tf.training import precision
    assert config_module.BIJECT_READINGS == losses.BIJECT_READINGS
    assert precision.POLICIES == config_module.PRECISION_POLICIES

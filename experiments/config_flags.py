"""Command-line flags generated from the config dataclasses (dibigan_tf/config.py).

Every field declared with `config.setting(...)` becomes one absl flag whose name, default, help
and allowed values come from the field, so a default is written once, in config.py.
`define_flags(groups)` defines the flags of some groups ("matcher" and "faces": shared by
train.py and evaluate.py; "run": every other setting); `config_from_flags(cls)` builds a config
from whichever of its flags are defined, leaving the others at their defaults.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator

from absl import flags

from dibigan_tf.config import SECTIONS, RunConfig

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class FlagSpec:
    name: str            # the flag, e.g. "student_width"
    section: str         # "" (RunConfig itself) or a SECTIONS key
    field: dataclasses.Field

    @property
    def meta(self):
        return self.field.metadata

    @property
    def group(self) -> str:
        return self.meta["group"] or "run"

    @property
    def default(self):
        if self.field.default_factory is not dataclasses.MISSING:
            return self.field.default_factory()
        return self.field.default

    @property
    def path(self) -> str:
        return f"{self.section}.{self.field.name}" if self.section else self.field.name


def flag_specs() -> Iterator[FlagSpec]:
    """One spec per flagged field, in declaration order (RunConfig, then each section)."""
    sections = {None: ("", RunConfig), **SECTIONS}
    for section, (prefix, cls) in sections.items():
        for field in dataclasses.fields(cls):
            if section is None and field.name in SECTIONS:
                continue
            if "derived" in field.metadata or "help" not in field.metadata:
                continue
            name = field.metadata["flag"] or prefix + field.name
            yield FlagSpec(name, section or "", field)


def _kind(spec: FlagSpec) -> str:
    kind, default = spec.meta["kind"], spec.default
    if kind:
        return kind
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, int):
        return "int"
    if isinstance(default, float):
        return "float"
    if isinstance(default, (tuple, list)):
        return "int_list"
    return "enum" if spec.meta["choices"] else "str"


def define_flags(groups=("run", "matcher", "faces"), flag_values=FLAGS):
    """Defines the flags of the fields in `groups` (a name another module defined already is an
    absl DuplicateFlagError, never a silent reuse of that flag)."""
    for spec in flag_specs():
        if spec.group not in groups:
            continue
        meta, default, kind = spec.meta, spec.default, _kind(spec)
        bounds = {k: meta[k] for k in ("lower_bound", "upper_bound") if meta[k] is not None}
        args = dict(name=spec.name, help=meta["help"], flag_values=flag_values)
        if kind == "bool":
            flags.DEFINE_bool(default=default, **args)
        elif kind == "int":
            flags.DEFINE_integer(default=default, **args, **bounds)
        elif kind == "float":
            flags.DEFINE_float(default=default, **args, **bounds)
        elif kind == "enum":
            flags.DEFINE_enum(default=default, enum_values=list(meta["choices"]), **args)
        elif kind == "str":
            flags.DEFINE_string(default=default, **args)
        elif kind == "int_list":
            flags.DEFINE_list(default=[str(v) for v in default or ()], **args)
        elif kind == "str_list":
            flags.DEFINE_list(default=[v for v in default.split(",") if v], **args)
        elif kind == "multi":
            flags.DEFINE_multi_string(default=list(default), **args)
        else:
            raise ValueError(f"{spec.path}: unknown flag kind {kind!r}")


class FlagError(ValueError):
    """A flag value that parses but cannot become its config field (e.g. a non-integer in an
    integer list)."""


def _value(spec: FlagSpec, raw):
    kind = _kind(spec)
    if kind == "int_list":
        try:
            values = tuple(int(v) for v in raw)
        except ValueError:
            raise FlagError(f"--{spec.name} expects integers, got {','.join(raw)}") from None
        if spec.default is None:
            return values or None
        return values
    if kind == "str_list":
        return ",".join(raw)
    if kind == "multi":
        return list(raw)
    return raw


def config_from_flags(cls=RunConfig, section: str = "", flag_values=FLAGS, **overrides):
    """`cls` (RunConfig or a section) from the defined flags; fields whose flag is not defined
    keep their defaults, `overrides` win over both."""
    specs = {spec.field.name: spec for spec in flag_specs() if spec.section == section}
    values = {}
    for field in dataclasses.fields(cls):
        if field.name in overrides:
            continue
        if not section and field.name in SECTIONS:
            values[field.name] = config_from_flags(SECTIONS[field.name][1], field.name,
                                                   flag_values)
            continue
        spec = specs.get(field.name)
        if spec is not None and spec.name in flag_values:
            values[field.name] = _value(spec, flag_values[spec.name].value)
    values.update(overrides)
    return cls(**values)

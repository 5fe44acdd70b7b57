"""Every resolved setting of a profile in one table: ``python -m tsbd_utils.config show --profile quick``.

A run's settings live in many places: the :class:`~tsbd_utils.config.Profile` and its training recipe, each
attack's config, each defense's ``for_profile``, unlearning's ``for_profile`` per mode, the photometric lift and
notebook 08's ablation plan. This module builds each of them with the very calls the suite makes, flattens nested
configs into dotted names (``finetune.epochs``) and marks every value that differs from its class default, so a
reader sees at a glance which published settings a profile scales.

Example:
    >>> rows = resolved_settings("quick")
    >>> [(r.value, r.default) for r in rows if (r.section, r.setting) == ("defense ft", "finetune.epochs")]
    [(10, 100)]
    >>> print(format_rows(rows[:2], "markdown"))
    | section | setting | value | default |
    |---|---|---|---|
    | profile | name | quick |  |
    | profile | dataset | fashion_mnist |  |
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Iterator, Sequence
from typing import Any

from .attacks import ATTACKS
from .config import PROFILES, Profile, resolve
from .defenses import DEFENSES
from .names import DATASET_NAMES
from .shortcut import PhotometricConfig
from .unlearning import UNLEARN_MODES, UnlearnConfig
from .zoo.ablations import AblationPlan

FORMATS = ("text", "json", "markdown")
NO_DEFAULT = dataclasses.MISSING  # a field without a class default (Profile.width, every AblationPlan field)


@dataclasses.dataclass(frozen=True)
class Row:
    """One setting: where it belongs, its dotted name, the value the suite uses and the value it departs from."""

    section: str  # "profile", "training", "attack badnets", "defense tsbd", "unlearning clean", ...
    setting: str  # dotted for nested configs: "unlearn.lr"
    value: Any
    # The class default; for an attack's ``train.*`` rows, the profile's training recipe the attack changes.
    default: Any = NO_DEFAULT

    @property
    def changed(self) -> bool:
        return self.default is not NO_DEFAULT and self.value != self.default


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return NO_DEFAULT


def _flatten(config: Any, default: Any = NO_DEFAULT, prefix: str = "") -> Iterator[tuple[str, Any, Any]]:
    """(dotted name, value, default) of every field of a config dataclass, nested configs included. A nested
    config's defaults come from the enclosing default where there is one (TSBDConfig's own UnlearnConfig)."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        ref = _field_default(f) if default is NO_DEFAULT else getattr(default, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            yield from _flatten(value, ref, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", value, ref


def _rows(section: str, config: Any) -> list[Row]:
    return [Row(section, name, value, default) for name, value, default in _flatten(config)]


def _attack_rows(name: str, profile: Profile) -> list[Row]:
    """The attack's config as the zoo builds it (``ATTACKS[name](None)``: BackdoorBench's defaults), the loops its
    prepare() runs at the profile's scale shown at that scale (LF's steps, ...), then its training recipe where it
    departs from the profile's (WaNet's constant lr on the paper profile, ...)."""
    attack = ATTACKS[name]()
    scaled = attack.scaled_settings(profile)
    rows = [Row(r.section, r.setting, scaled[r.setting], r.value) if r.setting in scaled else r
            for r in _rows(f"attack {name}", attack.config)]
    base = {setting: value for setting, value, _ in _flatten(profile.train)}
    for setting, value, _ in _flatten(attack.train_config(profile)):
        if value != base[setting]:
            rows.append(Row(f"attack {name}", f"train.{setting}", value, base[setting]))
    return rows


def resolved_settings(profile: str | Profile, dataset: str | None = None) -> list[Row]:
    """Every setting a run of ``profile`` (on ``dataset``, else the profile's) uses, built as the suite builds it.

    Unknown profile or dataset names raise :class:`~tsbd_utils.registry.UnknownNameError`, naming the choices.
    """
    p = resolve(profile, dataset=dataset)  # what session.start does with PROFILE and DATASET
    rows = [r for r in _rows("profile", p) if not r.setting.startswith("train.")]
    rows += _rows("training", p.train)
    for name in ATTACKS:
        rows += _attack_rows(name, p)
    for name in DEFENSES:
        rows += _rows(f"defense {name}", DEFENSES[name].for_profile(p))
    for mode in UNLEARN_MODES:
        rows += _rows(f"unlearning {mode}", UnlearnConfig.for_profile(p, mode))
    rows += _rows("photometric lift", PhotometricConfig())  # the suite uses its defaults on every profile
    rows += _rows("ablations", AblationPlan.for_profile(p))
    return rows


def _show(value: Any) -> str:
    return '""' if value == "" else str(value)  # an empty default must not look like "unchanged"


def format_rows(rows: Sequence[Row], fmt: str = "text") -> str:
    """``rows`` as an aligned text table, JSON (a list of objects) or a Markdown table. The default column is
    filled only where the value differs from it (JSON: ``changed`` says so, ``default`` is null otherwise)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; allowed: {', '.join(FORMATS)}")
    if fmt == "json":
        records = [
            {
                "section": r.section,
                "setting": r.setting,
                "value": r.value,
                "default": r.default if r.changed else None,
                "changed": r.changed,
            }
            for r in rows
        ]
        return json.dumps(records, indent=1, default=str)
    table = [("section", "setting", "value", "default")]
    table += [(r.section, r.setting, _show(r.value), _show(r.default) if r.changed else "") for r in rows]
    if fmt == "markdown":
        lines = ["| " + " | ".join(c.replace("|", r"\|") for c in row) + " |" for row in table]
        return "\n".join([lines[0], "|---|---|---|---|", *lines[1:]])
    # Text: a long value (a profile's description) overflows its cell instead of widening the whole column.
    widths = [max(len(row[i]) for row in table if len(row[i]) <= 30) for i in range(3)]
    lines = ("  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths)) + "  " + row[3] for row in table)
    return "\n".join(line.rstrip() for line in lines)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; argparse refuses a bad subcommand, profile, dataset or format with exit code 2."""
    parser = argparse.ArgumentParser(prog="python -m tsbd_utils.config", description="Profiles and their settings.")
    commands = parser.add_subparsers(dest="command", required=True)
    show = commands.add_parser("show", help="every resolved setting of a profile, and which ones it changes")
    show.add_argument("--profile", default="quick", choices=list(PROFILES), help="default: quick")
    show.add_argument("--dataset", choices=list(DATASET_NAMES), help="default: the profile's")
    show.add_argument("--format", default="text", choices=FORMATS, help="default: text")
    args = parser.parse_args(argv)
    print(format_rows(resolved_settings(args.profile, args.dataset), args.format))
    return 0

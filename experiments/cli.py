"""Command-line overrides: ``--set section.field=value`` applied to an ExperimentConfig."""

from __future__ import annotations

import argparse
import ast
import dataclasses

from dllm_jax.config import ExperimentConfig
from experiments import configs


def parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare string such as a path or a name


def apply_overrides(exp: ExperimentConfig, overrides: list[str]) -> ExperimentConfig:
    """Apply ``section.field=value`` strings; configs re-validate on replace."""
    sections: dict[str, dict] = {}
    top: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like section.field=value")
        key, value = item.split("=", 1)
        if "." not in key:
            if key not in {f.name for f in dataclasses.fields(exp)}:
                raise ValueError(f"unknown config field {key!r}")
            top[key] = parse_value(value)
            continue
        section, field = key.split(".", 1)
        if not hasattr(exp, section) or not dataclasses.is_dataclass(getattr(exp, section)):
            raise ValueError(f"unknown config section {section!r} in override {item!r}")
        names = {f.name for f in dataclasses.fields(getattr(exp, section))}
        if field not in names:
            raise ValueError(f"unknown field {field!r} of {section}; expected one of {sorted(names)}")
        value = parse_value(value)
        if isinstance(value, list):
            value = tuple(value)
        sections.setdefault(section, {})[field] = value
    replaced = {s: dataclasses.replace(getattr(exp, s), **f) for s, f in sections.items()}
    return dataclasses.replace(exp, **replaced, **top)


def experiment_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default="quickstart", help=f"one of {sorted(configs.EXPERIMENTS)}")
    parser.add_argument("--process", default="masked", choices=["masked", "uniform", "hybrid", "ar"])
    parser.add_argument("--run_dir", default=None, help="run directory (default runs/<name>)")
    parser.add_argument("--set", nargs="*", default=[], metavar="SECTION.FIELD=VALUE")
    return parser


def experiment_from_args(args) -> ExperimentConfig:
    return apply_overrides(configs.get(args.config, args.process), args.set)

"""Layered YAML configs: base ⊕ profile ⊕ arm ⊕ command-line overrides → one resolved config.

Each replication keeps `base.yaml`, `profiles/<profile>.yaml` and `arms/<arm>.yaml` under
`replications/<name>/`; an arm file overrides only what differs between arms. The resolved config
is written next to the run's results (and only rewritten when it changed, so make retrains exactly
the runs whose config changed).

CLI (used by the Makefile):
    python -m normrepro.config resolve REPL_DIR --profile P --arm A --seed K --out FILE [--set a.b=v ...]
    python -m normrepro.config get REPL_DIR --profile P KEY        # print a value (lists space-joined)
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import yaml

from normrepro.io import write_if_changed


class ConfigError(ValueError):
    """A config file is missing or malformed; the message says which and how to fix it."""


def deep_merge(base: dict, override: dict) -> dict:
    """Return base updated recursively by override (dicts merge, everything else replaces)."""
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping at top level, got {type(data).__name__}")
    return data


def set_dotted(cfg: dict, assignment: str) -> None:
    """Apply one `a.b.c=value` override; the value is parsed as YAML (so 3, 1e-3, [1,2] work)."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like key.sub=value")
    key, raw = assignment.split("=", 1)
    node = cfg
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {assignment!r}: {part!r} is not a mapping")
    node[parts[-1]] = yaml.safe_load(raw)


def _choices(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.yaml"))


def profile_path(repl_dir: Path, profile: str) -> Path:
    path = Path(repl_dir) / "profiles" / f"{profile}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"unknown profile {profile!r} for {repl_dir}; choose one of "
            f"{_choices(Path(repl_dir) / 'profiles')} (or 'auto')"
        )
    return path


def arm_path(repl_dir: Path, arm: str) -> Path:
    path = Path(repl_dir) / "arms" / f"{arm}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"unknown arm {arm!r} for {repl_dir}; choose one of {_choices(Path(repl_dir) / 'arms')}"
        )
    return path


def resolve_profile_name(profile: str) -> str:
    """`auto` means `gpu` when a CUDA device is visible, else `cpu`."""
    if profile != "auto":
        return profile
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def load_profile(repl_dir: str | Path, profile: str, overrides: list[str] = ()) -> dict:
    repl_dir = Path(repl_dir)
    profile = resolve_profile_name(profile)
    cfg = deep_merge(load_yaml(repl_dir / "base.yaml"), load_yaml(profile_path(repl_dir, profile)))
    cfg["profile"] = profile
    for item in overrides:
        set_dotted(cfg, item)
    return cfg


def resolve(
    repl_dir: str | Path,
    profile: str,
    arm: str,
    seed: int,
    overrides: list[str] = (),
) -> dict:
    """The full config of one run: base ⊕ profile ⊕ arm ⊕ arm-in-profile ⊕ overrides, plus seed."""
    repl_dir = Path(repl_dir)
    cfg = load_profile(repl_dir, profile)
    cfg = deep_merge(cfg, load_yaml(arm_path(repl_dir, arm)))
    # A profile may adjust one arm (e.g. a smaller lr for naive BN) under `arm_overrides.<arm>`.
    cfg = deep_merge(cfg, (cfg.pop("arm_overrides", None) or {}).get(arm, {}))
    cfg["arm"] = arm
    cfg["seed"] = int(seed)
    cfg["replication"] = repl_dir.name
    for item in overrides:
        set_dotted(cfg, item)
    return cfg


def dump(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False)


def get_key(cfg: dict, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"key {key!r} not found in config")
        node = node[part]
    return node


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m normrepro.config", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_res = sub.add_parser("resolve", help="write one run's resolved config (only if it changed)")
    p_res.add_argument("repl_dir")
    p_res.add_argument("--profile", required=True)
    p_res.add_argument("--arm", required=True)
    p_res.add_argument("--seed", type=int, required=True)
    p_res.add_argument("--out", required=True)
    p_res.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p_get = sub.add_parser("get", help="print a value of a profile's config")
    p_get.add_argument("repl_dir")
    p_get.add_argument("--profile", required=True)
    p_get.add_argument("key")
    p_get.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "resolve":
            cfg = resolve(args.repl_dir, args.profile, args.arm, args.seed, args.set)
            write_if_changed(args.out, dump(cfg))
        else:
            value = get_key(load_profile(args.repl_dir, args.profile, args.set), args.key)
            print(" ".join(map(str, value)) if isinstance(value, list) else value)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

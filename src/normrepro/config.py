"""Layered YAML configs: base ⊕ profile ⊕ arm ⊕ command-line overrides → one resolved config.

Each replication keeps `base.yaml`, `profiles/<profile>.yaml` and `arms/<arm>.yaml` under
`replications/<name>/`; an arm file overrides only what differs between arms. Every layer is
checked against the replication's typed schema (`normrepro.schema`) as it is read, so an unknown
key, a value of the wrong type or a misspelt norm fails here, naming the file and the key, before
any stage runs. The resolved config is written next to the run's results (and only rewritten when
it changed, so make retrains exactly the runs whose config changed; `normrepro.plan` does that for
the pipelines, after checking every run of the command).

CLI (used by the Makefile):
    python -m normrepro.config resolve REPL_DIR --profile P --arm A --seed K --out FILE [--set a.b=v ...]
    python -m normrepro.config get REPL_DIR --profile P KEY        # print a value (lists space-joined)
"""

from __future__ import annotations

import argparse
import copy
import difflib
import sys
from pathlib import Path
from typing import Any

import yaml

from normrepro import schema
from normrepro.errors import ConfigError, cli  # ConfigError: the stages import it from here
from normrepro.io import write_if_changed


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


def parse_override(assignment: str) -> tuple[list[str], Any]:
    """`a.b.c=value` → (["a", "b", "c"], value); the value is parsed as YAML (3, 1e-3, [1,2])."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like key.sub=value")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {assignment!r}: the key {key!r} has an empty part")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {assignment!r}: the value is not valid YAML ({exc})") from None
    return parts, value


def _set_path(cfg: dict, parts: list[str], value: Any, assignment: str) -> None:
    node = cfg
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {assignment!r}: {part!r} is not a mapping")
    node[parts[-1]] = value


def set_dotted(cfg: dict, assignment: str) -> None:
    """Apply one `a.b.c=value` override; the value is parsed as YAML (so 3, 1e-3, [1,2] work)."""
    parts, value = parse_override(assignment)
    _set_path(cfg, parts, value, assignment)


def apply_overrides(cfg: dict, overrides, replication: str, source: str = "SET") -> dict:
    """`cfg` with each `key=value` of `overrides` checked against the schema, then applied."""
    for item in overrides:
        parts, value = parse_override(item)
        layer: Any = value
        for part in reversed(parts):
            layer = {part: layer}
        checked = schema.validate(layer, replication, f"{source} {item!r}")
        for part in parts:
            checked = checked[part]
        _set_path(cfg, parts, checked, item)
    return cfg


def _choices(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.yaml"))


def _did_you_mean(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(str(name), choices, n=1, cutoff=0.5)
    return f"did you mean {close[0]!r}? " if close else ""


def profile_path(repl_dir: Path, profile: str) -> Path:
    path = Path(repl_dir) / "profiles" / f"{profile}.yaml"
    if not str(profile) or "/" in str(profile) or not path.is_file():
        choices = _choices(Path(repl_dir) / "profiles")
        raise ConfigError(
            f"unknown profile {profile!r} for {repl_dir}; {_did_you_mean(profile, choices)}"
            f"choose one of {', '.join(choices)}, or auto"
        )
    return path


def arm_path(repl_dir: Path, arm: str) -> Path:
    path = Path(repl_dir) / "arms" / f"{arm}.yaml"
    if not str(arm) or "/" in str(arm) or not path.is_file():
        choices = _choices(Path(repl_dir) / "arms")
        raise ConfigError(
            f"unknown arm {arm!r} for {repl_dir}; {_did_you_mean(arm, choices)}"
            f"choose from {', '.join(choices)}"
        )
    return path


def schema_name(repl_dir: str | Path) -> str:
    """The schema a replication folder's configs follow: the task its base.yaml names (`task:`),
    or `insights` for the insights folder, whose profiles configure runs of the other two."""
    repl_dir = Path(repl_dir)
    base = repl_dir / "base.yaml"
    task = (load_yaml(base) or {}).get("task") if base.is_file() else None
    if task is None:
        if repl_dir.resolve().name in schema.SCHEMAS:
            return repl_dir.resolve().name
        raise ConfigError(f"{base}: no `task:`; name the task this replication trains "
                          f"({' | '.join(schema.TASKS)})")
    if task not in schema.TASKS:
        raise ConfigError(f"{base}: task {task!r} is not a task; choose from {', '.join(schema.TASKS)}")
    return task


def _check_arm_overrides(cfg: dict, repl_dir: Path, source: str) -> None:
    """A profile's `arm_overrides.<arm>` name existing arms and hold valid partial configs."""
    overrides = cfg.get("arm_overrides") or {}
    arms = _choices(repl_dir / "arms")
    for arm, layer in overrides.items():
        if arm not in arms:
            raise ConfigError(f"{source}: arm_overrides: unknown arm {arm!r}; "
                              f"{_did_you_mean(arm, arms)}arms: {', '.join(arms)}")
        schema.validate(layer or {}, schema_name(repl_dir), f"{source}: arm_overrides.{arm}")


def resolve_profile_name(profile: str) -> str:
    """`auto` means `gpu` when a CUDA device is visible, else `cpu`."""
    if profile != "auto":
        return profile
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def load_layer(path: Path, replication: str) -> dict:
    """One YAML layer, checked against the replication's schema (naming the file on error)."""
    return schema.validate(load_yaml(path), replication, str(path))


def load_profile(repl_dir: str | Path, profile: str, overrides: list[str] = (),
                 override_source: str = "SET") -> dict:
    """base ⊕ profile ⊕ overrides, each layer checked against the schema."""
    repl_dir = Path(repl_dir)
    name = schema_name(repl_dir)
    profile = resolve_profile_name(profile)
    prof_path = profile_path(repl_dir, profile)
    cfg = deep_merge(load_layer(repl_dir / "base.yaml", name), load_layer(prof_path, name))
    _check_arm_overrides(cfg, repl_dir, str(prof_path))
    cfg["profile"] = profile
    return apply_overrides(cfg, overrides, name, override_source)


def resolve(
    repl_dir: str | Path,
    profile: str,
    arm: str,
    seed: int,
    overrides: list[str] = (),
    override_source: str = "SET",
) -> dict:
    """The full config of one run: base ⊕ profile ⊕ arm ⊕ arm-in-profile ⊕ overrides, plus seed."""
    repl_dir = Path(repl_dir)
    name = schema_name(repl_dir)
    cfg = load_profile(repl_dir, profile)
    cfg = deep_merge(cfg, load_layer(arm_path(repl_dir, arm), name))
    # A profile may adjust one arm (e.g. a smaller lr for naive BN) under `arm_overrides.<arm>`.
    cfg = deep_merge(cfg, (cfg.pop("arm_overrides", None) or {}).get(arm, {}))
    cfg["arm"] = arm
    if isinstance(seed, bool) or not str(seed).lstrip("-").isdigit() or int(seed) < 0:
        raise ConfigError(f"seed {seed!r} is not a non-negative integer")
    cfg["seed"] = int(seed)
    cfg["replication"] = repl_dir.name
    cfg = apply_overrides(cfg, overrides, name, override_source)
    schema.check_required(cfg, name, f"{repl_dir} (profile {cfg['profile']}, arm {arm})")
    return cfg


def dump(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False)


_MISSING = object()


def get_key(cfg: dict, key: str, default: Any = _MISSING) -> Any:
    """The value at a dotted key (`optim.lr`); `default` when absent if given, else ConfigError."""
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            if default is not _MISSING:
                return default
            raise ConfigError(f"key {key!r} not found in config")
        node = node[part]
    return node


@cli
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
    if args.cmd == "resolve":
        cfg = resolve(args.repl_dir, args.profile, args.arm, args.seed, args.set)
        write_if_changed(args.out, dump(cfg))
    else:
        value = get_key(load_profile(args.repl_dir, args.profile, args.set), args.key)
        print(" ".join(map(str, value)) if isinstance(value, list) else value)
    return 0


if __name__ == "__main__":
    sys.exit(main())

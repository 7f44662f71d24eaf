"""Run folders: what each run was trained on, and never losing a finished run.

Every training stage keeps a stamp, `RUN/checkpoints/config.yaml`: the training-relevant part of
the run's config (sections that only change evaluation or reporting are left out) followed by a
line `# data: <fingerprint>` (`normrepro.datacheck.fingerprint` of the processed data). Before
training, `sync_stamp` compares it with the stamp the run would get now:

* the same, and the run finished      → nothing to do (`done`);
* the same, and a checkpoint exists   → resume from it (`resume`), unless the checkpoint is
                                        unreadable: then `checkpoints/` is set aside as
                                        `checkpoints.corrupt-<time>/` and training restarts;
* different (config or data changed)  → the whole run folder is moved aside to
                                        `<run>.replaced-<time>/`, said in one line, and the run
                                        starts over in a fresh folder (`fresh`).

A stamp written before a config key was renamed (`RENAMED_KEYS`) reads as the stamp with the new
name: the same training, so the stamp is rewritten and nothing is retrained.

Nothing a finished run wrote is ever deleted: it is renamed. `normrepro.plan` applies the same rule
when a command's config differs from a run's, before writing the new `config.yaml`.
"""

from __future__ import annotations

import os
import shutil
import time
import zipfile
from pathlib import Path
from typing import Any, Iterable

import yaml

from normrepro.io import atomic_write_text

STAMP = Path("checkpoints") / "config.yaml"
DATA_LINE = "# data: "

# Config keys renamed after runs had been trained under the old name (old top-level key -> new
# dotted key). Translation configs named their data set `dataset`/`data_variant` until both
# tasks took `data.dataset` (and `data.variant`).
RENAMED_KEYS = {"dataset": "data.dataset", "data_variant": "data.variant"}


def rename_legacy_keys(cfg: dict) -> dict:
    """`cfg` (changed in place) with every key of RENAMED_KEYS under its new name."""
    for old, new in RENAMED_KEYS.items():
        if old not in cfg:
            continue
        value = cfg.pop(old)
        *parents, leaf = new.split(".")
        node = cfg
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node.setdefault(leaf, value)
    return cfg


def training_view(cfg: dict, exclude: Iterable[str]) -> dict:
    """`cfg` without the keys in `exclude` (top-level names or dotted paths)."""
    view = rename_legacy_keys(yaml.safe_load(yaml.safe_dump(cfg)))  # a deep copy, plain types
    for key in exclude:
        parts = key.split(".")
        node = view
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(parts[-1], None)
    return view


def stamp_text(cfg: dict, exclude: Iterable[str], data_fingerprint: str) -> str:
    return (yaml.safe_dump(training_view(cfg, exclude), sort_keys=True)
            + f"{DATA_LINE}{data_fingerprint}\n")


def parse_stamp(text: str) -> tuple[dict | None, str | None]:
    """(training view, data fingerprint) of a stamp; (None, None) when unreadable."""
    data = None
    for line in text.splitlines():
        if line.startswith(DATA_LINE):
            data = line[len(DATA_LINE):].strip().split()[-1] if line[len(DATA_LINE):].strip() else None
    try:
        view = yaml.safe_load(text)
    except yaml.YAMLError:
        return None, data
    return (rename_legacy_keys(view) if isinstance(view, dict) else None), data


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


def describe_change(old: dict | None, new: dict | None, old_data: str | None = None,
                    new_data: str | None = None, limit: int = 3) -> str:
    """A short reason: which config keys changed (old → new), and/or that the data changed."""
    parts = []
    if old is None or new is None:
        parts.append("its stamp is missing or unreadable")
    else:
        a, b = _flatten(old), _flatten(new)
        keys = sorted(k for k in set(a) | set(b) if a.get(k, "<unset>") != b.get(k, "<unset>"))
        if keys:
            shown = ", ".join(f"{k} {a.get(k, '<unset>')!r} → {b.get(k, '<unset>')!r}"
                              for k in keys[:limit])
            more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
            parts.append(f"config changed ({shown}{more})")
    if new_data is not None and old_data != new_data:
        parts.append("data changed" + (f" ({old_data[:12]}… → {new_data[:12]}…)" if old_data
                                        else " (no data fingerprint recorded)"))
    return "; ".join(parts) or "its stamp differs"


def _timestamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def _free_name(path: Path, tag: str) -> Path:
    candidate = path.with_name(f"{path.name}.{tag}-{_timestamp()}")
    n = 2
    while candidate.exists():
        candidate = path.with_name(f"{path.name}.{tag}-{_timestamp()}-{n}")
        n += 1
    return candidate


def artefacts(run: Path, keep: Iterable[str] = ("config.yaml",)) -> list[str]:
    """What a run folder holds besides its config (hidden files ignored)."""
    if not run.is_dir():
        return []
    keep = set(keep)
    return sorted(p.name for p in run.iterdir() if p.name not in keep and not p.name.startswith("."))


def move_aside(run: Path, reason: str, prefix: str = "[run]", keep_config: bool = True) -> Path:
    """Rename `run` to `<run>.replaced-<time>` and recreate it holding only its current
    config.yaml (when `keep_config`); prints one line saying why and where the old run is."""
    run = Path(run)
    target = _free_name(run, "replaced")
    config = run / "config.yaml"
    text = config.read_bytes() if keep_config and config.is_file() else None
    os.replace(run, target)
    run.mkdir(parents=True, exist_ok=True)
    if text is not None:
        tmp = run / ".config.yaml.tmp"
        tmp.write_bytes(text)
        os.replace(tmp, config)
    print(f"{prefix} {run}: {reason}; the previous run is kept in {target.name}/", flush=True)
    return target


def checkpoint_problem(path: str | Path) -> str | None:
    """None when `path` is a readable torch checkpoint (a zip whose CRCs all match), else why not.

    Cheap and safe: nothing is unpickled. Truncation, a flipped byte and a foreign file all fail.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            if not any(n.endswith("data.pkl") for n in names):
                return "it holds no data.pkl (not a torch checkpoint)"
            bad = zf.testzip()
            if bad is not None:
                return f"member {bad} fails its CRC check (the file is damaged)"
    except zipfile.BadZipFile as exc:
        return f"it is not a complete checkpoint ({exc}; truncated?)"
    except (OSError, EOFError, ValueError) as exc:
        return f"it cannot be read ({exc})"
    return None


def set_aside_checkpoints(run: Path, problem: str, prefix: str = "[train]",
                          also: Iterable[str] = ()) -> Path:
    """Move `run/checkpoints` (and the partial files in `also`) into
    `run/checkpoints.corrupt-<time>/`; prints a one-line warning."""
    ckpt_dir = run / "checkpoints"
    target = _free_name(ckpt_dir, "corrupt")
    os.replace(ckpt_dir, target)
    for name in also:
        if (run / name).exists():
            os.replace(run / name, target / name)
    print(f"{prefix} warning: {ckpt_dir / 'last.ckpt'} is unreadable: {problem}; moved "
          f"checkpoints/ to {target.name}/ and training restarts from scratch", flush=True)
    return target


def sync_stamp(run: str | Path, stamp: str, finished: Iterable[str], partial: Iterable[str],
               prefix: str = "[train]") -> str:
    """Make `run` ready to train under `stamp`; returns `done`, `resume` or `fresh`.

    `finished`: files whose presence means training completed (e.g. env.json). `partial`: files
    an interrupted training leaves besides checkpoints/ (e.g. metrics.csv), removed before a fresh
    start of an unfinished run (nothing finished is in them).
    """
    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    stamp_path = run / STAMP
    old = stamp_path.read_text(encoding="utf-8") if stamp_path.is_file() else None
    is_finished = any((run / f).exists() for f in finished)
    state = None
    if old is not None and old != stamp and parse_stamp(old) == parse_stamp(stamp):
        atomic_write_text(stamp_path, stamp)   # the same training under renamed keys
        old = stamp
    if old is not None and old != stamp:
        old_view, old_data = parse_stamp(old)
        new_view, new_data = parse_stamp(stamp)
        move_aside(run, describe_change(old_view, new_view, old_data, new_data) + "; retraining",
                   prefix)
    elif old is None and is_finished:
        move_aside(run, "it has results but no stamp saying what they were trained on; "
                   "retraining", prefix)
    elif old is not None and is_finished:
        return "done"
    elif old is not None and (run / "checkpoints" / "last.ckpt").is_file():
        problem = checkpoint_problem(run / "checkpoints" / "last.ckpt")
        if problem is None:
            return "resume"
        set_aside_checkpoints(run, problem, prefix, also=partial)
    else:
        state = "fresh"  # nothing finished here: clear what an interrupted start left
        for name in partial:
            path = run / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        if (run / "checkpoints").is_dir():
            shutil.rmtree(run / "checkpoints")
    atomic_write_text(stamp_path, stamp)
    return state or "fresh"

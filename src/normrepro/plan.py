"""Check a whole pipeline command first, then lock its results folder and hand over to make.

    python -m normrepro.plan <replication> --goal replicate|sweep|bench|crosscheck \\
        --profile P [--dataset D] [--arms "A B"] [--seeds "0 1"] [--set "key=value ..."] \\
        --what "make replicate-convnext ..." -- make _replicate

Every public make target of a pipeline runs this first. In order:

1. Check everything the command says, before any file under results/ is touched: the profile,
   every run config of the command (base ⊕ profile ⊕ arm ⊕ SET against the typed schema,
   `normrepro.schema`: unknown keys with the closest valid one, types, norm and data set names),
   the arms and seeds (ARMS=, SEEDS= or the profile's), the data set (DATASET=), and that the
   raw files the data's MANIFEST.json lists are there. The first problem ends the command with
   one line and exit status 2; nothing is written.
2. Lock the results folder of the profile (`results/<replication>/<profile>/`, or
   `results/bench/`; `normrepro.lock`): a second command for the same folder refuses.
3. Write each run's `config.yaml` (only when it changed). A run whose training-relevant config
   changed is moved aside to `seed<k>.replaced-<time>/` first (`normrepro.rundir`), with one line
   saying so. Also the run list, the prepare options of the translation data, the stage arguments
   of the insights pipeline, and the plan itself: `.plan-<goal>.mk` in the locked folder, the make
   variables of this command (run folders, data paths, raw files): `R_*` for the shared rules
   of mk/replication.mk, `IC_*`/`TR_*` for the data rules of mk/tasks/<task>.mk.
4. Become the make command given after `--` (exec), with `PLAN_FILE=<plan> PROFILE=<profile>`
   (and `-jN` where the profile sets `parallel_runs`); the locked file descriptor is inherited by make and
   everything it starts, so the lock lasts as long as any of them runs.

Results of different profiles never share a folder: `results/<replication>/<profile>/...`.
"""

from __future__ import annotations

import argparse
import difflib
import os
import shlex
import sys
from pathlib import Path

from normrepro import schema
from normrepro.config import (ConfigError, arm_path, dump, load_profile, load_yaml, profile_path, resolve,
                              resolve_profile_name, schema_name)
from normrepro.errors import DataError, cli
from normrepro.io import write_if_changed
from normrepro.lock import FolderLock
from normrepro.rundir import artefacts, describe_change, move_aside, parse_stamp, training_view

REPLICATIONS = Path("replications")
RESULTS = Path("results")
DATA = Path("data")
# At most this many raw files become make prerequisites (an image folder can hold thousands;
# prepare checks them all against the manifest anyway).
MAX_RAW_PREREQUISITES = 2000


# ---------------------------------------------------------------------------------------------
# checks of the command line

def _words(value: str | None, what: str) -> list[str] | None:
    """ARMS= / SEEDS= as a list; None when not given; an error when given empty."""
    if value is None:
        return None
    words = value.replace(",", " ").split()
    if not words:
        raise ConfigError(f"{what} is empty; give at least one (e.g. {what}=\"0 1\") or leave it "
                          "out to use the profile's")
    if len(set(words)) != len(words):
        raise ConfigError(f"{what}={value!r} names the same value twice")
    return words


def check_arms(repl: Path, arms: list[str], source: str) -> list[str]:
    if not arms:
        raise ConfigError(f"{source}: the list of arms is empty")
    for arm in arms:
        try:
            arm_path(repl, arm)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
    return arms


def check_seeds(seeds: list, source: str) -> list[int]:
    if not seeds:
        raise ConfigError(f"{source}: the list of seeds is empty")
    out = []
    for seed in seeds:
        text = str(seed)
        if isinstance(seed, bool) or not text.isdigit():
            raise ConfigError(f"{source}: seed {seed!r} is not a non-negative integer")
        out.append(int(text))
    if len(set(out)) != len(out):
        raise ConfigError(f"{source}: seeds {seeds} repeat a seed")
    return out


def check_dataset(task: str, dataset: str) -> None:
    layer = {"data": {"dataset": dataset}}
    if not dataset:
        raise ConfigError("DATASET is empty; give a data set name or leave it out")
    schema.validate(layer, task, "DATASET")


def raw_prerequisites(raw: Path) -> list[str]:
    """The raw files listed in `raw/MANIFEST.json` (all must exist), for make to depend on."""
    manifest_path = raw / "MANIFEST.json"
    if not manifest_path.is_file():
        return []  # make fetches it first
    from normrepro.datacheck import load_manifest

    refetch = f"fetch it again: rm -r {raw} && make {manifest_path}"
    manifest = load_manifest(manifest_path, refetch)
    files = [raw / str(f.get("path")) for f in manifest.get("files") or []]
    for f in files:
        if not f.is_file():
            raise DataError(f"{f} is missing (listed in {manifest_path}); {refetch}")
    if len(files) > MAX_RAW_PREREQUISITES:
        return []
    return [str(f) for f in files]


def _drop_stale_stamp(path: Path, what: str) -> None:
    """Processed data whose files no longer match its manifest (or whose manifest predates file
    hashes) is derived data gone bad: remove the manifest, make's target, so it is prepared
    again (from the raw data, which prepare checks). Sizes are checked always, hashes only
    for files changed since they were last hashed."""
    if not path.is_file():
        return
    import json

    from normrepro.datacheck import verify_processed

    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        verify_processed(path.parent, manifest if isinstance(manifest, dict) else {}, path,
                         f"{what} is prepared again")
    except (ValueError, DataError) as exc:
        print(f"[plan] {exc}", flush=True)
        path.unlink()


# ---------------------------------------------------------------------------------------------
# run folders

def sync_run_config(run: Path, cfg: dict, not_training) -> None:
    """Write `run/config.yaml`; a run trained under another training config is moved aside."""
    text = dump(cfg)
    config = run / "config.yaml"
    if config.is_file() and config.read_text(encoding="utf-8") == text:
        return
    if artefacts(run):
        stamp = run / "checkpoints" / "config.yaml"
        old_view = None
        if stamp.is_file():
            old_view, _ = parse_stamp(stamp.read_text(encoding="utf-8"))
        elif config.is_file():
            import yaml

            try:
                old_view = training_view(yaml.safe_load(config.read_text(encoding="utf-8")) or {},
                                         not_training)
            except yaml.YAMLError:
                old_view = None
        new_view = training_view(cfg, not_training)
        if old_view != new_view:
            move_aside(run, describe_change(old_view, new_view), "[plan]", keep_config=False)
    write_if_changed(config, text)


def _mk(name: str, value) -> str:
    if isinstance(value, (list, tuple)):
        value = " ".join(str(v) for v in value)
    return f"{name} := {value}\n"


# ---------------------------------------------------------------------------------------------
# the pipelines

class Plan:
    """What one command does: the lock folder, the files to write, the make variables."""

    def __init__(self, lock_folder: Path, plan_name: str):
        self.lock_folder = lock_folder
        self.plan_file = lock_folder / plan_name
        self.variables: list[tuple[str, object]] = []
        self.runs: list[tuple[Path, dict, tuple]] = []   # (run folder, config, not-training keys)
        self.texts: list[tuple[Path, str]] = []          # other files, written when changed
        self.stale: list[tuple[Path, str]] = []          # processed manifests to check
        self.jobs = 1

    def var(self, name: str, value) -> None:
        self.variables.append((name, value))

    def write(self) -> None:
        for path, what in self.stale:
            _drop_stale_stamp(path, what)
        for run, cfg, not_training in self.runs:
            sync_run_config(run, cfg, not_training)
        for path, text in self.texts:
            write_if_changed(path, text)
        body = "# Written by python -m normrepro.plan; the variables of one checked command.\n"
        body += "".join(_mk(k, v) for k, v in self.variables)
        write_if_changed(self.plan_file, body)


def _set_args(overrides: list[str]) -> str:
    return " ".join(f"--set {shlex.quote(o)}" for o in overrides)


def _result_vars(plan: Plan, name: str, task: str, root: Path, res: Path, data_name: str,
                 runs: list[str], arms: list[str], overrides: list[str]) -> None:
    """The make variables of mk/replication.mk: where one replication's profile writes."""
    from normrepro.stages._task import spec
    from normrepro.tasks import figure_paths

    fig = figure_paths(spec(task), root / "figures", data_name)["final"]
    for key, value in (("R_NAME", name), ("R_REPL", REPLICATIONS / name), ("R_TASK", task),
                       ("R_ROOT", root), ("R_RES", res), ("R_DATA_NAME", data_name),
                       ("R_RUNS", runs), ("R_ARMS", arms), ("R_DONE", spec(task).done_marker),
                       ("R_FIG", f"{fig}.png"), ("R_SET", _set_args(overrides))):
        plan.var(key, value)


def plan_image_classification(args, overrides: list[str]) -> Plan:
    repl = REPLICATIONS / args.replication
    profile = resolve_profile_name(args.profile)
    profile_path(repl, profile)
    if args.dataset is not None:
        check_dataset("image_classification", args.dataset)
        overrides = overrides + [f"data.dataset={args.dataset}"]
    prof = load_profile(repl, profile, overrides)
    dataset = prof["data"]["dataset"]
    root = RESULTS / args.replication / profile
    res = root / dataset
    raw = DATA / "raw" / dataset
    processed = Path(prof["data"].get("processed_root", "data/processed")) / dataset
    goal = args.goal
    plan = Plan(RESULTS / "bench" if goal == "bench" else root, f".plan-{goal}.mk")
    arms = check_arms(repl, _words(args.arms, "ARMS") or list(prof.get("arms") or []),
                      "ARMS" if args.arms is not None else f"{repl}/profiles/{profile}.yaml arms")
    runs = []
    if goal == "replicate":
        seeds = check_seeds(_words(args.seeds, "SEEDS") or list(prof.get("seeds") or []),
                            "SEEDS" if args.seeds is not None else
                            f"{repl}/profiles/{profile}.yaml seeds")
        for arm in arms:
            for seed in seeds:
                cfg = schema.check_run(resolve(repl, profile, arm, seed, overrides),
                                       "image_classification",
                                       f"{repl} (profile {profile}, arm {arm}, seed {seed})")
                run = res / arm / f"seed{seed}"
                plan.runs.append((run, cfg, schema.NOT_TRAINING["image_classification"]))
                runs.append(str(run))
        plan.texts.append((res / "runs.list", "".join(r + "\n" for r in runs)))
        plan.var("R_SEEDS", seeds)
    elif goal == "sweep":
        from normrepro.sweep import sweep_settings

        sweep_settings(prof)
    if goal in ("replicate", "sweep"):
        plan.jobs = int(prof.get("parallel_runs") or 1)
    raw_files = raw_prerequisites(raw)
    plan.stale.append((processed / "prepared.json", str(processed)))
    _result_vars(plan, args.replication, "image_classification", root, res, dataset, runs, arms,
                 overrides)
    for name, value in (("IC_DATASET", dataset), ("IC_RAW", raw / "MANIFEST.json"),
                        ("IC_RAW_FILES", raw_files), ("IC_PREP", processed / "prepared.json")):
        plan.var(name, value)
    return plan


def _pn_data(repl: Path, profile: str, prof: dict, overrides: list[str], plan: Plan) -> dict:
    """Variables and option files of the translation data of a profile (training + OOD sets)."""
    from normrepro.tasks.translation.prepare import profile_options

    dataset = prof["data"]["dataset"]
    variant = prof["data"].get("variant") or ""
    name = dataset + (f"-{variant}" if variant else "")
    data = DATA / "processed" / name
    ood = list(prof.get("ood") or [])
    for ds in [dataset, *ood]:
        options = profile_options(repl, profile, ds, overrides)
        import yaml

        plan.texts.append((DATA / "processed" / f"{name}.{ds}.options.yaml",
                           yaml.safe_dump(options, sort_keys=True)))
    plan.stale.append((data / "MANIFEST.json", str(data)))
    for ds in ood:
        plan.stale.append((data / f"ood-{ds}" / "MANIFEST.json", str(data / f"ood-{ds}")))
    values = {"TR_DATASET": dataset, "TR_NAME": name, "TR_DATA": data, "TR_OOD": ood,
              "TR_OOD_DIRS": [data / f"ood-{ds}" for ds in ood],
              "TR_RAW_FILES": raw_prerequisites(DATA / "raw" / dataset),
              "TR_OOD_RAW_FILES": [f for ds in ood for f in raw_prerequisites(DATA / "raw" / ds)]}
    for k, v in values.items():
        plan.var(k, v)
    return values


def plan_translation(args, overrides: list[str]) -> Plan:
    repl = REPLICATIONS / args.replication
    profile = resolve_profile_name(args.profile)
    profile_path(repl, profile)
    if args.dataset is not None:
        check_dataset("translation", args.dataset)
        overrides = overrides + [f"data.dataset={args.dataset}"]
    prof = load_profile(repl, profile, overrides)
    root = RESULTS / args.replication / profile
    goal = args.goal
    plan = Plan(RESULTS / "bench" if goal == "bench" else root, f".plan-{goal}.mk")
    data = _pn_data(repl, profile, prof, overrides, plan)
    res = root / data["TR_NAME"]
    runs: list[str] = []
    arms: list[str] = []
    if goal == "replicate":
        arms = check_arms(repl, _words(args.arms, "ARMS") or list(prof.get("arms") or []),
                          "ARMS" if args.arms is not None else f"{repl}/profiles/{profile}.yaml arms")
        seeds = check_seeds(_words(args.seeds, "SEEDS") or list(prof.get("seeds") or []),
                            "SEEDS" if args.seeds is not None else
                            f"{repl}/profiles/{profile}.yaml seeds")
        for arm in arms:
            for seed in seeds:
                cfg = resolve(repl, profile, arm, seed, overrides)
                run = res / arm / f"seed{seed}"
                plan.runs.append((run, cfg, schema.NOT_TRAINING["translation"]))
                runs.append(str(run))
        plan.texts.append((res / "runs.list", "".join(r + "\n" for r in runs)))
        plan.var("R_SEEDS", seeds)
        plan.jobs = int(prof.get("parallel_runs") or 1)
    elif goal == "sweep":
        from normrepro.sweep import sweep_settings

        if args.seeds is not None:
            raise ConfigError("make sweep-<name> takes no SEEDS: it trains `sweep.seed` of the profile")
        if args.arms is not None:
            check_arms(repl, _words(args.arms, "ARMS"), "ARMS")
        sweep_settings(prof)
        plan.jobs = int(prof.get("parallel_runs") or 1)
    elif args.arms is not None or args.seeds is not None:
        raise ConfigError(f"the {goal} of {args.replication} takes no ARMS/SEEDS")
    _result_vars(plan, args.replication, "translation", root, res, data["TR_NAME"], runs,
                 arms, overrides)
    plan.var("TR_KEEP", prof["trainer"]["keep_snapshots"])
    return plan


def plan_insights(args, overrides: list[str]) -> Plan:
    from normrepro.insights import runs as ins_runs

    for value, what in ((args.dataset, "DATASET"), (args.arms, "ARMS"), (args.seeds, "SEEDS")):
        if value is not None:
            raise ConfigError(f"make replicate-insights takes no {what}: its runs are set in "
                              "replications/insights/profiles/<profile>.yaml")
    repl = REPLICATIONS / "insights"
    profile = resolve_profile_name(args.profile)
    profile_path(repl, profile)
    prof = load_profile(repl, profile, overrides)
    for upstream, name in prof["upstream"].items():
        profile_path(REPLICATIONS / upstream, name)
    root = RESULTS / "insights" / profile
    plan = Plan(root, ".plan-replicate.mk")
    configs = {}
    for run in sorted(prof["runs"]):
        cfg = ins_runs.resolve_run(profile, run, repl, overrides)
        if cfg["task"] == "image_classification":
            cfg = schema.check_run(cfg, cfg["task"], f"{repl} run {run}")
        configs[run] = cfg
        plan.runs.append((root / "runs" / run, cfg, schema.NOT_TRAINING[cfg["task"]]))
    for stage in ("causal", "axes", "sync_cost", "padding"):
        plan.texts.append((root / stage / "args.txt",
                           ins_runs.stage_args(profile, stage, repl, overrides) + "\n"))
    image = configs["image-bn"]
    text = configs["text-bn"]
    cx_dataset = image["data"]["dataset"]
    cx_processed = Path(image["data"].get("processed_root", "data/processed")) / cx_dataset
    plan.stale.append((cx_processed / "prepared.json", str(cx_processed)))
    pn_repl = REPLICATIONS / "powernorm"
    pn_prof = load_profile(pn_repl, prof["upstream"]["powernorm"])
    pn_prof["ood"] = []  # the insights runs need the training data only
    data = _pn_data(pn_repl, prof["upstream"]["powernorm"], pn_prof, [], plan)
    if Path(ins_runs.data_dir(text)) != data["TR_DATA"]:
        raise ConfigError(f"{repl}: the text runs read {ins_runs.data_dir(text)}, not "
                          f"{data['TR_DATA']}; keep `data.dataset`/`data.variant` of the upstream "
                          "powernorm profile")
    for name, value in (("INS_RES", root), ("INS_RUNS", root / "runs"),
                        ("INS_IMG_DATA", cx_processed), ("INS_TXT_DATA", data["TR_DATA"]),
                        ("IC_DATASET", cx_dataset), ("IC_RAW", DATA / "raw" / cx_dataset / "MANIFEST.json"),
                        ("IC_RAW_FILES", raw_prerequisites(DATA / "raw" / cx_dataset)),
                        ("IC_PREP", cx_processed / "prepared.json")):
        plan.var(name, value)
    return plan


# One planner per task (a replication's base.yaml names its task), and the insights folder's own.
PLANNERS = {"image_classification": plan_image_classification, "translation": plan_translation,
            "insights": plan_insights}
GOALS = {"image_classification": ("replicate", "sweep", "bench"),
         "translation": ("replicate", "sweep", "crosscheck", "bench"), "insights": ("replicate",)}


def replication_choices() -> list[str]:
    return sorted(p.parent.name for p in REPLICATIONS.glob("*/base.yaml"))


def also_replicate(replication: str) -> list[str]:
    """The replications `make replicate-<replication>` runs after its own pipeline (base.yaml's
    `also_replicate`, e.g. the DyT images' text extension), each checked to exist."""
    base = REPLICATIONS / replication / "base.yaml"
    names = (load_yaml(base) or {}).get("also_replicate") or [] if base.is_file() else []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{base}: also_replicate must be a list of replication names")
    choices = replication_choices()
    for name in names:
        if name not in choices or name == replication:
            raise ConfigError(f"{base}: also_replicate names {name!r}, which is not another "
                              f"replication; choose from {', '.join(c for c in choices if c != replication)}")
    return names


def check_also_replicate(args) -> None:
    """Check the whole command of each `also_replicate` replication (same PROFILE, its own arms,
    seeds and data) before anything is written. They run only when the command names no
    DATASET/ARMS/SEEDS/SET, which belong to the named replication alone (mk/replication.mk)."""
    if any(v not in (None, "") for v in (args.dataset, args.arms, args.seeds, args.set)):
        return
    for name in also_replicate(args.replication):
        companion = argparse.Namespace(**{**vars(args), "replication": name})
        PLANNERS[schema_name(REPLICATIONS / name)](companion, [])


@cli
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, command = argv[:cut], argv[cut + 1:]
    parser = argparse.ArgumentParser(prog="python -m normrepro.plan", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("replication", help="a folder of replications/ with a base.yaml")
    parser.add_argument("--goal", default="replicate")
    parser.add_argument("--profile", default="auto")
    parser.add_argument("--dataset", default=None, help="DATASET (only when given)")
    parser.add_argument("--arms", default=None, help="ARMS (only when given)")
    parser.add_argument("--seeds", default=None, help="SEEDS (only when given)")
    parser.add_argument("--set", default="", help="SET: space-separated key=value overrides")
    parser.add_argument("--what", default="", help="the command, for the lock holder's note")
    parser.add_argument("--check", action="store_true", help="check only: write and run nothing")
    parser.add_argument("--also-replicate", action="store_true",
                        help="print the replications base.yaml's also_replicate names, and stop")
    args = parser.parse_args(argv)
    choices = replication_choices()
    if args.replication not in choices:
        close = difflib.get_close_matches(args.replication, choices, n=1)
        raise ConfigError(f"no replication {args.replication!r} under {REPLICATIONS}; "
                          + (f"did you mean {close[0]!r}? " if close else "")
                          + f"choose from {', '.join(choices)}")
    if args.also_replicate:
        print(" ".join(also_replicate(args.replication)))
        return 0
    kind = schema_name(REPLICATIONS / args.replication)
    if args.goal not in GOALS[kind]:
        raise ConfigError(f"goal {args.goal!r} does not exist for {args.replication}; "
                          f"choose from {', '.join(GOALS[kind])}")
    try:
        overrides = shlex.split(args.set or "")
    except ValueError as exc:
        raise ConfigError(f"SET={args.set!r} cannot be split into key=value words ({exc})") from None
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"SET item {item!r} must look like key.sub=value")
    plan = PLANNERS[kind](args, overrides)
    if args.goal == "replicate":
        check_also_replicate(args)
    if args.check:
        return 0
    what = args.what or f"make {args.goal}-{args.replication}"
    lock = FolderLock(plan.lock_folder, what).acquire()
    plan.write()
    if not command:
        print(plan.plan_file)
        return 0
    extra = [f"PLAN_FILE={plan.plan_file}", f"PROFILE={resolve_profile_name(args.profile)}"]
    jobs = [f"-j{plan.jobs}"] if plan.jobs > 1 else []
    # make takes this process's place and inherits the locked descriptor (as does everything it
    # starts): the lock lasts as long as any of them runs, and no Python stays behind waiting.
    os.set_inheritable(lock.fd, True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvp(command[0], [command[0], *jobs, *command[1:], *extra])


if __name__ == "__main__":
    sys.exit(main())

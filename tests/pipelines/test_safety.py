"""Issue 13, piece by piece: configs checked against their schema, data checked against its
manifests, run stamps that move a changed run aside, unreadable checkpoints, the one error path of
the command lines, the results-folder lock and the progress lines. The whole pipelines under the
same faults are in test_make_faults.py."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from normrepro import datacheck, rundir, schema
from normrepro.config import ConfigError, load_profile, resolve
from normrepro.errors import BusyError, DataError, cli
from normrepro.lock import FolderLock
from normrepro.progress import Progress
from normrepro.tasks.translation import prepare as tprepare

from data_fixtures import write_fashion_raw

ROOT = Path(__file__).resolve().parents[2]
CX = ROOT / "replications" / "convnext"
PN = ROOT / "replications" / "powernorm"


# ------------------------------------------------------------------------ the schema

@pytest.mark.parametrize("override, message", [
    ("optim.base_lr=abc", r"SET 'optim.base_lr=abc': optim.base_lr: 'abc' is not a number"),
    ("optim.base_lrr=1", r"unknown key 'optim.base_lrr'; did you mean optim.base_lr\?"),
    ("no.such.key=1", r"unknown key 'no'; valid keys: also_replicate, arm, "),
    ("model.norm=layr2d", r"model.norm: 'layr2d' is not an image norm .* did you mean 'layer2d'"),
    ("data.dataset=bible-de-en", r"'bible-de-en' is not an image data set"),
    ("trainer.max_epochs=2.5", r"trainer.max_epochs: 2.5 is not an integer"),
    ("trainer.max_epochs=0", r"trainer.max_epochs: 0 must be positive"),
    ("optim=3", r"optim: 3 is not a mapping"),
    ("seeds=[a]", r"seeds\[0\]: 'a' is not an integer"),
])
def test_bad_overrides_fail_with_the_key_and_the_fix(override, message):
    with pytest.raises(ConfigError, match=message):
        resolve(CX, "smoke", "ln", 0, [override])


def test_numbers_written_as_strings_are_converted_and_valid_configs_are_unchanged():
    cfg = resolve(CX, "smoke", "ln", 0, ["optim.base_lr=1e-3", "trainer.devices=auto"])
    assert cfg["optim"]["base_lr"] == 1e-3 and cfg["trainer"]["devices"] == "auto"
    # The check converts nothing else: a valid config comes back exactly as merged.
    raw = resolve(CX, "cpu", "bn", 2)
    assert schema.validate(raw, "image_classification", "x") == raw
    assert yaml.safe_dump(schema.validate(raw, "image_classification", "x")) == yaml.safe_dump(raw)


def test_a_typo_in_an_arm_file_names_the_file(tmp_path):
    repl = tmp_path / "convnext"
    shutil.copytree(CX, repl)
    (repl / "arms" / "ln.yaml").write_text("model:\n  norm: layr2d\n")
    with pytest.raises(ConfigError, match=r"arms/ln\.yaml: model\.norm: 'layr2d' .* 'layer2d'"):
        resolve(repl, "smoke", "ln", 0)
    shutil.copy(CX / "arms" / "ln.yaml", repl / "arms" / "ln.yaml")
    (repl / "profiles" / "smoke.yaml").write_text("optim:\n  warmup_epoch: 1\n")
    with pytest.raises(ConfigError, match=r"profiles/smoke\.yaml: unknown key 'optim.warmup_epoch'; "
                                          r"did you mean optim\.warmup_epochs\?"):
        load_profile(repl, "smoke")
    (repl / "profiles" / "smoke.yaml").write_text("arm_overrides: {lnn: {optim: {lr: 1.0e-3}}}\n")
    with pytest.raises(ConfigError, match=r"arm_overrides: unknown arm 'lnn'; did you mean 'ln'"):
        load_profile(repl, "smoke")
    (repl / "profiles" / "smoke.yaml").write_text("arm_overrides: {ln: {optim: {lr: fast}}}\n")
    with pytest.raises(ConfigError, match=r"arm_overrides\.ln: optim\.lr: 'fast' is not a number"):
        load_profile(repl, "smoke")
    (repl / "profiles" / "smoke.yaml").write_text(
        "arm_overrides: {ln: {optim: {lr: 1.0e-3}}}\nsweep: {lrs: [1.0e-3, 2.0e-3], anything: 1}\n")
    assert resolve(repl, "smoke", "ln", 0)["optim"]["lr"] == 1e-3  # sweep: any mapping


def test_the_schema_names_are_the_registry_and_the_data_modules():
    from normrepro import norms
    from normrepro.tasks.image_classification.data import DATASETS

    assert set(schema.IMAGE_NORM_NAMES) == set(norms.IMAGE_NORMS)
    assert set(schema.SEQUENCE_NORM_NAMES) == set(norms.SEQUENCE_NORMS)
    assert set(schema.IMAGE_DATASETS) == set(DATASETS)


def test_checking_a_command_imports_no_torch():
    """The plan of a make command is quick: no torch, Lightning or fairseq to import."""
    code = ("import sys; from normrepro.plan import main; "
            "rc = main(['convnext', '--profile', 'smoke', '--check']); "
            "rc2 = main(['powernorm', '--profile', 'smoke', '--check']); "
            "print(rc, rc2, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.stdout.split() == ["0", "0", "False"], out.stderr


def test_unknown_profile_and_arm_suggest_the_closest():
    with pytest.raises(ConfigError, match=r"unknown profile 'smok'.*did you mean 'smoke'"):
        load_profile(CX, "smok")
    with pytest.raises(ConfigError, match=r"unknown arm 'lm'.*did you mean 'ln'"):
        resolve(CX, "smoke", "lm", 0)


def test_translation_schema_checks_norms_prepare_options_and_data_sets():
    with pytest.raises(ConfigError, match=r"SET 'optim.lr=abc': optim.lr: 'abc' is not a number"):
        load_profile(PN, "smoke", ["optim.lr=abc"])
    with pytest.raises(ConfigError, match=r"'powr' is not a sequence norm.*did you mean 'power'"):
        resolve(PN, "smoke", "pn", 1, ["model.encoder_norm=powr"])
    with pytest.raises(ConfigError, match=r"unknown key 'prepare.bible-de-en.bpe_sise'; did you mean "
                                          r"prepare.bible-de-en.bpe_size\?"):
        load_profile(PN, "smoke", ["prepare.bible-de-en.bpe_sise=3"])
    with pytest.raises(ConfigError, match=r"dataset: 'fashion-mnist' is not a training data set"):
        load_profile(PN, "smoke", ["data.dataset=fashion-mnist"])
    # The schema's data sets and prepare options are the prepare stage's.
    assert schema.TRANSLATION_DATASETS == tprepare.DATASETS
    fields = schema._hints(schema.PnPrepare)
    for ds, defaults in tprepare.DEFAULT_OPTIONS.items():
        assert set(schema._hints(fields[ds.replace("-", "_")])) == set(defaults), ds


# ------------------------------------------------------------------------ data manifests

def test_raw_files_are_checked_against_the_fetch_manifest(tmp_path):
    raw = write_fashion_raw(tmp_path / "raw" / "fashion-mnist")
    assert datacheck.verify_raw(raw)["dataset"] == "fashion-mnist"
    labels = raw / "train-labels-idx1-ubyte.gz"
    write_fashion_raw(tmp_path / "other", label_shift=3, manifest=False)
    shutil.copyfile(tmp_path / "other" / labels.name, labels)  # valid gzip, other labels
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz does not match .*MANIFEST\.json "
                                        r"\(sha256 .*fetch it again: rm -r .*make .*MANIFEST\.json"):
        datacheck.verify_raw(raw)
    labels.unlink()
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz is missing"):
        datacheck.verify_raw(raw)


def test_processed_files_are_checked_and_their_hashes_cached_by_mtime(tmp_path, monkeypatch):
    folder = tmp_path / "proc"
    folder.mkdir()
    (folder / "a.bin").write_bytes(b"x" * 1000)
    manifest = {"files": datacheck.file_entries(folder, ["a.bin"])}
    fix = "prepare it again"
    datacheck.verify_processed(folder, manifest, folder / "m.json", fix)
    calls = []
    monkeypatch.setattr(datacheck, "sha256_file", lambda p: calls.append(p) or "0" * 64)
    datacheck.verify_processed(folder, manifest, folder / "m.json", fix)
    assert calls == []  # unchanged size and mtime: the cached hash is used
    monkeypatch.undo()
    (folder / "a.bin").write_bytes(b"y" * 1000)  # same size, new content (and mtime)
    with pytest.raises(DataError, match=r"a\.bin does not match .*m\.json .*prepare it again"):
        datacheck.verify_processed(folder, manifest, folder / "m.json", fix)
    (folder / "a.bin").write_bytes(b"x" * 10)
    with pytest.raises(DataError, match=r"a\.bin has 10 bytes but .* lists 1000 \(truncated"):
        datacheck.verify_processed(folder, manifest, folder / "m.json", fix)
    with pytest.raises(DataError, match="lists no file hashes"):
        datacheck.verify_processed(folder, {}, folder / "m.json", fix)


def test_prepare_is_deterministic_and_the_fingerprint_follows_the_data(tmp_path):
    from normrepro.tasks.image_classification import data as cxdata

    raw = write_fashion_raw(tmp_path / "raw" / "fashion-mnist")
    proc = tmp_path / "proc" / "fashion-mnist"
    first = cxdata.prepare("fashion-mnist", raw, proc)
    stamp = (proc / "prepared.json").stat().st_mtime_ns, (proc / "fashion-mnist.pt").stat().st_mtime_ns
    again = cxdata.prepare("fashion-mnist", raw, proc)
    assert again == first  # same bytes: nothing rewritten, nothing downstream redone
    assert ((proc / "prepared.json").stat().st_mtime_ns,
            (proc / "fashion-mnist.pt").stat().st_mtime_ns) == stamp
    fp = cxdata.data_fingerprint({"processed_root": str(proc.parent), "dataset": "fashion-mnist"})
    write_fashion_raw(raw, label_shift=1)  # a new fetch with other labels
    cxdata.prepare("fashion-mnist", raw, proc)
    assert cxdata.data_fingerprint({"processed_root": str(proc.parent),
                                    "dataset": "fashion-mnist"}) != fp
    with open(proc / "fashion-mnist.pt", "r+b") as fh:  # truncated after prepare
        fh.truncate(1000)
    with pytest.raises(DataError, match=r"fashion-mnist\.pt has 1000 bytes .*rm -r"):
        cxdata.ImageClassificationData({"dataset": "fashion-mnist",
                                        "processed_root": str(proc.parent)}, 0, 8).setup()


# ------------------------------------------------------------------------ run stamps

def _finished_run(run: Path, stamp: str) -> None:
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("new: config\n")
    (run / "checkpoints" / "config.yaml").write_text(stamp)
    torch.save({"w": torch.ones(3)}, run / "checkpoints" / "last.ckpt")
    for name in ("metrics.csv", "env.json", "final.json"):
        (run / name).write_text(name)


def test_a_changed_stamp_moves_the_finished_run_aside(tmp_path, capsys):
    run = tmp_path / "ln" / "seed0"
    old = rundir.stamp_text({"optim": {"lr": 0.1}, "report": 1}, ("report",), "a" * 64)
    _finished_run(run, old)
    assert rundir.sync_stamp(run, old, ("env.json",), ("metrics.csv",)) == "done"
    same = rundir.stamp_text({"optim": {"lr": 0.1}, "report": 2}, ("report",), "a" * 64)
    assert same == old  # report settings do not retrain
    new = rundir.stamp_text({"optim": {"lr": 0.2}}, (), "b" * 64)
    assert rundir.sync_stamp(run, new, ("env.json",), ("metrics.csv",)) == "fresh"
    line = capsys.readouterr().out.strip()
    assert "config changed (optim.lr 0.1 → 0.2); data changed" in line and "seed0.replaced-" in line
    (aside,) = tmp_path.glob("ln/seed0.replaced-*")
    for name in ("metrics.csv", "env.json", "final.json", "checkpoints/last.ckpt"):
        assert (aside / name).is_file(), name  # nothing finished is lost
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.yaml"]
    assert (run / "config.yaml").read_text() == "new: config\n"


def test_a_stamp_under_renamed_keys_is_the_same_training(tmp_path, capsys):
    """Translation runs trained when the data set was the top-level `dataset`/`data_variant`
    are finished runs of `data.dataset`/`data.variant`: nothing moved aside or retrained, by the
    train stage (stamp) or the plan (config.yaml)."""
    from normrepro.plan import sync_run_config

    run = tmp_path / "ln" / "seed1"
    old_cfg = {"dataset": "bible-de-en", "data_variant": "", "data": {"max_tokens": 1024},
               "optim": {"lr": 0.002}, "eval": {"beam": 5}}
    new_cfg = {"data": {"dataset": "bible-de-en", "variant": "", "max_tokens": 1024},
               "optim": {"lr": 0.002}, "eval": {"beam": 4}}
    # the stamp as the train stage wrote it before the rename
    old = (yaml.safe_dump({k: v for k, v in old_cfg.items() if k != "eval"}, sort_keys=True)
           + rundir.DATA_LINE + "a" * 64 + "\n")
    new = rundir.stamp_text(new_cfg, ("eval",), "a" * 64)
    assert old.startswith("data:\n  max_tokens: 1024\ndata_variant: ''\ndataset: bible-de-en\n")
    assert new.startswith("data:\n  dataset: bible-de-en\n")
    _finished_run(run, old)
    (run / "config.yaml").write_text(yaml.safe_dump(old_cfg))
    sync_run_config(run, new_cfg, ("eval",))
    assert yaml.safe_load((run / "config.yaml").read_text()) == new_cfg
    assert rundir.sync_stamp(run, new, ("env.json",), ("metrics.csv",)) == "done"
    assert (run / "checkpoints" / "config.yaml").read_text() == new  # rewritten under the new names
    assert not list(tmp_path.glob("ln/seed1.replaced-*"))
    assert "moved" not in capsys.readouterr().out
    # a real change under the new names still moves the run aside
    changed = rundir.stamp_text({**new_cfg, "data": {**new_cfg["data"], "dataset": "iwslt14"}},
                                ("eval",), "a" * 64)
    assert rundir.sync_stamp(run, changed, ("env.json",), ("metrics.csv",)) == "fresh"
    assert "data.dataset 'bible-de-en' → 'iwslt14'" in capsys.readouterr().out


def test_an_unreadable_checkpoint_is_set_aside_and_training_restarts(tmp_path, capsys):
    run = tmp_path / "run"
    stamp = rundir.stamp_text({"a": 1}, (), "c" * 64)
    _finished_run(run, stamp)
    (run / "env.json").unlink()  # interrupted: not finished
    (run / "final.json").unlink()
    ckpt = run / "checkpoints" / "last.ckpt"
    assert rundir.checkpoint_problem(ckpt) is None
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    assert "truncated" in rundir.checkpoint_problem(ckpt)
    assert rundir.sync_stamp(run, stamp, ("env.json",), ("metrics.csv",)) == "fresh"
    out = capsys.readouterr().out
    assert "warning:" in out and "last.ckpt is unreadable" in out and "restarts from scratch" in out
    (aside,) = run.glob("checkpoints.corrupt-*")
    assert (aside / "last.ckpt").read_bytes() == data[: len(data) // 2]
    assert (aside / "metrics.csv").is_file() and not (run / "metrics.csv").exists()
    # A flipped byte inside a member fails its CRC.
    torch.save({"w": torch.arange(1000.0)}, ckpt)
    raw = bytearray(ckpt.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    ckpt.write_bytes(bytes(raw))
    assert rundir.checkpoint_problem(ckpt) is not None


# ------------------------------------------------------------------------ the error path

def test_known_failures_end_in_one_line_and_status_2(capsys, monkeypatch):
    @cli
    def main():
        raise PermissionError(errno.EACCES, "Permission denied", "results/x/final.json")

    assert main() == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: cannot write or read results/x/final.json")
    assert "chmod" in err and "Traceback" not in err

    @cli
    def bug():
        raise KeyError("a bug keeps its traceback")

    with pytest.raises(KeyError):
        bug()
    monkeypatch.setenv("NORMREPRO_DEBUG", "1")
    with pytest.raises(PermissionError):
        main()


def test_evaluate_into_a_read_only_folder_is_one_line(tmp_path, monkeypatch, capsys):
    """A results folder that cannot be written (as root, chmod does not stop us: simulated)."""
    from normrepro.tasks.image_classification import evaluate as cxeval
    from normrepro import io as nio

    def refuse(src, dst):
        raise PermissionError(errno.EACCES, "Permission denied", str(dst))

    monkeypatch.setattr(cxeval, "evaluate", lambda run: nio.atomic_write_json(Path(run) / "final.json", {}))
    (tmp_path / "config.yaml").write_text("task: image_classification\n")
    monkeypatch.setattr(nio.os, "replace", refuse)
    from normrepro.stages import evaluate as st_eval

    assert st_eval.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "final.json" in err[0] and "permission denied" in err[0].lower()


def test_a_bad_config_file_is_one_line_from_the_train_command(tmp_path):
    cfg = resolve(CX, "smoke", "ln", 0)
    cfg["optim"]["base_lr"] = "abc"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "normrepro.stages.train", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: {tmp_path}/config.yaml: optim.base_lr: 'abc' is not a number"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


# ------------------------------------------------------------------------ lock and progress

def test_a_second_command_on_a_locked_folder_refuses(tmp_path):
    with FolderLock(tmp_path / "res", "make replicate-convnext PROFILE=smoke"):
        with pytest.raises(BusyError, match=r"res is in use by another command \(pid \d+, "
                                            r"`make replicate-convnext PROFILE=smoke`, since"):
            FolderLock(tmp_path / "res", "second").acquire()
    with FolderLock(tmp_path / "res", "second"):  # released when the first one ends
        pass


def test_progress_in_logs_is_plain_periodic_lines_with_an_eta():
    import io

    stream = io.StringIO()
    p = Progress("[train] run", 100, stream=stream, every_s=0.0, live=False)
    for done in (10, 50):
        p.update(done)
    p.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in stream.getvalue()
    assert lines[1].startswith("[train] run  steps 50/100 (50%)") and "ETA" in lines[1]
    live = io.StringIO()
    p = Progress("[x]", 4, stream=live, live=True)
    p.update(4)
    p.close()
    assert live.getvalue().startswith("\r[x]  steps 4/4 (100%)") and live.getvalue().endswith("\n")

"""Issue 13's scenarios through the real make targets, on a tiny copy of the project.

A workspace holds this repository's Makefile, mk/ and replications/ (plus two tiny ConvNeXt profiles,
`tiny` and `tiny2`, width-8 models on a few dozen synthetic Fashion-MNIST images) and a raw data
folder with its MANIFEST.json; `make replicate-convnext` runs there for real (plan, prepare,
train, evaluate, summarize, plot, report). Each scenario then injects one fault (a bad SET value,
an unknown key, a norm typo in an arm file, a wrong PROFILE/DATASET/SEEDS, changed raw labels, a
truncated processed file or checkpoint, a busy results folder, a second profile) and checks the
outcome: one error line and exit status 2, or a correct retrain; and in every case that the
finished run's files are still there, byte for byte (or moved aside, never deleted).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from normrepro.lock import FolderLock

from data_fixtures import write_fashion_manifest, write_fashion_raw

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(sys.prefix)
TINY = """# Test profile: a width-8 ConvNeXt on a few dozen images, one epoch.
seeds: [0]
data: {dataset: fashion-mnist, batch_size: 8, eval_batch_size: 16, val_size: 8, train_subset: 32,
       test_subset: 16}
model: {variant: convnext_atto, patch_size: 4, drop_path_rate: 0.0,
        kwargs: {depths: [1, 1, 1, 1], dims: [8, 8, 16, 16]}}
optim: {warmup_epochs: 1}
trainer: {max_epochs: 1, accelerator: cpu, devices: 1, print_epochs: true}
"""
RUN = "results/convnext/tiny/fashion-mnist/ln/seed0"
FINISHED = ("config.yaml", "env.json", "final.json", "metrics.csv", "checkpoints/last.ckpt",
            "checkpoints/config.yaml")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (VENV / ".setup-stamp").is_file() or shutil.which("make") is None,
                       reason="needs make and the project's .venv (make setup)"),
]


def make(ws: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS"))}
    env.update(NORMREPRO_PROGRESS="lines", NORMREPRO_PROGRESS_EVERY="0", OMP_NUM_THREADS="1")
    return subprocess.run(["make", "--no-print-directory", *args], cwd=ws, capture_output=True,
                          text=True, timeout=timeout, env=env)


def digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder` (relative path → hash)."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".")}


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """The workspace, with one finished run (arm ln, seed 0) of profile `tiny`."""
    ws = tmp_path_factory.mktemp("ws")
    shutil.copy(ROOT / "Makefile", ws / "Makefile")
    shutil.copytree(ROOT / "mk", ws / "mk")
    shutil.copytree(ROOT / "replications", ws / "replications")
    for name in ("tiny", "tiny2"):
        text = TINY if name == "tiny" else TINY.replace("max_epochs: 1", "max_epochs: 2")
        (ws / "replications" / "convnext" / "profiles" / f"{name}.yaml").write_text(text)
    # make's setup stamp is the real .venv's; an old pyproject.toml keeps it up to date.
    (ws / "pyproject.toml").write_text("")
    os.utime(ws / "pyproject.toml", (0, 0))
    (ws / ".venv").symlink_to(VENV)
    write_fashion_raw(ws / "data" / "raw" / "fashion-mnist", n_train=48, n_test=16)
    proc = make(ws, "replicate-convnext", "PROFILE=tiny", "ARMS=ln")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in FINISHED:
        assert (ws / RUN / name).is_file(), name
    assert (ws / "results/convnext/tiny/report.md").is_file()
    return ws


@pytest.fixture
def finished(ws):
    """The finished run's files before a scenario; the scenario checks they are unchanged."""
    return digest(ws / RUN)


@pytest.mark.parametrize("args, message", [
    (["SET=optim.base_lr=abc"], r"^error: SET 'optim.base_lr=abc': optim.base_lr: 'abc' is not a number$"),
    (["SET=no.such.key=1"], r"^error: SET 'no.such.key=1': unknown key 'no'; valid keys: "),
    (["SET=optim.base_lrr=1"], r"did you mean optim.base_lr\?$"),
    (["PROFILE=nonsense"], r"unknown profile 'nonsense' for replications/convnext; choose one of "),
    (["SEEDS="], r"^error: SEEDS is empty"),
    (["SEEDS=0 x"], r"SEEDS: seed 'x' is not a non-negative integer"),
    (["ARMS=lm"], r"unknown arm 'lm' .*did you mean 'ln'"),
    (["DATASET=nope"], r"^error: DATASET: data.dataset: 'nope' is not an image data set"),
    (["DATASET=bible-de-en"], r"'bible-de-en' is not an image data set"),
])
def test_a_bad_command_stops_first_with_one_line_and_touches_nothing(ws, finished, args, message):
    before = sorted(p.relative_to(ws).as_posix() for p in (ws / "results").rglob("*"))
    proc = make(ws, "replicate-convnext", "PROFILE=tiny", "ARMS=ln", *args)
    assert proc.returncode != 0
    errors = error_lines(proc)
    assert len(errors) == 1, proc.stderr
    assert re.search(message, errors[0]), errors[0]
    assert "Traceback" not in proc.stderr and "[train]" not in proc.stdout
    assert sorted(p.relative_to(ws).as_posix() for p in (ws / "results").rglob("*")) == before
    assert digest(ws / RUN) == finished


def test_a_norm_typo_in_an_arm_file_names_the_file(ws, finished):
    arm = ws / "replications/convnext/arms/ln.yaml"
    text = arm.read_text()
    arm.write_text(text.replace("layer2d", "layr2d"))
    try:
        proc = make(ws, "replicate-convnext", "PROFILE=tiny", "ARMS=ln")
    finally:
        arm.write_text(text)
    (line,) = error_lines(proc)
    assert "replications/convnext/arms/ln.yaml: model.norm: 'layr2d'" in line and "'layer2d'" in line
    assert digest(ws / RUN) == finished


def test_powernorm_honours_and_checks_set(ws):
    proc = make(ws, "replicate-powernorm", "PROFILE=smoke", "SET=optim.lr=abc")
    assert proc.returncode != 0
    (line,) = error_lines(proc)
    assert line == "error: SET 'optim.lr=abc': optim.lr: 'abc' is not a number"
    assert not (ws / "results" / "powernorm").exists()
    proc = make(ws, "replicate-insights", "PROFILE=smoke", "SEEDS=1")
    (line,) = error_lines(proc)
    assert "replicate-insights takes no SEEDS" in line


def test_a_busy_results_folder_refuses_a_second_make(ws, finished):
    with FolderLock(ws / "results/convnext/tiny", "make replicate-convnext PROFILE=tiny (other)"):
        proc = make(ws, "replicate-convnext", "PROFILE=tiny", "ARMS=ln", "SEEDS=0 1")
    (line,) = error_lines(proc)
    assert "results/convnext/tiny is in use by another command (pid" in line
    assert "PROFILE=tiny (other)" in line
    assert not (ws / "results/convnext/tiny/fashion-mnist/ln/seed1").exists()
    assert digest(ws / RUN) == finished


def test_a_second_profile_writes_its_own_folders(ws, finished):
    report = (ws / "results/convnext/tiny/report.md").read_bytes()
    proc = make(ws, "replicate-convnext", "PROFILE=tiny2", "ARMS=ln")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (ws / "results/convnext/tiny2/fashion-mnist/ln/seed0/final.json").is_file()
    assert (ws / "results/convnext/tiny2/report.md").is_file()
    assert (ws / "results/convnext/tiny/report.md").read_bytes() == report
    assert digest(ws / RUN) == finished
    # Nothing to do the second time.
    again = make(ws, "replicate-convnext", "PROFILE=tiny2", "ARMS=ln")
    assert again.returncode == 0 and "normrepro.stages.train" not in again.stdout


def test_logs_have_progress_and_no_library_noise(ws):
    proc = make(ws, "replicate-convnext", "PROFILE=tiny2", "ARMS=ln", "SEEDS=3")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert re.search(r"\[train\] results/convnext/tiny2/fashion-mnist/ln/seed3  steps 1/8 \(12%\)  "
                     r"[0-9.]+ steps/s  elapsed \d+:\d\d  ETA \d+:\d\d", log), log[-3000:]
    for noise in ("GPU available", "TPU available", "Tip:", "Warning", "deprecated", "\r",
                  "LeafSpec", "does not have many workers"):
        assert noise not in log, noise


def test_changed_raw_labels_are_refused_then_a_new_fetch_retrains(ws, capsys):
    raw = ws / "data/raw/fashion-mnist"
    labels = raw / "train-labels-idx1-ubyte.gz"
    original = {p.name: p.read_bytes() for p in raw.iterdir()}
    before = digest(ws / RUN)
    other = write_fashion_raw(ws / "other", n_train=48, n_test=16, label_shift=3, manifest=False)
    shutil.copyfile(other / labels.name, labels)  # valid gzip, other labels, manifest unchanged
    proc = make(ws, "replicate-convnext", "PROFILE=tiny", "ARMS=ln")
    assert proc.returncode != 0
    (line,) = error_lines(proc)
    assert "train-labels-idx1-ubyte.gz does not match data/raw/fashion-mnist/MANIFEST.json" in line
    assert "fetch it again" in line
    assert digest(ws / RUN) == before
    # A legitimate new download (files and manifest): prepared again, the run moved aside and
    # retrained, with one line saying why.
    write_fashion_manifest(raw)
    proc = make(ws, "replicate-convnext", "PROFILE=tiny", "ARMS=ln")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "data changed" in proc.stdout and "seed0.replaced-" in proc.stdout
    (aside,) = (ws / RUN).parent.glob("seed0.replaced-*")
    assert digest(aside) == before  # the old run, complete
    assert (ws / RUN / "final.json").is_file()
    # Back to the original data: prepared again, retrained again; nothing is lost either way.
    for name, data in original.items():
        (raw / name).write_bytes(data)
    proc = make(ws, "replicate-convnext", "PROFILE=tiny", "ARMS=ln")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list((ws / RUN).parent.glob("seed0.replaced-*"))) == 2


def test_a_truncated_processed_file_is_prepared_again(ws):
    before = digest(ws / RUN)
    tensors = ws / "data/processed/fashion-mnist/fashion-mnist.pt"
    with open(tensors, "r+b") as fh:
        fh.truncate(tensors.stat().st_size // 2)
    # The stage itself names the file and the fix ...
    proc = subprocess.run([str(ws / ".venv/bin/python"), "-m", "normrepro.stages.evaluate", RUN],
                          cwd=ws, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    (line,) = error_lines(proc)
    assert "data/processed/fashion-mnist/fashion-mnist.pt has" in line and "rm -r" in line
    # ... and make notices it and prepares again; the data is the same, so nothing retrains
    # (evaluation runs again: its input, the prepared data, was rewritten).
    proc = make(ws, "replicate-convnext", "PROFILE=tiny", "ARMS=ln")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "is prepared again" in proc.stdout and "is already trained" in proc.stdout
    after = digest(ws / RUN)
    for name in ("checkpoints/last.ckpt", "checkpoints/config.yaml", "metrics.csv", "env.json"):
        assert after[name] == before[name], name
    assert json.loads((ws / RUN / "final.json").read_text())["status"] == "ok"


def test_a_truncated_checkpoint(ws):
    run = ws / RUN
    ckpt = run / "checkpoints" / "last.ckpt"
    with open(ckpt, "r+b") as fh:
        fh.truncate(ckpt.stat().st_size // 2)
    # Evaluating a finished run whose checkpoint is damaged: one line naming it and the fix.
    proc = subprocess.run([str(ws / ".venv/bin/python"), "-m", "normrepro.stages.evaluate", RUN],
                          cwd=ws, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    (line,) = error_lines(proc)
    assert "checkpoints/last.ckpt is unreadable" in line and "rm " in line and "env.json" in line
    # Following the fix: training sets the checkpoint aside with a warning and starts over.
    (run / "env.json").unlink()
    proc = make(ws, "replicate-convnext", "PROFILE=tiny", "ARMS=ln")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "warning:" in proc.stdout and "restarts from scratch" in proc.stdout
    (aside,) = run.glob("checkpoints.corrupt-*")
    assert (aside / "last.ckpt").is_file() and (run / "final.json").is_file()


def test_a_changed_config_moves_the_run_aside(ws):
    before = digest(ws / RUN)
    n_aside = len(list((ws / RUN).parent.glob("seed0.replaced-*")))
    proc = make(ws, "replicate-convnext", "PROFILE=tiny", "ARMS=ln", "SET=optim.weight_decay=0.01")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "config changed (optim.weight_decay 0.05 → 0.01)" in proc.stdout
    asides = sorted((ws / RUN).parent.glob("seed0.replaced-*"))
    assert len(asides) == n_aside + 1
    assert any(digest(a) == before for a in asides)
    assert json.loads((ws / RUN / "final.json").read_text())["status"] == "ok"


def test_a_new_replication_is_a_folder(ws):
    """A folder with configs and paper.yaml, no make code: `make replicate-<name>` runs it
    through the shared rules (mk/replication.mk, mk/tasks/) to its own report."""
    new = ws / "replications" / "convnext_copy"
    shutil.copytree(ws / "replications" / "convnext", new)
    try:
        assert not list(new.glob("*.mk"))
        help_text = make(ws, "help").stdout
        assert "replicate-convnext_copy" in help_text and "sweep-convnext_copy" in help_text
        proc = make(ws, "replicate-convnext_copy", "PROFILE=tiny", "ARMS=ln")
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        res = ws / "results" / "convnext_copy" / "tiny"
        # the same config and seed as the convnext run: the same numbers
        ours = json.loads((res / "fashion-mnist/ln/seed0/final.json").read_text())
        theirs = json.loads((ws / RUN / "final.json").read_text())
        assert ours["test_top1"] == theirs["test_top1"]
        assert (res / "fashion-mnist/runs.list").read_text().split() == [str(Path(
            "results/convnext_copy/tiny/fashion-mnist/ln/seed0"))]
        report = (res / "report.md").read_text()
        assert "make replicate-convnext_copy" in report
        assert (res / "figures/fashion-mnist-final-top1.png").is_file()
    finally:
        shutil.rmtree(new)
        shutil.rmtree(ws / "results" / "convnext_copy", ignore_errors=True)

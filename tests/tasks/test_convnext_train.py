"""Training tests of the ConvNeXt replication on tiny synthetic Fashion-MNIST-like data.

Covers: the smoke configs train and evaluate; an interrupted-and-resumed run equals an
uninterrupted one; a changed config restarts instead of resuming; a NaN loss is recorded as a
diverged run (not a crash) and flows through evaluate/summarize/report; DDP with 2 CPU processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pandas as pd
import pytest
import torch

from normrepro import datacheck
from normrepro.config import dump, resolve
from normrepro.tasks.image_classification import data as cxdata
from normrepro.tasks.image_classification import evaluate as cxeval
from normrepro.stages import plot as stplot
from normrepro.stages import report as streport
from normrepro.stages import summarize as stsum
from normrepro.tasks.image_classification import SPEC
from normrepro.tasks.image_classification.module import ConvNeXtClassifier
from normrepro.tasks.image_classification.train import train

REPL = Path(__file__).resolve().parents[2] / "replications" / "convnext"
TINY = {"depths": [1, 1, 1, 1], "dims": [8, 8, 16, 16]}
TIME_COLUMNS = ["epoch_time_s", "train_time_s", "train_images_per_s"]


def _write_tiny_processed(root: Path) -> Path:
    """64 training + 32 test images of a learnable toy task, in the prepared tensor layout."""
    g = torch.Generator().manual_seed(0)
    processed = root / "fashion-mnist"
    processed.mkdir(parents=True)

    def images(n):
        labels = torch.arange(n) % 10
        x = torch.randint(0, 60, (n, 1, 32, 32), generator=g, dtype=torch.uint8)
        for i, y in enumerate(labels.tolist()):  # a bright bar whose row encodes the class
            x[i, 0, 3 + 2 * y, 4:28] = 250
        return x, labels

    xtr, ytr = images(64)
    xte, yte = images(32)
    tensor_file = processed / "fashion-mnist.pt"
    torch.save({"train_images": xtr, "train_labels": ytr, "test_images": xte,
                "test_labels": yte}, tensor_file)
    (processed / "prepared.json").write_text(json.dumps({
        "dataset": "fashion-mnist", "num_classes": 10, "in_chans": 1, "image_size": 32,
        "backend": "tensor", "tensor_file": tensor_file.name, "n_train": 64, "n_test": 32,
        "mean": [0.1], "std": [0.3],
        "files": datacheck.file_entries(processed, [tensor_file.name])}))
    return root


@pytest.fixture(scope="module")
def processed_root(tmp_path_factory) -> Path:
    return _write_tiny_processed(tmp_path_factory.mktemp("processed"))


def tiny_cfg(processed_root: Path, arm: str = "ln", seed: int = 0, *extra: str,
             tiny_model: bool = True) -> dict:
    overrides = [f"data.processed_root={processed_root}", "data.val_size=16",
                 "data.train_subset=null", "data.test_subset=null", "data.batch_size=16",
                 "trainer.max_epochs=2", "trainer.accelerator=cpu", "trainer.devices=1",
                 "trainer.print_epochs=false", *extra]
    if tiny_model:
        overrides.append("model.kwargs=" + json.dumps(TINY))
    return resolve(REPL, "smoke", arm, seed, overrides)


def _write_config(cfg: dict, run: Path) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(dump(cfg))
    return run


def _metrics(run: Path) -> pd.DataFrame:
    return pd.read_csv(run / "metrics.csv").drop(columns=TIME_COLUMNS)


def _weights(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


@pytest.mark.parametrize("arm", ["bn", "ln"])
def test_smoke_config_trains_and_evaluates(processed_root, tmp_path, arm):
    # The real smoke model (convnext_atto), one epoch on the tiny data.
    cfg = tiny_cfg(processed_root, arm, 0, "trainer.max_epochs=1", tiny_model=False)
    run = _write_config(cfg, tmp_path / arm / "seed0")
    record = train(cfg, run)
    assert record["status"] == "ok" and record["epochs_completed"] == 1
    assert record["split_sizes"] == {"train": 48, "val": 16, "test": 32}
    assert (run / "checkpoints" / "last.ckpt").is_file()
    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics["epoch"]) == [1] and metrics["step"].iloc[0] == 3
    env = json.loads((run / "env.json").read_text())
    assert env["train"]["status"] == "ok" and env["run"]["norm"] == cfg["model"]["norm"]
    final = cxeval.evaluate(run)
    assert final["status"] == "ok" and final["n_test"] == 32
    assert 0.0 <= final["test_top1"] <= final["test_top5"] <= 100.0


def test_resume_after_interruption_equals_uninterrupted_run(processed_root, tmp_path):
    cfg = tiny_cfg(processed_root, "bn", 1, "data.augment.random_erasing=0.25",
                   "model.drop_path_rate=0.2")

    full = tmp_path / "full"
    train(cfg, full)

    class StopAtSecondEpoch(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                raise RuntimeError("simulated kill after epoch 1")

    cut = tmp_path / "cut"
    with pytest.raises(RuntimeError, match="simulated kill"):
        train(cfg, cut, callbacks=[StopAtSecondEpoch()])
    assert not (cut / "env.json").exists()  # the make target is missing: make reruns train
    assert len(pd.read_csv(cut / "metrics.csv")) == 1
    record = train(cfg, cut)
    assert record["resumed"] is True and record["epochs_completed"] == 2
    pd.testing.assert_frame_equal(_metrics(cut), _metrics(full), check_exact=False, rtol=1e-6)
    wf, wc = _weights(full), _weights(cut)
    assert wf.keys() == wc.keys()
    for key in wf:
        torch.testing.assert_close(wc[key], wf[key], rtol=1e-6, atol=1e-7, msg=key)


def test_changed_config_starts_over(processed_root, tmp_path):
    run = tmp_path / "run"
    train(tiny_cfg(processed_root, "ln", 0, "trainer.max_epochs=1"), run)
    record = train(tiny_cfg(processed_root, "ln", 0, "trainer.max_epochs=2"), run)
    assert record["resumed"] is False
    assert list(pd.read_csv(run / "metrics.csv")["epoch"]) == [1, 2]


def test_nan_loss_is_recorded_as_diverged(processed_root, tmp_path, monkeypatch):
    original = ConvNeXtClassifier.loss_fn

    def explode_after_two_steps(self, logits, target, soft):
        loss = original(self, logits, target, soft)
        return loss * float("nan") if self.global_step >= 2 else loss

    monkeypatch.setattr(ConvNeXtClassifier, "loss_fn", explode_after_two_steps)
    cfg = tiny_cfg(processed_root, "ln", 2, "trainer.nan_check_every=1", "trainer.max_epochs=3")
    run = _write_config(cfg, tmp_path / "ln" / "seed2")
    record = train(cfg, run)  # no exception: divergence is a result
    assert record["status"] == "diverged" and record["diverged_at_step"] == 2
    assert record["epochs_completed"] < 3
    final = cxeval.evaluate(run)
    assert final["status"] == "diverged" and final["test_top1"] is None
    assert json.loads((run / "final.json").read_text())["status"] == "diverged"


def test_stages_summarize_plot_report_with_a_diverged_run(processed_root, tmp_path, monkeypatch):
    results = tmp_path / "results" / "convnext"
    ds = results / "fashion-mnist"
    runs = []
    for arm in ("bn", "ln"):
        for seed in (0, 1):
            cfg = tiny_cfg(processed_root, arm, seed, "trainer.max_epochs=1")
            run = _write_config(cfg, ds / arm / f"seed{seed}")
            train(cfg, run)
            cxeval.evaluate(run)
            runs.append(str(run))
    # A third BN seed that diverges.
    original = ConvNeXtClassifier.loss_fn
    monkeypatch.setattr(ConvNeXtClassifier, "loss_fn",
                        lambda self, *a: original(self, *a) * float("nan"))
    cfg = tiny_cfg(processed_root, "bn", 2, "trainer.max_epochs=1", "trainer.nan_check_every=1")
    run = _write_config(cfg, ds / "bn" / "seed2")
    train(cfg, run)
    cxeval.evaluate(run)
    runs.append(str(run))

    assert stsum.main(["--replication", str(REPL), "--out", str(ds / "summary.csv"),
                       "--runs", *runs]) == 0
    summary = pd.read_csv(ds / "summary.csv")
    bn = summary[(summary["name"] == "bn") & (summary["metric"] == "test_top1")].iloc[0]
    assert bn["n"] == 2 and bn["n_runs"] == 3 and bn["n_diverged"] == 1
    assert bn["status"] == "1/3 diverged"
    finals = {Path(r).parent.name + Path(r).name: json.loads((Path(r) / "final.json").read_text())
              for r in runs}
    assert bn["mean"] == pytest.approx((finals["bnseed0"]["test_top1"]
                                        + finals["bnseed1"]["test_top1"]) / 2)

    figures = results / "figures"
    assert stplot.main(["--replication", str(REPL), "--summary", str(ds / "summary.csv"),
                        "--out-dir", str(figures)]) == 0
    for stem in stplot.figure_paths(SPEC, figures, "fashion-mnist").values():
        for ext in (".png", ".pdf"):
            assert stem.with_name(stem.name + ext).stat().st_size > 0

    out = results / "report.md"
    assert streport.main(["--replication", str(REPL), "--results", str(results),
                          "--datasets", "fashion-mnist", "--out", str(out)]) == 0
    text = out.read_text()
    assert "1/3 diverged" in text and "| bn | 2 | diverged |" in text
    assert "### Verdict" in text and "LN − BN = " in text
    diff = summary[(summary["kind"] == "diff") & (summary["metric"] == "test_top1")].iloc[0]
    assert f"{diff['mean']:+.2f}" in text
    assert "![learning curves" in text and "figures/fashion-mnist-final-top1.png" in text
    assert "make replicate-convnext PROFILE=smoke DATASET=fashion-mnist" in text


def test_ddp_with_two_cpu_processes(processed_root, tmp_path):
    # The synchronised-BN arm: its statistics all-reduce over the 2 gloo workers.
    cfg = tiny_cfg(processed_root, "bn_sync", 0, "trainer.max_epochs=1", "trainer.strategy=ddp",
                   "trainer.devices=2")
    run = _write_config(cfg, tmp_path / "bn_sync" / "seed0")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS"):
        env.pop(var, None)
    proc = subprocess.run([sys.executable, "-m", "normrepro.stages.train", str(run)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads((run / "env.json").read_text())["train"]
    assert record["world_size"] == 2 and record["effective_batch"] == 32
    metrics = pd.read_csv(run / "metrics.csv")
    # 48 training images, 2 ranks x batch 16 per step, drop_last: 1 step per epoch.
    assert list(metrics["epoch"]) == [1] and metrics["step"].iloc[0] == 1
    assert metrics["val_top1"].notna().all()


def test_image_folder_backend_with_paper_augmentation(tmp_path):
    """Imagenette layout (PIL path): prepare, RandAugment + erasing + Mixup/CutMix, evaluate."""
    from PIL import Image

    raw = tmp_path / "raw" / "imagenette"
    for split, per_class in (("train", 2), ("val", 1)):
        for c in range(10):
            folder = raw / "imagenette2-160" / split / f"n0{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                color = (25 * c, 255 - 25 * c, 40 * i)
                Image.new("RGB", (40, 36), color).save(folder / f"img{i}.JPEG", format="JPEG")
    (raw / "MANIFEST.json").write_text("{}")
    info = cxdata.prepare("imagenette", raw, tmp_path / "processed" / "imagenette")
    assert (info["n_train"], info["n_test"], info["backend"]) == (20, 10, "image")

    cfg = resolve(REPL, "gpu", "bn", 0, [
        "data.dataset=imagenette", f"data.processed_root={tmp_path / 'processed'}",
        "data.image_size=32", "data.val_size=4", "data.batch_size=4", "data.num_workers=0",
        "model.patch_size=4", "model.kwargs=" + json.dumps(TINY), "trainer.max_epochs=1",
        "trainer.accelerator=cpu", "trainer.devices=1", "trainer.print_epochs=false"])
    assert cfg["data"]["augment"]["rand_augment"] and cfg["data"]["augment"]["mixup"] > 0
    run = _write_config(cfg, tmp_path / "bn" / "seed0")
    assert train(cfg, run)["status"] == "ok"
    final = cxeval.evaluate(run)
    assert final["status"] == "ok" and final["n_test"] == 10 and final["test_split"] == "val"


def test_no_validation_split_as_in_the_paper_profile(processed_root, tmp_path):
    cfg = tiny_cfg(processed_root, "ln", 0, "data.val_size=0", "trainer.max_epochs=1")
    run = _write_config(cfg, tmp_path / "ln" / "seed0")
    record = train(cfg, run)
    assert record["status"] == "ok" and record["split_sizes"]["val"] == 0
    metrics = pd.read_csv(run / "metrics.csv")
    assert metrics["val_top1"].isna().all() and metrics["train_loss"].notna().all()
    assert cxeval.evaluate(run)["status"] == "ok"


def test_bench_writes_both_throughputs_and_their_ratio(tmp_path):
    from normrepro.tasks.image_classification import bench as cxbench

    out = tmp_path / "bench" / "convnext.json"
    assert cxbench.main(["--repl", str(REPL), "--profile", "smoke", "--warmup", "1", "--steps",
                         "2", "--repeats", "2", "--set", "model.kwargs=" + json.dumps(TINY),
                         "--set", "data.batch_size=8", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["arms"]) == {"bn", "ln"} and result["batch_size"] == 8
    for arm in result["arms"].values():
        assert len(arm["bare_runs"]) == len(arm["lightning_runs"]) == 2
        assert arm["ratio"] == pytest.approx(arm["lightning_images_per_s"] / arm["bare_images_per_s"])
        assert all(v > 0 for v in arm["bare_runs"] + arm["lightning_runs"])
    assert result["meets_target"] == (result["min_ratio"] >= result["target_ratio"])
    rel = result["relative_to_ln"]
    assert rel["ln"] == 1.0 and rel["bn"] == pytest.approx(
        result["arms"]["bn"]["lightning_images_per_s"] / result["arms"]["ln"]["lightning_images_per_s"])
    assert result["bn_meets_target"] == (rel["bn"] >= result["bn_target_relative_to_ln"])
    assert result["env"]["hardware"]["cpu_count"]

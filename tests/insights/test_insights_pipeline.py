"""The insights pipeline (issue 5): unmasked BN, the padding and DDP measurements, the recorded
training runs, the stage CLIs and the report, on tiny synthetic data.

The unmasked norm is registered only while a test runs (the `registry` fixture restores the
registry), so the rest of the suite sees the registry as the library defines it.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from normrepro import datacheck, norms
from normrepro.config import dump, load_profile
from normrepro.insights import ddp as ins_ddp
from normrepro.insights import padding as ins_pad
from normrepro.insights import report as ins_report
from normrepro.insights import runs as ins_runs

ROOT = Path(__file__).resolve().parents[2]
REPL = ROOT / "replications" / "insights"
PROFILES = sorted(p.stem for p in (REPL / "profiles").glob("*.yaml"))
TINY_CONVNEXT = {"depths": [1, 1, 1, 1], "dims": [8, 8, 16, 16]}


# ------------------------------------------------------------------------ unmasked BatchNorm

def _padded(seed=0, T=5, B=3, C=4):
    g = torch.Generator().manual_seed(seed)
    x = 2.0 + torch.randn(T, B, C, generator=g, dtype=torch.float64)
    lengths = torch.tensor([5, 3, 2])
    mask = torch.arange(T)[None, :] >= lengths[:, None]  # (B, T), True at padding
    return x, mask


def test_unmasked_bn_counts_padding_and_masked_does_not():
    assert ins_pad.UNMASKED in norms.NORM_NAMES and norms.is_sequence_norm(ins_pad.UNMASKED)
    x, mask = _padded()
    T, B, C = x.shape
    unmasked = norms.create_norm(ins_pad.UNMASKED, C).double().train()
    masked = norms.create_norm("batch", C).double().train()
    real = (~mask).t()  # (T, B)
    y_u, y_m = unmasked(x, pad_mask=mask).detach(), masked(x, pad_mask=mask).detach()
    flat = x.reshape(T * B, C)
    want_u = (x - flat.mean(0)) / torch.sqrt(flat.var(0, unbiased=False) + 1e-5)
    xr = x[real]
    want_m = (xr - xr.mean(0)) / torch.sqrt(xr.var(0, unbiased=False) + 1e-5)
    torch.testing.assert_close(y_u, want_u)  # every position, padding included
    torch.testing.assert_close(y_m[real], want_m)
    assert float((y_u[real] - y_m[real]).abs().max()) > 1e-3
    # changing only the padding changes unmasked outputs at real tokens, never masked ones
    x2 = x.clone()
    x2[~real] = 50.0
    assert float((unmasked(x2, pad_mask=mask).detach()[real] - y_u[real]).abs().max()) > 1e-2
    torch.testing.assert_close(masked(x2, pad_mask=mask).detach()[real], y_m[real])
    # the running mean follows all positions
    fresh = norms.create_norm(ins_pad.UNMASKED, C, momentum=1.0).double().train()
    fresh(x, pad_mask=mask)
    torch.testing.assert_close(fresh.running_mean, flat.mean(0))


def test_compare_statistics_by_hand():
    x, mask = _padded(1)
    real = (~mask).t()
    x = x * real.unsqueeze(-1)  # fairseq zeroes the padded embeddings
    s = ins_pad.compare_statistics(x, mask)
    p = 1 - int(real.sum()) / real.numel()
    xr = x[real]
    mu, var = xr.mean(0), xr.var(0, unbiased=False)
    # with zeros at padding: μ_all = (1-p)μ, σ²_all = (1-p)σ² + p(1-p)μ²
    mu_a, var_a = (1 - p) * mu, (1 - p) * var + p * (1 - p) * mu ** 2
    assert s["pad_frac"] == pytest.approx(p)
    assert s["mu_dist"] == pytest.approx(float((mu_a - mu).norm()) / 4)
    assert s["var_dist"] == pytest.approx(float((var_a - var).norm()) / 4)
    assert s["mu_shift_sd"] == pytest.approx(float(((mu_a - mu).abs() / torch.sqrt(var + 1e-5)).mean()))
    assert s["out_change"] > 0
    none = ins_pad.compare_statistics(x, None)
    assert none["pad_frac"] == 0 and none["mu_dist"] == 0 and none["out_change"] == 0


def test_bin_rows_medians_per_bin():
    rows = pd.DataFrame({"kind": ["bucketed", "random", "random", "bucketed"], "layer": ["a"] * 4,
                         "norm_index": [0] * 4, "pad_frac": [0.01, 0.3, 0.35, 1.0],
                         **{m: [1.0, 2.0, 4.0, 8.0] for m in ins_pad.METRICS}})
    bins = ins_pad.bin_rows(rows, [0, 0.1, 0.5, 1.0])
    assert list(bins["batches"]) == [1, 2, 1]  # 1.0 falls in the last bin
    assert list(bins["mu_dist"]) == [1.0, 3.0, 8.0]
    assert list(bins["n_random"]) == [0, 2, 0]
    with pytest.raises(ValueError, match="increasing"):
        ins_pad.bin_rows(rows, [0.5, 0.1])
    with pytest.raises(ValueError, match="outside the bins"):
        ins_pad.bin_rows(rows, [0.0, 0.5])


# ------------------------------------------------------------------------ DDP statistics

def test_worker_vs_global_matches_the_concatenated_batch():
    g = torch.Generator().manual_seed(0)
    parts = [torch.randn(6, 3, generator=g, dtype=torch.float64) + k for k in range(2)]
    moments = [ins_ddp._local_moments(p.unsqueeze(1), None) for p in parts]  # (T=6, B=1, C=3)
    n = torch.tensor([m[0] for m in moments], dtype=torch.float64)
    mean = torch.stack([m[1] for m in moments])
    m2 = torch.stack([m[2] for m in moments])
    out = ins_ddp.worker_vs_global(n, mean, m2)
    allx = torch.cat(parts)
    g_mean, g_var = allx.mean(0), allx.var(0, unbiased=False)
    for k, part in enumerate(parts):
        assert out[k]["n"] == 6
        assert out[k]["mu_dist"] == pytest.approx(float((part.mean(0) - g_mean).norm()) / 3)
        assert out[k]["var_dist"] == pytest.approx(float((part.var(0, unbiased=False) - g_var).norm()) / 3)
        assert out[k]["mu_shift_sd"] == pytest.approx(
            float(((part.mean(0) - g_mean).abs() / torch.sqrt(g_var + 1e-5)).mean()))


def _gather_worker(rank: int, world: int, out: str) -> None:
    """One BN layer per process with the callback's hook; rank r's batch is shifted by r."""
    cb = ins_ddp.WorkerStatsCallback(Path(out) / "unused.csv")
    bn = norms.create_norm("batch2d", 3).train()
    bn.register_forward_pre_hook(cb._hook("bn"), with_kwargs=True)
    cb._meta = {"step": 0, "epoch": 0, "pct_training": 50.0}
    g = torch.Generator().manual_seed(rank)
    bn(torch.randn(4, 3, 2, 2, generator=g) + 3.0 * rank)
    if rank == 0:
        pd.DataFrame(cb.rows).to_csv(Path(out) / "rows.csv", index=False)
    else:
        assert cb.rows == []


def test_worker_stats_hook_gathers_both_workers(tmp_path):
    from normrepro.insights.distributed import spawn_group

    spawn_group(_gather_worker, 2, str(tmp_path))
    rows = pd.read_csv(tmp_path / "rows.csv")
    assert list(rows["worker"]) == [0, 1] and (rows["world_size"] == 2).all()
    assert (rows["n"] == 16).all()
    # the two workers' means sit symmetrically around the global mean, 1.5 apart from it
    assert rows["mu_dist"].iloc[0] == pytest.approx(rows["mu_dist"].iloc[1], rel=1e-6)
    assert rows["mu_shift_sd"].min() > 0.5


# ------------------------------------------------------------------------ configs

@pytest.mark.parametrize("profile", PROFILES)
def test_every_run_of_every_profile_resolves(profile):
    from normrepro.tasks.image_classification.run_config import check_config

    prof = load_profile(REPL, profile)
    assert set(prof["runs"]) == {"image-bn", "text-bn", "text-pn_v", "text-bn_unmasked", "ddp-bn",
                                 "ddp-bn_sync"}
    for run in prof["runs"]:
        cfg = ins_runs.resolve_run(profile, run, REPL)
        assert cfg["insights"]["run"] == run
        if cfg["replication"] == "convnext":
            check_config(cfg, run)
        else:
            assert cfg["model"]["encoder_norm"] in ("batch", "power_vanilla", "batch_unmasked")
    masked = ins_runs.resolve_run(profile, "text-bn", REPL)
    unmasked = ins_runs.resolve_run(profile, "text-bn_unmasked", REPL)
    assert unmasked["model"]["encoder_norm"] == "batch_unmasked"
    unmasked["model"]["encoder_norm"] = "batch"
    assert {k: v for k, v in unmasked.items() if k != "insights"} == \
        {k: v for k, v in masked.items() if k != "insights"}  # the padding arms differ in the norm only
    for run in ("ddp-bn", "ddp-bn_sync"):
        t = ins_runs.resolve_run(profile, run, REPL)["trainer"]
        assert (t["devices"], t["strategy"], t["accelerator"]) == (2, "ddp", "cpu")
    for stage in ("causal", "axes", "sync_cost", "padding"):
        ins_runs.stage_args(profile, stage, REPL)


def test_resolve_cli_writes_only_when_changed(tmp_path):
    out = tmp_path / "config.yaml"
    args = ["resolve", "--profile", "smoke", "--run", "text-bn", "--out", str(out), "--repl-dir", str(REPL)]
    assert ins_runs.main(args) == 0
    mtime = out.stat().st_mtime_ns
    assert ins_runs.main(args) == 0 and out.stat().st_mtime_ns == mtime
    assert ins_runs.main(["resolve", "--profile", "smoke", "--run", "nope", "--out", str(out),
                          "--repl-dir", str(REPL)]) == 2


# ------------------------------------------------------------------------ recorded trainings

def _tiny_text_data(root: Path) -> Path:
    from normrepro.tasks.translation import prepare

    words = [("haus", "house"), ("ist", "is"), ("gross", "big"), ("klein", "small"), ("das", "the"),
             ("hund", "dog"), ("katze", "cat"), ("und", "and"), ("rot", "red"), ("baum", "tree")]
    out = root / "tiny-de-en"
    out.mkdir(parents=True)
    for split, n, seed in (("train", 40, 0), ("valid", 6, 1), ("test", 6, 2)):
        rng = random.Random(seed)
        pairs = [[words[rng.randrange(len(words))] for _ in range(rng.randint(2, 9))] for _ in range(n)]
        de = [" ".join(w[0] for w in p) for p in pairs]
        en = [" ".join(w[1] for w in p) for p in pairs]
        prepare._write_split(out, split, de, en, de, en)
    prepare._bpe_and_binarize(out, prepare.SPLITS, 30, None, workers=1)
    (out / "MANIFEST.json").write_text(json.dumps({
        "dataset": "tiny", "files": datacheck.file_entries(out, datacheck.list_files(out))}))
    return out


@pytest.fixture(scope="module")
def text_data(tmp_path_factory) -> Path:
    return _tiny_text_data(tmp_path_factory.mktemp("text"))


def _text_cfg(run: str, updates: int = 6) -> dict:
    cfg = ins_runs.resolve_run("smoke", run, REPL)
    cfg["model"].update(encoder_embed_dim=8, decoder_embed_dim=8, encoder_ffn_embed_dim=16,
                        decoder_ffn_embed_dim=16)
    cfg["data"]["max_tokens"] = 60
    cfg["optim"].update(warmup_updates=2)
    cfg["trainer"].update(max_updates=updates, val_every_updates=3, keep_snapshots=1,
                          resume_every_updates=3)
    cfg["val_bleu"] = {"sentences": 2, "beam": 1}
    return cfg


def _write(cfg: dict, run: Path) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(dump(cfg))
    return run / "config.yaml"


@pytest.fixture(scope="module")
def text_runs(text_data, tmp_path_factory) -> dict[str, Path]:
    """The masked and the unmasked text run, trained for a few updates with the recorder."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for run in ("text-bn", "text-bn_unmasked"):
        folder = root / run
        ins_runs.train_run(_write(_text_cfg(run), folder), folder, text_data)
        out[run] = folder
    return out


def test_text_runs_record_batch_statistics(text_runs):
    for run, norm in (("text-bn", "MaskedBatchNorm"), ("text-bn_unmasked", "UnmaskedBatchNorm")):
        folder = text_runs[run]
        record = json.loads((folder / "record.json").read_text())
        assert record["status"] == "ok" and record["steps"] == 6
        stats = pd.read_csv(folder / "batch_stats.csv")
        assert list(stats["step"]) == list(range(6))
        assert (stats["norm"] == norm).all()
        assert (stats["layer"] == "model.encoder.layers.0.self_attn_layer_norm").all()
        assert stats[["mu_dist", "var_dist", "g_mu", "g_var"]].notna().all().all()
        assert (folder / "env.json").is_file() and (folder / "metrics.csv").is_file()
    # the unmasked layer counts every position: never fewer elements than the masked one
    n_m = pd.read_csv(text_runs["text-bn"] / "batch_stats.csv")["n"]
    n_u = pd.read_csv(text_runs["text-bn_unmasked"] / "batch_stats.csv")["n"]
    assert (n_u >= n_m).all() and (n_u > n_m).any()


def test_padding_cli_writes_csvs_and_figure(text_runs, text_data, tmp_path):
    ins_pad.main(["--masked-run", str(text_runs["text-bn"]), "--unmasked-run",
                  str(text_runs["text-bn_unmasked"]), "--data", str(text_data), "--out",
                  str(tmp_path), "--batches", "3"])
    rows = pd.read_csv(tmp_path / "padding_batches.csv")
    assert set(rows["kind"]) == {"bucketed", "random"}
    assert rows["layer"].iloc[0] == "encoder.layers.0.self_attn_layer_norm"
    assert (rows.loc[rows["pad_frac"] == 0, "mu_dist"] == 0).all()
    assert (rows.loc[rows["pad_frac"] > 0, "out_change"] > 0).all()
    bins = pd.read_csv(tmp_path / "padding_bins.csv")
    assert bins["batches"].sum() == len(rows)
    training = pd.read_csv(tmp_path / "padding_training.csv")
    assert list(training["encoder_norm"]) == ["batch", "batch_unmasked"]
    assert (tmp_path / "padding.png").stat().st_size > 0 and (tmp_path / "padding.pdf").is_file()
    with pytest.raises(SystemExit, match="masked"):
        ins_pad.main(["--masked-run", str(text_runs["text-bn_unmasked"]), "--unmasked-run",
                      str(text_runs["text-bn"]), "--data", str(text_data), "--out", str(tmp_path)])


def _tiny_images(root: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    folder = root / "fashion-mnist"
    folder.mkdir(parents=True)

    def images(n):
        labels = torch.arange(n) % 10
        return torch.randint(0, 255, (n, 1, 32, 32), generator=g, dtype=torch.uint8), labels

    (xtr, ytr), (xte, yte) = images(48), images(16)
    torch.save({"train_images": xtr, "train_labels": ytr, "test_images": xte, "test_labels": yte},
               folder / "fashion-mnist.pt")
    (folder / "prepared.json").write_text(json.dumps({
        "dataset": "fashion-mnist", "num_classes": 10, "in_chans": 1, "image_size": 32,
        "backend": "tensor", "tensor_file": "fashion-mnist.pt", "n_train": 48, "n_test": 16,
        "mean": [0.5], "std": [0.3],
        "files": datacheck.file_entries(folder, ["fashion-mnist.pt"])}))
    return root


def test_image_run_records_the_stem_bn(tmp_path):
    processed = _tiny_images(tmp_path / "processed")
    cfg = ins_runs.resolve_run("smoke", "image-bn", REPL)
    cfg["data"].update(processed_root=str(processed), val_size=16, train_subset=None,
                       test_subset=None, batch_size=16)
    cfg["model"]["kwargs"] = TINY_CONVNEXT
    cfg["trainer"].update(max_epochs=1, print_epochs=False)
    folder = tmp_path / "image-bn"
    record = ins_runs.train_run(_write(cfg, folder), folder)
    assert record["status"] == "ok" and record["steps"] == 2  # 32 images, batch 16
    stats = pd.read_csv(folder / "batch_stats.csv")
    assert list(stats["layer"]) == ["model.stem.1"] * 2
    assert stats[["mu_dist", "var_dist", "g_mu", "g_var"]].notna().all().all()


# ------------------------------------------------------------------------ DDP summary CLI

def _fake_ddp_run(folder: Path, norm: str, top1: float, shift: float) -> None:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"model": {"norm": norm},
                                                        "data": {"batch_size": 16}}))
    (folder / "final.json").write_text(json.dumps({"status": "ok", "test_top1": top1, "test_loss": 1.0,
                                                   "n_test": 100, "val_top1": top1 - 1}))
    (folder / "env.json").write_text(json.dumps({"train": {"world_size": 2, "effective_batch": 32,
                                                           "epochs_completed": 2, "train_time_s": 9}}))
    pd.DataFrame({"epoch": [1, 2], "train_images_per_s": [50.0, 100.0]}).to_csv(folder / "metrics.csv")
    pd.DataFrame({"step": [0, 0, 0, 0], "layer": ["a", "a", "b", "b"], "worker": [0, 1, 0, 1],
                  **{s: [shift] * 4 for s in ins_ddp.WORKER_STATS}}).to_csv(folder / "worker_stats.csv")


def _fake_sync_cost(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([{"case": "images (B=16, C=64, 16x16)", "norm": "sync_batch2d",
                   "collectives_per_step": 2, "floats_per_step": 386, "plain_ms": 1.0, "local_ms": 2.0,
                   "sync_ms": 3.0, "overhead_ms": 1.0, "overhead_pct": 50.0, "allreduce_ms": 0.5,
                   "world_size": 2}]).to_csv(path, index=False)


def test_ddp_cli_summarizes_runs(tmp_path):
    _fake_ddp_run(tmp_path / "a", "batch2d", 80.0, 0.2)
    _fake_ddp_run(tmp_path / "b", "sync_batch2d", 81.0, 0.3)
    _fake_sync_cost(tmp_path / "sync_cost.csv")
    ins_ddp.main(["--run", f"per-worker BN={tmp_path / 'a'}", "--run", f"synchronised BN={tmp_path / 'b'}",
                  "--sync-cost", str(tmp_path / "sync_cost.csv"), "--out", str(tmp_path / "out")])
    summary = pd.read_csv(tmp_path / "out" / "ddp.csv")
    assert list(summary["test_top1"]) == [80.0, 81.0]
    assert list(summary["train_images_per_s"]) == [100.0, 100.0]  # the first epoch is left out
    assert list(summary["worker_mu_shift_sd"]) == pytest.approx([0.2, 0.3])
    assert list(summary["bn_layers"]) == [2, 2]
    assert (tmp_path / "out" / "ddp.png").is_file() and (tmp_path / "out" / "ddp_layers.csv").is_file()


# ------------------------------------------------------------------------ report

def _hand_made_results(root: Path, text_mu: float) -> Path:
    res = root / "insights"
    png = b"\x89PNG\r\n\x1a\n"
    for stem in ("fluctuation/fluctuation", "padding/padding", "causal/causal", "axes/cubes",
                 "ddp/ddp", "sync_cost/sync_cost"):
        (res / stem).parent.mkdir(parents=True, exist_ok=True)
        (res / f"{stem}.png").write_bytes(png)
    rows = []
    for label, stats in (("images: ConvNeXt BN", {"mu_dist": 0.001, "var_dist": 0.002, "g_mu": 1e-8, "g_var": 1e-6}),
                         ("text: Transformer BN", {"mu_dist": text_mu, "var_dist": 0.05, "g_mu": 1e-5, "g_var": 1e-5}),
                         ("text: Transformer PN-V", {"psi_dist": 0.03, "g_psi": 1e-5})):
        for stat, v in stats.items():
            rows.append({"label": label, "statistic": stat, "steps": 10, "median": v, "mean": v,
                         "median_first_10pct": v, "median_last_10pct": v})
    pd.DataFrame(rows).to_csv(res / "fluctuation" / "fluctuation_summary.csv", index=False)
    pd.DataFrame([{"layer": "encoder.layers.0.self_attn_layer_norm", "norm_index": 0, "bin_lo": lo,
                   "bin_hi": hi, "batches": 2, "pad_frac_mean": (lo + hi) / 2, "n_bucketed": 1,
                   "n_random": 1, "mu_dist": 0.1, "var_dist": 0.1, "mu_shift_sd": s,
                   "var_rel_change": 2 * s, "out_change": 2 * s}
                  for lo, hi, s in ((0.0, 0.1, 0.0123), (0.3, 0.4, 0.456))]).to_csv(
        res / "padding" / "padding_bins.csv", index=False)
    pd.DataFrame([{"kind": k, "batch": 0, "norm_index": 0, "layer": "l", "pad_frac": p,
                   "mu_shift_sd": s, "var_rel_change": s, "out_change": s}
                  for k, p, s in (("bucketed", 0.04, 0.01), ("random", 0.3, 0.2))]).to_csv(
        res / "padding" / "padding_batches.csv", index=False)
    pd.DataFrame([{"run": "masked BN (batch)", "encoder_norm": "batch", "updates": 40, "best_val_loss": 5.0,
                   "last_val_loss": 5.0, "last_val_bleu": 1.5, "val_bleu_sentences": 20},
                  {"run": "unmasked BN (batch_unmasked)", "encoder_norm": "batch_unmasked", "updates": 40,
                   "best_val_loss": 5.25, "last_val_loss": 5.25, "last_val_bleu": 1.0,
                   "val_bleu_sentences": 20}]).to_csv(res / "padding" / "padding_training.csv", index=False)
    causal = []
    for case, v in (("layer", 0.0), ("batch", 0.25)):
        causal.append({"level": "decoder", "case": case, "fwd_change": v, "grad_future": v,
                       "bwd_change": v, "train_eval": v, "train_vs_generation": v})
    pd.DataFrame(causal).to_csv(res / "causal" / "causal.csv", index=False)
    pd.DataFrame([{"norm": "layer", "layout": "sequence", "reduced_over": "C",
                   "one_statistic_per": "B, T"}]).to_csv(res / "axes" / "axes.csv", index=False)
    (res / "axes" / "answer.md").write_text("# Is transformer LayerNorm instance norm?\n\n**No.** Because.\n")
    pd.DataFrame([{"run": "per-worker BN", "norm": "batch2d", "world_size": 2, "batch_per_worker": 16,
                   "effective_batch": 32, "epochs": 2, "test_top1": 80.0, "val_top1": 79.0,
                   "train_images_per_s": 100.0, "worker_mu_shift_sd": 0.0789, "worker_var_rel_change": 0.1},
                  {"run": "synchronised BN", "norm": "sync_batch2d", "world_size": 2, "batch_per_worker": 16,
                   "effective_batch": 32, "epochs": 2, "test_top1": 81.5, "val_top1": 80.0,
                   "train_images_per_s": 90.0, "worker_mu_shift_sd": 0.08, "worker_var_rel_change": 0.1}]
                 ).to_csv(res / "ddp" / "ddp.csv", index=False)
    _fake_sync_cost(res / "sync_cost" / "sync_cost.csv")
    (res / "causal" / "args.txt").write_text("--T 8 --B 4\n")
    return res


def test_report_renders_the_numbers_of_hand_made_csvs(tmp_path):
    res = _hand_made_results(tmp_path, text_mu=0.1)
    out = res / "report.md"
    assert ins_report.main(["report", "--results", str(res), "--profile", "smoke", "--out", str(out)]) == 0
    text = out.read_text()
    for heading in ("## 1.", "## 2.", "## 3.", "## 4.", "## 5."):
        assert heading in text
    assert "100× larger" in text  # text/image mean distance 0.1 / 0.001
    assert "25× larger" in text  # variance 0.05 / 0.002: both larger, as in the paper
    assert "This is the PowerNorm paper's observation" in text
    assert "0.0123 σ" in text and "0.456 σ" in text and "4.0 %" in text and "30.0 %" in text
    assert "0.25 higher than masked BN" in text and "20× smaller than random grouping" in text
    assert "exactly 0" in text and "`layer`" in text and "With `batch` it does" in text
    assert "**No.** Because." in text
    assert "80.00 % to 81.50 %" in text and "+1.50 points" in text and "0.0789 σ" in text
    assert "python -m normrepro.insights.causal --out " + str(res / "causal") + " --T 8 --B 4" in text
    assert "make replicate-insights PROFILE=smoke" in text
    assert "![batch vs running statistics" in text and "(fluctuation/fluctuation.png)" in text
    # when the text statistics are not larger, the answer says so instead of echoing the paper
    res2 = _hand_made_results(tmp_path / "other", text_mu=0.0005)
    text2 = ins_report.build_report(res2, res2 / "report.md", "cpu")
    assert "2× smaller" in text2 and "does not show the paper's gap" in text2


def test_report_names_a_missing_stage(tmp_path):
    res = _hand_made_results(tmp_path, text_mu=0.1)
    (res / "ddp" / "ddp.csv").unlink()
    assert ins_report.main(["report", "--results", str(res), "--out", str(res / "report.md")]) == 2
    assert not (res / "report.md").exists()

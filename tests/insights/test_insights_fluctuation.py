"""Batch-statistic recording: the numbers each norm records (against hand computations and
autograd on the explicit formulas), that recording changes nothing else and is off by default,
layer selection, and the Lightning callback's CSV (including a resumed fit)."""

from __future__ import annotations

import copy

import lightning as L
import pandas as pd
import pytest
import torch
from torch import nn

from normrepro import norms
from normrepro.insights.fluctuation import (BatchStatsRecorder, StatsRecorderCallback,
                                            load_records, main, select_layers, summarize)
from normrepro.norms import create_norm

EPS = 1e-5


def _explicit_grads(x, weight, bias, gy, stat_a, stat_b, formula):
    """∂L/∂(stat) for L = Σ gy·y, with the statistics as independent leaves of `formula`."""
    a = stat_a.detach().clone().requires_grad_(True)
    b = None if stat_b is None else stat_b.detach().clone().requires_grad_(True)
    y = formula(x.detach(), a, b, weight.detach(), bias.detach())
    (y * gy).sum().backward()
    return a.grad, (None if b is None else b.grad)


def test_masked_batchnorm_records_hand_computed_statistics():
    # T=3, B=2, C=2, with the second sentence's last two tokens padding
    x = torch.tensor([[[1.0, 2.0], [3.0, -1.0]],
                      [[2.0, 0.0], [9.0, 9.0]],
                      [[6.0, 4.0], [9.0, 9.0]]], dtype=torch.float64)
    mask = torch.tensor([[False, False, False], [False, True, True]])
    gy = torch.tensor([[[1.0, 0.5], [-2.0, 1.0]],
                       [[0.0, 1.0], [7.0, 7.0]],
                       [[3.0, -1.0], [7.0, 7.0]]], dtype=torch.float64)
    norm = create_norm("batch", 2, eps=EPS).double().train()
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([2.0, 0.5]))
        norm.bias.copy_(torch.tensor([0.1, -0.3]))
        norm.running_mean.copy_(torch.tensor([1.0, 1.0]))
        norm.running_var.copy_(torch.tensor([2.0, 4.0]))
    fused = copy.deepcopy(norm)
    norm.record_stats = True
    xr = x.clone().requires_grad_(True)
    y = norm(xr, pad_mask=mask)
    y.backward(gy)
    # real tokens: channel 0 -> 1, 3, 2, 6 ; channel 1 -> 2, -1, 0, 4
    mean = torch.tensor([3.0, 1.25], dtype=torch.float64)
    var = torch.tensor([(4 + 0 + 1 + 9) / 4, (0.5625 + 5.0625 + 1.5625 + 7.5625) / 4],
                       dtype=torch.float64)
    rec = norm.last_stats
    assert float(rec["n"]) == 4
    assert float(rec["mu_dist"]) == pytest.approx(((2.0 ** 2 + 0.25 ** 2) ** 0.5) / 2)
    assert float(rec["var_dist"]) == pytest.approx(float((var - torch.tensor([2.0, 4.0])).norm()) / 2)
    # backward: gradients w.r.t. μ_B and σ²_B from the explicit formula, real tokens only
    real = ~mask.t()
    xs, gs = x[real], gy[real]

    def bn(x, mu, var, w, b):
        return w * (x - mu) / torch.sqrt(var + EPS) + b

    g_mu, g_var = _explicit_grads(xs, norm.weight, norm.bias, gs, mean, var, bn)
    assert float(rec["g_mu"]) == pytest.approx(float(g_mu.norm()) / 2, rel=1e-9)
    assert float(rec["g_var"]) == pytest.approx(float(g_var.norm()) / 2, rel=1e-9)
    # recording changes nothing else: output, gradients and running stats as the fused path
    xf = x.clone().requires_grad_(True)
    yf = fused(xf, pad_mask=mask)
    yf.backward(gy)
    torch.testing.assert_close(y, yf)
    torch.testing.assert_close(xr.grad, xf.grad)
    torch.testing.assert_close(norm.weight.grad, fused.weight.grad)
    torch.testing.assert_close(norm.bias.grad, fused.bias.grad)
    for k, v in fused.named_buffers():
        torch.testing.assert_close(dict(norm.named_buffers())[k], v)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_batchnorm2d_records_and_matches_torch(momentum):
    torch.manual_seed(0)
    C = 3
    x = 1.5 + 2 * torch.randn(4, C, 2, 3, dtype=torch.float64)
    gy = torch.randn(4, C, 2, 3, dtype=torch.float64)
    norm = create_norm("batch2d", C, momentum=momentum).double().train()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-1, 1)
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.5, 2)
    plain = copy.deepcopy(norm)
    rm0, rv0 = norm.running_mean.clone(), norm.running_var.clone()
    norm.record_stats = True
    for step in range(2):  # the second step checks the cumulative average of momentum=None
        xr, xp = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        norm.zero_grad(), plain.zero_grad()
        y, yp = norm(xr), plain(xp)
        y.backward(gy), yp.backward(gy)
        torch.testing.assert_close(y, yp)
        torch.testing.assert_close(xr.grad, xp.grad)
        torch.testing.assert_close(norm.weight.grad, plain.weight.grad)
        for k, v in plain.named_buffers():
            torch.testing.assert_close(dict(norm.named_buffers())[k], v, msg=k)
    # the records of the last step, by hand (before-update running stats = after step 1)
    mean = x.mean((0, 2, 3))
    var = x.var((0, 2, 3), unbiased=False)
    n = x.numel() // C
    # momentum=None is torch's cumulative average: step 1 replaces the running stats
    eaf = 1.0 if momentum is None else momentum
    rm1, rv1 = (1 - eaf) * rm0 + eaf * mean, (1 - eaf) * rv0 + eaf * var * n / (n - 1)
    rec = norm.last_stats
    assert float(rec["n"]) == n
    assert float(rec["mu_dist"]) == pytest.approx(float((mean - rm1).norm()) / C, rel=1e-9, abs=1e-12)
    assert float(rec["var_dist"]) == pytest.approx(float((var - rv1).norm()) / C, rel=1e-9)

    def bn(x, mu, var, w, b):
        return (w[:, None, None] * (x - mu[:, None, None]) / torch.sqrt(var[:, None, None] + EPS)
                + b[:, None, None])

    g_mu, g_var = _explicit_grads(x, norm.weight, norm.bias, gy, mean, var, bn)
    assert float(rec["g_mu"]) == pytest.approx(float(g_mu.norm()) / C, rel=1e-9)
    assert float(rec["g_var"]) == pytest.approx(float(g_var.norm()) / C, rel=1e-9)


def test_power_vanilla_records_hand_computed_statistics():
    x = torch.tensor([[[1.0, -2.0]], [[3.0, 1.0]], [[5.0, 5.0]]], dtype=torch.float64)  # T=3,B=1
    mask = torch.tensor([[False, False, True]])
    gy = torch.tensor([[[1.0, 2.0]], [[-1.0, 0.5]], [[4.0, 4.0]]], dtype=torch.float64)
    norm = create_norm("power_vanilla", 2, eps=EPS).double().train()
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.5, -0.5]))
        norm.running_phi.copy_(torch.tensor([2.0, 1.0]))
    norm.record_stats = True
    xr = x.clone().requires_grad_(True)
    norm(xr, pad_mask=mask).backward(gy)
    psi = torch.tensor([(1 + 9) / 2, (4 + 1) / 2], dtype=torch.float64)
    rec = norm.last_stats
    assert float(rec["n"]) == 2
    assert float(rec["psi_dist"]) == pytest.approx(float((psi - torch.tensor([2.0, 1.0])).norm()) / 2)

    def pn(x, psi, _unused, w, b):
        return w * x / torch.sqrt(psi + EPS) + b

    g_psi, _ = _explicit_grads(x[:2, 0], norm.weight, norm.bias, gy[:2, 0], psi, None, pn)
    assert float(rec["g_psi"]) == pytest.approx(float(g_psi.norm()) / 2, rel=1e-9)


@pytest.mark.parametrize("name", ["batch", "batch2d", "power_vanilla", "sync_batch", "sync_batch2d"])
def test_recording_is_off_by_default_and_uses_the_fused_path(name, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("the eager recording path ran with record_stats off")

    monkeypatch.setattr(norms.batch, "_bn_train_eager", forbidden)
    norm = create_norm(name, 4).train()
    assert norm.record_stats is False
    x = torch.randn(3, 2, 4) if name in norms.SEQUENCE_NORMS else torch.randn(2, 4, 3, 3)
    x.requires_grad_(True)
    norm(x).sum().backward()
    assert norm.last_stats == {}


def test_eval_forward_records_nothing():
    norm = create_norm("batch", 4).eval()
    norm.record_stats = True
    norm(torch.randn(3, 2, 4))
    assert norm.last_stats == {}


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = create_norm("batch2d", 4)
        self.proj = nn.Linear(4, 4)
        self.seq_norm = create_norm("batch", 4)
        self.ln = create_norm("layer", 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x))).mean((2, 3))  # (B, 4)
        seq = self.proj(h).unsqueeze(0).repeat(2, 1, 1)  # (T=2, B, 4)
        return self.head(self.ln(self.seq_norm(seq)).mean(0))


def test_layer_selection():
    net = _Net()
    assert list(select_layers(net)) == ["bn", "seq_norm"]
    assert list(select_layers(net, "seq_*")) == ["seq_norm"]
    assert list(select_layers(net, lambda n, m: n == "bn")) == ["bn"]
    with pytest.raises(ValueError, match="no recordable layer matches 'ln'.*bn, seq_norm"):
        select_layers(net, ["bn", "ln"])
    with pytest.raises(ValueError, match="no layer that records"):
        select_layers(nn.Sequential(create_norm("layer", 4)))


def test_recorder_collects_rows_for_enabled_steps_only():
    torch.manual_seed(0)
    net = _Net().train()
    rec = BatchStatsRecorder(net, ["bn", "seq_norm"])
    with rec:
        net(torch.randn(5, 1, 4, 4)).sum().backward()
        rows = rec.collect(step=0)
    assert [r["layer"] for r in rows] == ["bn", "seq_norm"]
    for r in rows:
        assert r["step"] == 0 and r["n"] > 0
        for k in ("mu_dist", "var_dist", "g_mu", "g_var"):
            assert r[k] > 0
        assert pd.isna(r["psi_dist"])
    net(torch.randn(5, 1, 4, 4)).sum().backward()  # recording off: nothing new
    assert rec.collect(step=1) == []


class _Module(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = _Net()

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        data = torch.utils.data.TensorDataset(torch.randn(24, 1, 4, 4, generator=g),
                                              torch.randint(0, 3, (24,), generator=g))
        return torch.utils.data.DataLoader(data, batch_size=6)


def _trainer(tmp_path, callback, max_steps):
    return L.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=False,
                     enable_progress_bar=False, enable_model_summary=False,
                     default_root_dir=tmp_path, callbacks=[callback],
                     enable_checkpointing=False)


def test_callback_writes_csv_with_steps_and_pct_of_training_and_resumes(tmp_path):
    torch.manual_seed(0)
    out = tmp_path / "stats.csv"
    module = _Module()
    trainer = _trainer(tmp_path, StatsRecorderCallback(out, "*bn", every_n_steps=2), 6)
    trainer.fit(module)
    df = pd.read_csv(out)
    assert list(df["step"]) == [0, 2, 4]
    assert set(df["layer"]) == {"net.bn"}
    assert list(df["pct_training"]) == pytest.approx([100 / 6, 300 / 6, 500 / 6])
    assert (df[["n", "mu_dist", "var_dist", "g_mu", "g_var"]] > 0).all().all()
    assert df["psi_dist"].isna().all()
    # resume from a checkpoint at step 4 towards 8 steps: steps 0, 2 kept, 4 and 6 recorded
    ckpt = tmp_path / "mid.ckpt"
    torch.manual_seed(0)
    first = _trainer(tmp_path, StatsRecorderCallback(out, "*bn", every_n_steps=2), 4)
    first.fit(_Module())
    first.save_checkpoint(ckpt)
    before = pd.read_csv(out)
    again = _trainer(tmp_path, StatsRecorderCallback(out, "*bn", every_n_steps=2), 8)
    again.fit(_Module(), ckpt_path=ckpt)
    df = pd.read_csv(out)
    assert list(df["step"]) == [0, 2, 4, 6]
    pd.testing.assert_frame_equal(df.iloc[:2].reset_index(drop=True),
                                  before.iloc[:2].reset_index(drop=True))
    assert list(df["pct_training"].iloc[2:]) == pytest.approx([500 / 8, 700 / 8])


def test_summary_and_plot_cli(tmp_path):
    rows = []
    for label, scale in (("images", 0.01), ("text", 1.0)):
        for step in range(20):
            rows.append({"step": step, "pct_training": 5.0 * (step + 1), "layer": "l",
                         "mu_dist": scale * (1 + step % 3), "g_mu": scale, "label": label})
    for label in ("images", "text"):
        pd.DataFrame([r for r in rows if r["label"] == label]).drop(columns="label").to_csv(
            tmp_path / f"{label}.csv", index=False)
    summary = summarize(load_records({"images": tmp_path / "images.csv",
                                      "text": tmp_path / "text.csv"}))
    med = summary.set_index(["label", "statistic"])["median"]
    assert med["text", "mu_dist"] == pytest.approx(2.0) and med["images", "mu_dist"] == pytest.approx(0.02)
    main(["--csv", f"images={tmp_path / 'images.csv'}", "--csv", f"text={tmp_path / 'text.csv'}",
          "--out", str(tmp_path / "out")])
    for f in ("fluctuation.png", "fluctuation.pdf", "fluctuation_summary.csv"):
        assert (tmp_path / "out" / f).stat().st_size > 0
    with pytest.raises(SystemExit, match="LABEL=FILE"):
        main(["--csv", "nolabel", "--out", str(tmp_path)])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("name", ["batch", "batch2d", "power_vanilla", "sync_batch2d"])
def test_recording_on_cuda_matches_cpu_and_runs_under_bf16_autocast(name):
    torch.manual_seed(0)
    seq = name in norms.SEQUENCE_NORMS
    x = 1 + torch.randn(5, 3, 6, dtype=torch.float64) if seq else \
        1 + torch.randn(3, 6, 4, 4, dtype=torch.float64)
    gy = torch.randn_like(x)
    records, outputs = [], []
    for device in ("cpu", "cuda"):
        norm = create_norm(name, 6).double().train().to(device)
        norm.record_stats = True
        xr = x.to(device).clone().requires_grad_(True)
        y = norm(xr)
        y.backward(gy.to(device))
        records.append({k: float(v) for k, v in norm.last_stats.items()})
        outputs.append((y.detach().cpu(), xr.grad.cpu()))
    assert records[0].keys() == records[1].keys() and len(records[0]) >= 3  # n + 2 or 4
    for k in records[0]:
        assert records[1][k] == pytest.approx(records[0][k], rel=1e-9, abs=1e-12), k
    for a, b in zip(*outputs):
        torch.testing.assert_close(b, a)
    # bf16 autocast: statistics in float32, output in the input's dtype, finite records
    norm = create_norm(name, 6).cuda().train()
    norm.record_stats = True
    xb = x.float().cuda().requires_grad_(True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = norm(xb)
    y.float().sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(xb.grad).all()
    assert all(torch.isfinite(v).all() for v in norm.last_stats.values())

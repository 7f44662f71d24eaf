"""Tests of `make gpu-check` (normrepro.gpu_check) on a machine without a GPU: the no-GPU path,
the FLOP counting and MFU arithmetic, the synthetic fallback corpus, the JSON assembly, and (slow)
the whole command on CPU with the smoke profile through its tests-only `--allow-cpu` flag."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from normrepro import gpu_check
from normrepro.config import resolve

ROOT = Path(__file__).resolve().parents[2]
PN = ROOT / "replications" / "powernorm"


def test_without_a_gpu_it_says_so_in_one_line_and_writes_nothing(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    out = tmp_path / "bench" / "gpu.json"
    proc = subprocess.run([sys.executable, "-m", "normrepro.gpu_check", "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == gpu_check.no_gpu_message()
    assert not out.exists() and not out.parent.exists()


def test_no_gpu_path_in_process(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path / "gpu.json")]) == 0
    assert capsys.readouterr().out.strip().splitlines() == [gpu_check.no_gpu_message()]
    assert not (tmp_path / "gpu.json").exists()


@pytest.mark.parametrize("name, tflops", [
    ("NVIDIA H100 80GB HBM3", 989.5), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H200", 989.5),
    ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA A100-PCIE-40GB", 312.0), ("NVIDIA L4", 121.0),
    ("NVIDIA L40S", 362.05), ("NVIDIA A10", 125.0),
    ("NVIDIA A10G", None), ("NVIDIA H100 NVL", None), ("Tesla V100-SXM2-16GB", None), ("", None),
])
def test_peak_flops_table(name, tflops):
    peak, source = gpu_check.peak_bf16_flops(name)
    if tflops is None:
        assert peak is None and source is None
    else:
        assert peak == pytest.approx(tflops * 1e12) and "datasheet" in source


def test_mfu_arithmetic_and_unknowns():
    assert gpu_check.mfu(6e9, 1e4, 1e15) == pytest.approx(0.06)
    assert gpu_check.mfu(None, 1e4, 1e15) is None
    assert gpu_check.mfu(6e9, 1e4, None) is None


def test_flop_counter_counts_forward_and_backward_matmuls():
    torch.manual_seed(0)
    lin = torch.nn.Linear(16, 8, bias=False)
    x = torch.randn(32, 16)
    # forward 2·N·I·O; backward: the weight gradient, and the input's when it needs one
    assert gpu_check.count_step_flops(lambda: lin(x).sum()) == 4 * 32 * 16 * 8
    xg = x.clone().requires_grad_(True)
    assert gpu_check.count_step_flops(lambda: lin(xg).sum()) == 6 * 32 * 16 * 8


def _smoke_ln_cfg() -> dict:
    return gpu_check._bench_cfg(resolve(PN, "smoke", "ln", 1), 3)


def test_synthetic_corpus_trains_and_its_flops_per_token_are_plausible(tmp_path):
    cfg = _smoke_ln_cfg()
    data = gpu_check.write_synthetic_corpus(tmp_path / "syn", vocab=100, sentences=300)
    from normrepro.tasks.translation.datamodule import datamodule_from_config, load_dictionary

    dictionary = load_dictionary(data)
    assert len(dictionary) >= 100
    dm = datamodule_from_config(data, cfg)
    assert len(dm.dataset("train")) == 300 and len(dm.dataset("valid")) == 64
    flops = gpu_check.translation_flops(cfg, data, torch.device("cpu"))
    # Independent estimate: 6 FLOPs per weight of every linear layer per token it sees
    # (2 forward, 4 backward), decoder layers and the output projection per target token,
    # encoder layers per source token; attention scores add a little on top.
    from normrepro.tasks.translation.common import model_args
    from normrepro.tasks.translation.model import build_model

    model = build_model(model_args(cfg), dictionary, dictionary)

    def linear_weights(part):
        return sum(m.weight.numel() for m in part.modules() if isinstance(m, torch.nn.Linear))

    S, T = flops["source_tokens_in_step"], flops["target_tokens_in_step"]
    estimate = 6 * (linear_weights(model.decoder) + linear_weights(model.encoder) * S / T)
    assert estimate <= flops["flops_per_target_token"] <= 1.6 * estimate
    assert flops["flops_per_step"] == pytest.approx(
        flops["flops_per_target_token"] * flops["target_tokens_in_step"])


def test_translation_data_prefers_real_then_smoke(tmp_path):
    assert gpu_check.translation_data(PN, "gpu", tmp_path) == (None, "synthetic")
    smoke = tmp_path / "bible-de-en-smoke"
    (smoke / "bin").mkdir(parents=True)
    (smoke / "bin" / "dict.de.txt").write_text("a 1\n")
    (smoke / "MANIFEST.json").write_text("{}")
    assert gpu_check.translation_data(PN, "gpu", tmp_path) == (smoke, "smoke")
    real = tmp_path / "iwslt14"
    (real / "bin").mkdir(parents=True)
    (real / "bin" / "dict.de.txt").write_text("a 1\n")
    (real / "MANIFEST.json").write_text("{}")
    assert gpu_check.translation_data(PN, "gpu", tmp_path) == (real, "real")


def test_every_arm_is_every_arm_file():
    assert gpu_check.arms_of(PN) == sorted(p.stem for p in (PN / "arms").glob("*.yaml"))
    assert {"ln", "bn", "pn"} <= set(gpu_check.arms_of(PN))


def test_assemble_the_json():
    device = {"type": "cuda", "name": "NVIDIA H100 80GB HBM3"}
    translation = {"ln": {"target_tokens_per_s": 1e5, "peak_memory_gib": 3.0},
                   "pn": {"target_tokens_per_s": 8e4, "peak_memory_gib": 3.5}}
    flops = {"flops_per_target_token": 2e9}
    doc = gpu_check.assemble(device, {"bn": {"images_per_s": 5e3}}, translation, flops,
                             {"ratio": 1.02}, {"kind": "smoke"}, {"profile": "gpu"}, 120.0)
    peak = 989.5e12
    assert doc["translation"]["arms"]["ln"]["mfu"] == pytest.approx(2e9 * 1e5 / peak)
    assert doc["translation"]["arms"]["pn"]["mfu"] == pytest.approx(2e9 * 8e4 / peak)
    assert doc["translation"]["mfu_ln"] == doc["translation"]["arms"]["ln"]["mfu"]
    assert doc["translation"]["data"]["kind"] == "smoke" and doc["within_budget"]
    assert doc["convnext"]["arms"]["bn"]["images_per_s"] == 5e3
    json.dumps(doc)  # serialisable as is
    unknown = gpu_check.assemble({"type": "cuda", "name": "Some GPU"}, {}, translation, flops,
                                 None, {"kind": "real"}, {}, 400.0)
    assert unknown["translation"]["mfu_ln"] is None and not unknown["within_budget"]


@pytest.mark.slow
def test_whole_command_on_cpu_with_the_smoke_profile(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    data = gpu_check.write_synthetic_corpus(tmp_path / "syn", vocab=100, sentences=300)
    out = tmp_path / "gpu.json"
    rc = gpu_check.main(["--allow-cpu", "--profile", "smoke", "--warmup", "1", "--steps", "2",
                         "--convnext-arms", "ln", "--translation-arms", "ln", "bn",
                         "--data", str(data), "--out", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["convnext"]["arms"]["ln"]["images_per_s"] > 0
    assert set(doc["translation"]["arms"]) == {"ln", "bn"}
    assert all(r["target_tokens_per_s"] > 0 for r in doc["translation"]["arms"].values())
    assert doc["translation"]["data"]["kind"] == "given"
    assert doc["translation"]["flops"]["flops_per_target_token"] > 0
    assert doc["translation"]["lightning_vs_fairseq"]["fairseq_tokens_per_s"] > 0
    assert doc["translation"]["mfu_ln"] is None  # CPU: no peak figure

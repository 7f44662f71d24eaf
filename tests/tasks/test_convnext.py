"""Unit tests of the ConvNeXt replication: configs, norm swap, data, sampler, schedule.

Tiny and CPU-only: width-8 ConvNeXts, a few synthetic images. Training end to end (resume,
divergence, DDP, the pipeline's stages) is in test_convnext_train.py.
"""

from __future__ import annotations

import gzip
import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from normrepro.config import ConfigError, load_profile, resolve
from normrepro.tasks.image_classification import data as cxdata
from normrepro.tasks.image_classification.model import (build_model, count_buffers, count_parameters, norm_modules,
                                      param_groups)
from normrepro.tasks.image_classification.module import ConvNeXtClassifier, WarmupCosine, effective_batch, scaled_lr
from normrepro.tasks.image_classification.datamodule import ConvNeXtDataModule
from normrepro.tasks.image_classification.run_config import check_config
from normrepro.tasks.image_classification.train import trainer_kwargs

from data_fixtures import write_fashion_manifest

REPL = Path(__file__).resolve().parents[2] / "replications" / "convnext"
PROFILES = sorted(p.stem for p in (REPL / "profiles").glob("*.yaml"))
ARMS = sorted(p.stem for p in (REPL / "arms").glob("*.yaml"))
TINY = {"depths": [1, 1, 1, 1], "dims": [8, 8, 16, 16]}


def tiny_model_cfg(norm: str, **extra) -> dict:
    return {"variant": "convnext_atto", "norm": norm, "patch_size": 4, "drop_path_rate": 0.1,
            "kwargs": dict(TINY), **extra}


# ---------------------------------------------------------------- configs

def test_replication_folder_is_complete():
    assert set(PROFILES) >= {"smoke", "cpu", "gpu", "paper"}
    assert set(ARMS) == {"bn", "bn_sync", "ln"}
    for name in ("base.yaml", "paper.yaml", "README.md", "slurm/paper.sbatch"):
        assert (REPL / name).is_file(), name


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("arm", ARMS)
def test_every_config_resolves_and_instantiates(profile, arm):
    cfg = check_config(resolve(REPL, profile, arm, 0))
    spec = cxdata.dataset_spec(cfg["data"]["dataset"])
    model = build_model(cfg["model"], spec.num_classes, spec.in_chans)
    norms = norm_modules(model)
    expected = {"bn": "BatchNorm2d", "bn_sync": "SyncBatchNorm2d", "ln": "LayerNorm2d"}[arm]
    assert set(norms) == {expected}, norms
    kwargs = trainer_kwargs(cfg)
    assert kwargs["max_epochs"] == cfg["trainer"]["max_epochs"]
    assert kwargs["logger"] is False and kwargs["use_distributed_sampler"] is False
    dm = ConvNeXtDataModule(cfg["data"], cfg["seed"], cfg["data"]["batch_size"])
    assert dm.num_classes == spec.num_classes


def test_readme_quotes_the_numbers_of_paper_yaml():
    paper = yaml.safe_load((REPL / "paper.yaml").read_text())
    readme = (REPL / "README.md").read_text()
    r50 = paper["results"]["resnet50_regime"]["arms"]
    r200 = paper["results"]["resnet200_regime"]["arms"]
    assert (f"BN {r50['bn']['mean']:.2f} ± {r50['bn']['std']:.2f} → "
            f"LN {r50['ln']['mean']:.2f} ± {r50['ln']['std']:.2f}") in readme
    assert f"BN {r200['bn']['mean']:.2f} → LN {r200['ln']['mean']:.2f}" in readme


def test_arms_differ_only_in_the_norm():
    """The arm files change the norm only; a profile may add each arm's own lr (chosen on
    held-out data by the sweep) and nothing else."""
    for profile in ("smoke", "cpu", "gpu", "paper"):
        bn, ln = (resolve(REPL, profile, arm, 0) for arm in ("bn", "ln"))
        assert bn["model"]["norm"] != ln["model"]["norm"]
        for cfg in (bn, ln):
            cfg.pop("arm")
            cfg["model"].pop("norm")
            cfg["optim"].pop("lr")
        assert bn == ln, profile
        overrides = load_profile(REPL, profile).get("arm_overrides") or {}
        for arm, part in overrides.items():
            assert part == {"optim": {"lr": part["optim"]["lr"]}}, (profile, arm)


def test_paper_profile_effective_batch_is_4096():
    cfg = resolve(REPL, "paper", "ln", 0)
    t = cfg["trainer"]
    world = int(t["devices"]) * int(t["num_nodes"])
    assert effective_batch(cfg, world) == 4096
    assert scaled_lr(cfg, world) == pytest.approx(4e-3)


def test_missing_key_and_ema_are_rejected():
    cfg = resolve(REPL, "smoke", "ln", 0)
    del cfg["optim"]["base_lr"]
    with pytest.raises(ConfigError, match="optim.base_lr"):
        check_config(cfg)
    cfg = resolve(REPL, "smoke", "ln", 0, ["model.ema=true"])
    with pytest.raises(ConfigError, match="ema"):
        check_config(cfg)


def test_unknown_norm_names_the_config_key():
    with pytest.raises(ConfigError, match="model.norm"):
        build_model(tiny_model_cfg("no_such_norm"), 10, 1)


# ---------------------------------------------------------------- the norm swap

def test_norm_swap_replaces_every_norm_and_keeps_parameters():
    models = {arm: build_model(tiny_model_cfg(norm), 10, 3)
              for arm, norm in (("bn", "batch2d"), ("ln", "layer2d"))}
    bn_norms, ln_norms = norm_modules(models["bn"]), norm_modules(models["ln"])
    # No LayerNorm-type module anywhere in the BN arm (stem, downsampling, blocks, head) ...
    assert not any(isinstance(m, nn.LayerNorm) for m in models["bn"].modules())
    assert set(bn_norms) == {"BatchNorm2d"}
    # ... and no BatchNorm in the LN arm.
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in models["ln"].modules())
    assert set(ln_norms) == {"LayerNorm2d"}
    # Same norm positions: stem + 3 downsampling + 4 blocks + head.
    assert bn_norms["BatchNorm2d"] == ln_norms["LayerNorm2d"]
    assert len(bn_norms["BatchNorm2d"]) == 1 + 3 + 4 + 1
    assert {"stem.1", "head.norm"} <= set(bn_norms["BatchNorm2d"])
    # Same parameters; only BN's running statistics are extra buffers.
    assert count_parameters(models["bn"]) == count_parameters(models["ln"])
    assert [n for n, _ in models["bn"].named_parameters()] == \
           [n for n, _ in models["ln"].named_parameters()]
    bn_stats = sum(m.running_mean.numel() + m.running_var.numel() + m.num_batches_tracked.numel()
                   for m in models["bn"].modules() if isinstance(m, nn.BatchNorm2d))
    assert count_buffers(models["bn"]) - count_buffers(models["ln"]) == bn_stats


@pytest.mark.parametrize("norm", ["batch2d", "layer2d"])
def test_every_norm_sees_nchw_and_every_parameter_gets_a_gradient(norm):
    model = build_model(tiny_model_cfg(norm, drop_path_rate=0.0), 10, 1)
    shapes = []
    for m in model.modules():
        if isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
            m.register_forward_hook(lambda mod, inp, out: shapes.append(inp[0].dim()))
    x = torch.randn(4, 1, 32, 32)
    model(x).logsumexp(1).mean().backward()
    assert shapes and set(shapes) == {4}
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_patch_size_sets_the_stage_resolutions():
    """timm: patch 4 → stage 0 at 1/4; patch 1 → stage 0 at full size; patch 2 → timm adds a
    stride-2 downsampling (with its norm) to stage 0, so stage 0 is at 1/4 again."""
    x = torch.randn(2, 1, 32, 32)
    sizes = {}
    for patch in (1, 2, 4):
        model = build_model(tiny_model_cfg("layer2d", patch_size=patch), 10, 1)
        assert model.stem[0].stride == (patch, patch)
        sizes[patch] = model.stages[0](model.stem(x)).shape[-1]
        assert model(x).shape == (2, 10)
    assert sizes == {1: 32, 2: 8, 4: 8}


def test_no_weight_decay_on_norms_biases_and_layer_scale():
    model = build_model(tiny_model_cfg("batch2d"), 10, 1)
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    no_decay_ids = {id(p) for p in no_decay["params"]}
    for name, p in model.named_parameters():
        expect_no_decay = p.ndim <= 1  # norm weight/bias, conv/linear bias, layer-scale gamma
        assert (id(p) in no_decay_ids) == expect_no_decay, name
    assert any(".gamma" in n for n, p in model.named_parameters() if id(p) in no_decay_ids)


# ---------------------------------------------------------------- schedule

def test_warmup_then_cosine():
    f = WarmupCosine(warmup_steps=4, total_steps=14, min_ratio=0.01)
    assert [f(s) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert f(4) == pytest.approx(1.0)
    assert f(9) == pytest.approx(0.01 + 0.99 * 0.5)
    assert f(14) == pytest.approx(0.01)
    values = [f(s) for s in range(4, 15)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_lr_scales_with_effective_batch():
    cfg = resolve(REPL, "cpu", "ln", 0)
    cfg["optim"]["lr"] = None  # the rule (Goyal et al. 2017); the cpu profile sets lr per arm
    assert scaled_lr(cfg, 1) == pytest.approx(4e-3 * 128 / 4096)
    cfg["trainer"]["accumulate_grad_batches"] = 4
    assert effective_batch(cfg, 2) == 128 * 2 * 4


# ---------------------------------------------------------------- data

def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def make_fashion_raw(root: Path, n_train: int = 40, n_test: int = 12) -> Path:
    rng = np.random.default_rng(0)
    raw = root / "fashion-mnist"
    raw.mkdir(parents=True)
    for split, n in (("train", n_train), ("test", n_test)):
        img_name, lbl_name = cxdata.FASHION_FILES[split]
        _write_idx(raw / img_name, rng.integers(1, 256, (n, 28, 28)))
        _write_idx(raw / lbl_name, np.arange(n) % 10)
    write_fashion_manifest(raw)  # sizes and sha256, as a verified fetch writes it
    return raw


def test_read_idx_and_errors(tmp_path):
    arr = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    _write_idx(tmp_path / "ok.gz", arr)
    np.testing.assert_array_equal(cxdata.read_idx(tmp_path / "ok.gz"), arr)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x01\x05")
    with pytest.raises(cxdata.DataLayoutError, match="not an IDX"):
        cxdata.read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"\x00" * 3)
    with pytest.raises(cxdata.DataLayoutError, match="re-fetch"):
        cxdata.read_idx(tmp_path / "short")


def test_prepare_fashion_mnist_pads_to_32(tmp_path):
    raw = make_fashion_raw(tmp_path / "raw")
    info = cxdata.prepare("fashion-mnist", raw, tmp_path / "proc")
    assert info["n_train"] == 40 and info["n_test"] == 12
    assert info["tensor_file"] == "fashion-mnist.pt"
    tensors = torch.load(tmp_path / "proc" / info["tensor_file"], weights_only=True)
    x = tensors["train_images"]
    assert x.shape == (40, 1, 32, 32) and x.dtype == torch.uint8
    # Centred: a 2-pixel zero border, the original pixels (all >= 1) inside.
    assert x[:, :, :2].sum() == 0 and x[:, :, -2:].sum() == 0 and x[..., :2].sum() == 0
    assert (x[:, :, 2:30, 2:30] >= 1).all()
    original = cxdata.read_idx(raw / "train-images-idx3-ubyte.gz")
    np.testing.assert_array_equal(x[:, 0, 2:30, 2:30].numpy(), original)
    assert info["mean"][0] == pytest.approx(float(x.float().div(255).mean()), rel=1e-5)
    assert json.loads((tmp_path / "proc" / "prepared.json").read_text())["n_test"] == 12


def test_prepare_without_manifest_says_what_to_run(tmp_path):
    (tmp_path / "fashion-mnist").mkdir()
    with pytest.raises(cxdata.DataError, match="normrepro.fetch fashion-mnist"):
        cxdata.prepare("fashion-mnist", tmp_path / "fashion-mnist", tmp_path / "out")
    with pytest.raises(cxdata.DataLayoutError, match="prepare"):
        cxdata.load_prepared(tmp_path / "nothing")


def test_splits_are_disjoint_deterministic_and_seed_independent():
    a = cxdata.split_indices(100, 50, val_size=10, train_subset=30, test_subset=20, split_seed=0)
    b = cxdata.split_indices(100, 50, val_size=10, train_subset=30, test_subset=20, split_seed=0)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert len(a["train"]) == 30 and len(a["val"]) == 10 and len(a["test"]) == 20
    assert not set(a["train"]) & set(a["val"])
    c = cxdata.split_indices(100, 50, val_size=10, train_subset=None, test_subset=None, split_seed=1)
    assert len(c["train"]) == 90 and len(c["test"]) == 50
    with pytest.raises(cxdata.DataLayoutError, match="train_subset"):
        cxdata.split_indices(100, 50, val_size=10, train_subset=95, test_subset=None, split_seed=0)


def test_sampler_depends_only_on_seed_and_epoch_and_shards():
    s = cxdata.EpochShuffleSampler(10, seed=3, shuffle=True, epoch=2)
    first = list(s)
    s.set_epoch(5)
    s.set_epoch(2)
    assert list(s) == first  # history does not matter
    assert list(cxdata.EpochShuffleSampler(10, seed=3, shuffle=True, epoch=3)) != first
    shards = [list(cxdata.EpochShuffleSampler(10, seed=3, shuffle=True, rank=r, world_size=3,
                                              epoch=2, drop_last=True)) for r in range(3)]
    assert all(len(x) == 3 for x in shards)
    assert len(set(sum(shards, []))) == 9
    padded = [list(cxdata.EpochShuffleSampler(10, seed=0, shuffle=False, rank=r, world_size=4))
              for r in range(4)]
    assert sorted(set(sum(padded, []))) == list(range(10)) and all(len(x) == 3 for x in padded)
    g = torch.Generator()
    cxdata.EpochShuffleSampler(5, seed=1, shuffle=True, epoch=4, loader_generator=g)
    state = g.get_state()
    cxdata.EpochShuffleSampler(5, seed=1, shuffle=True, epoch=4, loader_generator=g)
    assert torch.equal(state, g.get_state())


def test_tensor_augmentation_is_a_shifted_flipped_window():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (16, 1, 32, 32), dtype=torch.uint8)
    aug = {"crop": "random_crop", "crop_padding": 4, "hflip": 0.5}
    out = cxdata.augment_tensor_batch(x, aug, torch.zeros(1), torch.ones(1), train=True)
    padded = nn.functional.pad(x.float() / 255, (4, 4, 4, 4))
    for i in range(16):
        windows = [padded[i, :, a:a + 32, b:b + 32] for a in range(9) for b in range(9)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(-1)) for w in windows)
    evald = cxdata.augment_tensor_batch(x, aug, torch.full((1,), 0.5), torch.full((1,), 0.25),
                                        train=False)
    assert torch.allclose(evald, (x.float() / 255 - 0.5) / 0.25)
    with pytest.raises(cxdata.DataLayoutError, match="rand_augment"):
        cxdata.augment_tensor_batch(x, {"rand_augment": "rand-m9"}, torch.zeros(1),
                                    torch.ones(1), train=True)


def test_training_batch_preparation_is_reproducible():
    cfg = resolve(REPL, "smoke", "ln", 0, ["data.augment.mixup=0.8", "data.augment.cutmix=1.0",
                                           "data.augment.random_erasing=0.25"])
    cfg["model"]["kwargs"] = dict(TINY)
    module = ConvNeXtClassifier(cfg, 10, 1, [0.2], [0.3], "tensor")
    x = torch.randint(0, 256, (8, 1, 32, 32), dtype=torch.uint8)
    y = torch.arange(8) % 10
    a = module.prepare_train_batch((x, y), 3)
    b = module.prepare_train_batch((x, y), 3)
    c = module.prepare_train_batch((x, y), 4)
    assert a[2] and torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert a[1].shape == (8, 10) and torch.allclose(a[1].sum(1), torch.ones(8))
    with torch.no_grad():
        assert math.isfinite(float(module.loss_fn(module(a[0]), a[1], True)))

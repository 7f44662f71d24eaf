"""The ViT of the ConvNeXt pipeline (`model.variant: vit_*`): sizes, every registry norm in every
norm position, the token BatchNorm against torch's BatchNorm1d, config selection, and training
through the unchanged Lightning module and stages on tiny synthetic data.

Kernels run eagerly here (`eager_kernels`): compiling the fused BN/RMS kernels costs more than
these tiny batches; test_norms.py checks both paths against the same references.
"""

from __future__ import annotations

import json
import re

import lightning as L
import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from normrepro.config import ConfigError, dump, resolve
from normrepro.tasks.image_classification import evaluate as cxeval
from normrepro.tasks.image_classification.model import build_model, count_parameters, norm_modules, param_groups
from normrepro.tasks.image_classification.module import ConvNeXtClassifier
from normrepro.tasks.image_classification.run_config import check_config
from normrepro.tasks.image_classification.train import train
from normrepro.tasks.image_classification.vit import VIT_SIZES, TokensAsSequence
from normrepro.norms import create_norm, eager_kernels

from test_convnext_train import REPL, _write_tiny_processed, tiny_cfg

NORMS = {"layer": "SeqLayerNorm", "batch": "MaskedBatchNorm", "rms": "SeqRMSNorm", "dyt": "DyT"}
TINY_VIT = {"embed_dim": 16, "depth": 1, "num_heads": 2}


def vit_cfg(norm: str, variant: str = "vit_pico", **extra) -> dict:
    return {"variant": variant, "norm": norm, "patch_size": 4, "drop_path_rate": 0.0, **extra}


@pytest.fixture(autouse=True)
def _eager():
    with eager_kernels():
        yield


# ---------------------------------------------------------------- sizes

def test_sizes_tokens_and_parameter_counts():
    """32 x 32 inputs, patch 4: 64 patch tokens + the class token; the counts in vit.py's table
    (1 input channel, 10 classes, LayerNorm)."""
    counts = {}
    for variant in ("vit_pico", "vit_nano", "vit_micro", "vit_tiny"):
        model = build_model(vit_cfg("layer", variant), 10, 1, 32)
        assert isinstance(model, VisionTransformer)
        assert model.patch_embed.num_patches == 64 and model.pos_embed.shape[1] == 65
        assert model.embed_dim == VIT_SIZES[variant]["embed_dim"]
        assert len(model.blocks) == VIT_SIZES[variant]["depth"]
        counts[variant] = count_parameters(model)
    assert counts == {"vit_pico": 305_994, "vit_nano": 680_170, "vit_micro": 2_687_434,
                      "vit_tiny": 5_356_618}
    base = build_model({**vit_cfg("layer", "vit_base"), "patch_size": 16}, 1000, 3, 224)
    assert count_parameters(base) == 86_567_656  # timm's vit_base_patch16_224 (ViT-B/16)


# ---------------------------------------------------------------- every norm, everywhere

@pytest.mark.parametrize("norm", sorted(NORMS))
def test_every_norm_builds_runs_and_every_parameter_gets_a_gradient(norm):
    model = build_model(vit_cfg(norm), 10, 1, 32).train()
    found = norm_modules(model)
    # only the chosen registry norm, in each block's norm1/norm2 and the final norm
    assert set(found) == {NORMS[norm]}
    positions = [f"blocks.{i}.norm{j}.norm" for i in range(6) for j in (1, 2)] + ["norm.norm"]
    assert found[NORMS[norm]] == positions
    assert all(isinstance(model.get_submodule(p[:-5]), TokensAsSequence) for p in positions)
    if norm != "layer":
        assert not any(isinstance(m, nn.LayerNorm) for m in model.modules())
    seen = []
    for p in positions:
        model.get_submodule(p).register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    x = torch.randn(2, 1, 32, 32)
    out = model(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert set(seen) == {torch.Size([65, 2, model.embed_dim])}  # (T, B, C) = (tokens, images, C)
    out.logsumexp(1).mean().backward()
    missing = [n for n, p in model.named_parameters()
               if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_dyt_vit_has_no_layernorm_left():
    dyt, ln = (build_model(vit_cfg(n), 10, 1, 32) for n in ("dyt", "layer"))
    assert not any(isinstance(m, nn.LayerNorm) for m in dyt.modules())
    assert not any(re.search(r"LayerNorm|RmsNorm", type(m).__name__) for m in dyt.modules())
    assert norm_modules(dyt)["DyT"] == norm_modules(ln)["SeqLayerNorm"]
    assert all(m.alpha.item() == 0.5 for m in dyt.modules() if type(m).__name__ == "DyT")
    # the same network but for the norms: DyT adds one α per norm
    assert count_parameters(dyt) == count_parameters(ln) + 13


def test_layer_arm_is_timms_layernorm_vit():
    """The `layer` arm computes what timm's own ViT (LayerNorm, eps 1e-6) computes."""
    ours = build_model(vit_cfg("layer"), 10, 1, 32).eval()
    timm_vit = VisionTransformer(img_size=32, patch_size=4, in_chans=1, num_classes=10,
                                 **VIT_SIZES["vit_pico"]).eval()
    state = {re.sub(r"norm(\d?)\.norm\.", r"norm\1.", k): v for k, v in ours.state_dict().items()}
    timm_vit.load_state_dict(state)
    assert all(m.eps == 1e-6 for m in ours.modules() if type(m).__name__ == "SeqLayerNorm")
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), timm_vit(x))


# ---------------------------------------------------------------- token BatchNorm

def test_token_bn_equals_batchnorm1d_over_the_flattened_tokens():
    """Training: statistics per channel over all B x N tokens (outputs, gradients, running
    statistics as torch's BatchNorm1d on the (B·N, C) tokens); eval: the running statistics,
    so one image's output no longer depends on the rest of the batch."""
    torch.manual_seed(0)
    Bn, N, Cn = 4, 9, 6
    ours = TokensAsSequence(create_norm("batch", Cn, momentum=0.2)).double().train()
    ref = nn.BatchNorm1d(Cn, momentum=0.2).double().train()
    with torch.no_grad():
        for p, q in zip(ours.parameters(), ref.parameters()):
            p.copy_(torch.randn_like(p)), q.copy_(p)
    for step in range(4):
        x = (2 * torch.randn(Bn, N, Cn, dtype=torch.float64) + 1).requires_grad_(True)
        xr = x.detach().clone().requires_grad_(True)
        gy = torch.randn(Bn, N, Cn, dtype=torch.float64)
        y = ours(x)
        yr = ref(xr.reshape(Bn * N, Cn)).reshape(Bn, N, Cn)
        y.backward(gy)
        yr.backward(gy)
        torch.testing.assert_close(y, yr, msg=f"output, step {step}")
        torch.testing.assert_close(x.grad, xr.grad, msg=f"input gradient, step {step}")
        for p, q in zip(ours.parameters(), ref.parameters()):
            torch.testing.assert_close(p.grad, q.grad)
            p.grad = q.grad = None
        torch.testing.assert_close(ours.norm.running_mean, ref.running_mean)
        torch.testing.assert_close(ours.norm.running_var, ref.running_var)
    assert int(ours.norm.num_batches_tracked) == int(ref.num_batches_tracked) == 4
    ours.eval(), ref.eval()
    x = torch.randn(Bn, N, Cn, dtype=torch.float64)
    with torch.no_grad():
        y = ours(x)
        torch.testing.assert_close(y, ref(x.reshape(Bn * N, Cn)).reshape(Bn, N, Cn))
        torch.testing.assert_close(ours(x[:1]), y[:1])  # per image in eval
        before = ours.norm.running_mean.clone()
        ours(x)
        assert torch.equal(ours.norm.running_mean, before)
    # a pooled (B, C) feature is one token per image
    ours.train()
    pooled = torch.randn(Bn, Cn, dtype=torch.float64)
    torch.testing.assert_close(ours(pooled), nn.functional.batch_norm(
        pooled, None, None, ours.norm.weight, ours.norm.bias, True, 0.0, ours.norm.eps))


def test_bn_vit_eval_uses_running_statistics():
    model = build_model(vit_cfg("batch", kwargs=dict(TINY_VIT)), 10, 1, 32).train()
    for _ in range(3):
        model(torch.randn(8, 1, 32, 32))
    model.eval()
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x[:1]), model(x)[:1])


# ---------------------------------------------------------------- config selection

def test_config_selects_the_vit_and_checks_the_norm_layout():
    cfg = check_config(resolve(REPL, "smoke", "ln", 0, ["model.variant=vit_pico",
                                                        "model.norm=dyt"]))
    module = ConvNeXtClassifier(cfg, 10, 1, [0.2], [0.3], "tensor")
    assert isinstance(module.model, VisionTransformer)
    assert module.model.patch_embed.num_patches == 64  # fashion-mnist's native 32 pixels
    with pytest.raises(ConfigError, match="'layer2d' is an image norm; a ViT's tokens take"):
        build_model(vit_cfg("layer2d"), 10, 1, 32)
    with pytest.raises(ConfigError, match="vit_pico, vit_nano"):
        build_model(vit_cfg("layer", "vit_huge"), 10, 1, 32)
    with pytest.raises(ConfigError, match="model.kwargs.img_size is set by the pipeline"):
        build_model(vit_cfg("layer", kwargs={"img_size": 64}), 10, 1, 32)
    with pytest.raises(ConfigError, match="does not divide"):
        build_model(vit_cfg("layer", patch_size=5), 10, 1, 32)
    with pytest.raises(ValueError, match="image size"):
        build_model(vit_cfg("layer"), 10, 1)
    with pytest.raises(ConfigError, match=r"'dtt' is not an image norm .*did you mean 'dyt'"):
        check_config(resolve(REPL, "smoke", "ln", 0, ["model.norm=dtt"]))


def test_no_weight_decay_on_norms_biases_position_embedding_and_class_token():
    model = build_model(vit_cfg("dyt"), 10, 1, 32)
    decay, no_decay = param_groups(model, 0.05)
    no_decay_names = {n for n, p in model.named_parameters()
                      if any(p is q for q in no_decay["params"])}
    assert {"pos_embed", "cls_token", "blocks.0.norm1.norm.alpha", "norm.norm.weight",
            "head.bias"} <= no_decay_names
    assert all(not n.endswith(".weight") or ".norm" in n for n in no_decay_names)
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


# ---------------------------------------------------------------- training through the module

@pytest.mark.filterwarnings(r"ignore:.*isinstance\(treespec, LeafSpec\)")
def test_one_lightning_step_through_the_unchanged_module():
    cfg = resolve(REPL, "smoke", "ln", 0, ["model.variant=vit_pico", "model.norm=dyt",
                                           "model.kwargs=" + json.dumps(TINY_VIT),
                                           "trainer.print_epochs=false", "trainer.max_epochs=1"])
    module = ConvNeXtClassifier(check_config(cfg), 10, 1, [0.2], [0.3], "tensor")
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (8, 1, 32, 32), dtype=torch.uint8, generator=g)
    data = DataLoader(TensorDataset(images, torch.arange(8) % 10), batch_size=8)
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=1,
                        limit_val_batches=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0)
    trainer.fit(module, data, data)
    assert trainer.global_step == 1 and len(module.history) == 1
    row = module.history[0]
    assert row["train_loss"] > 0 and 0 <= row["val_top1"] <= 100
    after = module.model.state_dict()
    assert not torch.equal(after["blocks.0.norm1.norm.alpha"], before["blocks.0.norm1.norm.alpha"])
    assert not torch.equal(after["head.weight"], before["head.weight"])


@pytest.fixture(scope="module")
def processed_root(tmp_path_factory):
    return _write_tiny_processed(tmp_path_factory.mktemp("processed"))


def test_train_and_evaluate_stages_run_a_bn_vit(processed_root, tmp_path):
    """The ConvNeXt stages as they are: train (1 epoch, 3 steps) then evaluate, which rebuilds
    the model from the run's config and the data's image size and uses BN's running stats."""
    cfg = tiny_cfg(processed_root, "ln", 0, "trainer.max_epochs=1", "model.variant=vit_pico",
                   "model.norm=batch", "model.kwargs=" + json.dumps(TINY_VIT), tiny_model=False)
    run = tmp_path / "vit_bn" / "seed0"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(dump(cfg))
    record = train(cfg, run)
    assert record["status"] == "ok" and record["epochs_completed"] == 1
    final = cxeval.evaluate(run)
    assert final["status"] == "ok" and final["n_test"] == 32
    assert final["parameters"] == count_parameters(build_model(cfg["model"], 10, 1, 32))

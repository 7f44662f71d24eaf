"""Synchronised BatchNorm (`sync_batch`, `sync_batch2d`): two processes (gloo on CPU; on a GPU
machine also CUDA tensors, over NCCL with two GPUs, else gloo) must give exactly what one
process gives with plain BN on the concatenated batch, and outside a process group (or in a
group of one) the sync norms must be plain `batch` / `batch2d`."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from normrepro.insights.distributed import spawn_group
from normrepro.norms import create_norm

C = 6
STEPS = 3
# Sequence lengths per rank differ, and so does the padding: rank 1's batch is longer.
SEQ_T = (5, 7)
SEQ_B = (3, 2)
IMG_B = (2, 3)


def _params(norm, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        norm.weight.copy_(0.5 + torch.rand(C, generator=g, dtype=torch.float64))
        norm.bias.copy_(torch.randn(C, generator=g, dtype=torch.float64))
    return norm


def _seq_data(step, rank):
    """(x, pad_mask, grad_y) of one rank at one step; deterministic in (step, rank)."""
    g = torch.Generator().manual_seed(100 * step + rank)
    T, B = SEQ_T[rank], SEQ_B[rank]
    x = 2.0 + 3.0 * torch.randn(T, B, C, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = torch.arange(T)[None, :] >= lengths[:, None]
    gy = torch.randn(T, B, C, generator=g, dtype=torch.float64)
    return x, mask, gy


def _img_data(step, rank):
    g = torch.Generator().manual_seed(1000 + 100 * step + rank)
    x = -1.0 + 2.0 * torch.randn(IMG_B[rank], C, 3, 4, generator=g, dtype=torch.float64)
    gy = torch.randn(IMG_B[rank], C, 3, 4, generator=g, dtype=torch.float64)
    return x, gy


def _steps(norm, data, seq, device="cpu"):
    """STEPS training steps, then one eval forward; what each step produced (on the CPU)."""
    out = []
    norm.to(device)

    def cpu(t):
        return t.detach().cpu().clone()

    for step in range(STEPS):
        norm.zero_grad()
        if seq:
            x, mask, gy = (t.to(device) for t in data(step))
            x = x.clone().requires_grad_(True)
            y = norm(x, pad_mask=mask)
        else:
            x, gy = (t.to(device) for t in data(step))
            x = x.clone().requires_grad_(True)
            y = norm(x)
        y.backward(gy)
        out.append({"y": cpu(y), "gx": cpu(x.grad), "gw": cpu(norm.weight.grad),
                    "gb": cpu(norm.bias.grad), "rm": cpu(norm.running_mean),
                    "rv": cpu(norm.running_var),
                    "stats": {k: cpu(v) for k, v in norm.last_stats.items()}})
    norm.eval()
    with torch.no_grad():
        x = data(0)[0].to(device)
        out.append({"eval": cpu(norm(x, pad_mask=data(0)[1].to(device)) if seq else norm(x))})
    return out


def _worker(rank, world, out_dir, device):
    calls = []
    real_all_reduce = dist.all_reduce

    def counting_all_reduce(tensor, *args, **kwargs):
        calls.append(tensor.numel())
        return real_all_reduce(tensor, *args, **kwargs)

    dist.all_reduce = counting_all_reduce  # this process only; counts the norms' collectives
    results = {}
    for name, seq in (("sync_batch", True), ("sync_batch2d", False)):
        norm = _params(create_norm(name, C, momentum=0.3).double().train(), seed=7)
        norm.record_stats = True
        data = (lambda s: _seq_data(s, rank)) if seq else (lambda s: _img_data(s, rank))
        n0 = len(calls)
        results[name] = _steps(norm, data, seq, device)
        results[name + "/calls"] = calls[n0:]
    dist.all_reduce = real_all_reduce
    # inside DistributedDataParallel: its bucketed gradient all-reduces interleave with the
    # norm's own backward all-reduce without deadlock, and the averaged gradients are right
    model = torch.nn.parallel.DistributedDataParallel(
        _model("sync_batch2d").to(device), device_ids=None)
    x, _ = _img_data(0, rank)
    model(x.to(device)).sum().backward()  # DDP averages: ½·∇(Σ over both ranks)
    results["ddp"] = {n: 2 * p.grad.detach().cpu() for n, p in model.module.named_parameters()}
    torch.save(results, f"{out_dir}/rank{rank}.pt")


def _model(norm):
    torch.manual_seed(3)
    return torch.nn.Sequential(torch.nn.Conv2d(C, C, 1), create_norm(norm, C), torch.nn.ReLU(),
                               torch.nn.Flatten(), torch.nn.Linear(C * 12, 1)).double().train()


def _concat_seq(step):
    """The two ranks' sequence batches as one (T_max, B_0 + B_1, C) batch, padded to T_max."""
    T = max(SEQ_T)
    xs, ms, gs = [], [], []
    for rank in range(2):
        x, mask, gy = _seq_data(step, rank)
        pad = T - x.shape[0]
        xs.append(torch.cat([x, torch.full((pad, x.shape[1], C), 99.0, dtype=x.dtype)]))
        gs.append(torch.cat([gy, torch.zeros(pad, x.shape[1], C, dtype=x.dtype)]))
        ms.append(torch.cat([mask, torch.ones(x.shape[1], pad, dtype=torch.bool)], 1))
    return torch.cat(xs, 1), torch.cat(ms, 0), torch.cat(gs, 1)


def _concat_img(step):
    xs, gs = zip(*(_img_data(step, r) for r in range(2)))
    return torch.cat(xs), torch.cat(gs)


@pytest.fixture(scope="module", params=["cpu", "cuda"])
def two_process_results(request, tmp_path_factory):
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    out = tmp_path_factory.mktemp("sync")
    if request.param == "cpu":
        device, backend = "cpu", "gloo"
    elif torch.cuda.device_count() >= 2:
        device, backend = "cuda", "nccl"  # each rank on its own GPU (cuda:rank is current)
    else:
        device, backend = "cuda:0", "gloo"  # one GPU: NCCL refuses two ranks on one device
    spawn_group(_worker, 2, str(out), device, backend=backend)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


def _seq_slice(rank, tensor):
    b0 = sum(SEQ_B[:rank])
    return tensor[: SEQ_T[rank], b0:b0 + SEQ_B[rank]]


@pytest.mark.parametrize("name", ["sync_batch", "sync_batch2d"])
def test_two_workers_equal_one_process_on_concatenated_batch(two_process_results, name):
    seq = name == "sync_batch"
    ref_norm = _params(create_norm("batch" if seq else "batch2d", C, momentum=0.3).double().train(),
                       seed=7)
    ref_norm.record_stats = True  # same eager path, but over the whole batch in one process
    ref = _steps(ref_norm, _concat_seq if seq else _concat_img, seq)
    # plain (fused) path as a second reference for the outputs, gradients and running stats
    fused = _steps(_params(create_norm("batch" if seq else "batch2d", C, momentum=0.3).double()
                           .train(), seed=7), _concat_seq if seq else _concat_img, seq)
    for rank, res in enumerate(two_process_results):
        got = res[name]
        for step in range(STEPS):
            for want in (ref[step], fused[step]):
                if seq:
                    real = ~_seq_data(step, rank)[1].t()
                    for key in ("y", "gx"):
                        torch.testing.assert_close(got[step][key][real],
                                                   _seq_slice(rank, want[key])[real])
                        assert torch.all(got[step][key][~real] == 0)
                else:
                    b0 = sum(IMG_B[:rank])
                    for key in ("y", "gx"):
                        torch.testing.assert_close(got[step][key], want[key][b0:b0 + IMG_B[rank]])
                for key in ("rm", "rv"):
                    torch.testing.assert_close(got[step][key], want[key])
            # weight/bias gradients stay local: their sum over ranks is the full-batch gradient
            for key in ("gw", "gb"):
                total = sum(r[name][step][key] for r in two_process_results)
                torch.testing.assert_close(total, ref[step][key])
            # recorded statistics are those of the synchronised (whole) batch
            for key, value in ref[step]["stats"].items():
                torch.testing.assert_close(got[step]["stats"][key], value, msg=f"{key}, step {step}")
        # eval uses the (identical) running statistics, per element, no collective
        with torch.no_grad():  # ref_norm is in eval mode after _steps
            if seq:
                x0, m0, _ = _seq_data(0, rank)
                want_eval = ref_norm(x0, pad_mask=m0)
            else:
                want_eval = ref_norm(_img_data(0, rank)[0])
        torch.testing.assert_close(got[STEPS]["eval"], want_eval)


def test_inside_ddp_gradients_equal_one_process_on_concatenated_batch(two_process_results):
    model = _model("batch2d")
    model(_concat_img(0)[0]).sum().backward()
    for res in two_process_results:
        for n, p in model.named_parameters():
            torch.testing.assert_close(res["ddp"][n], p.grad, msg=n)


@pytest.mark.parametrize("name", ["sync_batch", "sync_batch2d"])
def test_two_collectives_per_layer_per_training_step(two_process_results, name):
    """Forward: one all-reduce of (count, mean, M2) rows, (2C+1)·world numbers; backward: one
    all-reduce of Σg and Σg·x̂, 2C numbers. Eval: none."""
    for res in two_process_results:
        assert res[name + "/calls"] == [2 * (2 * C + 1), 2 * C] * STEPS


@pytest.mark.parametrize("name,plain", [("sync_batch", "batch"), ("sync_batch2d", "batch2d")])
@pytest.mark.parametrize("record", [False, True])
def test_without_process_group_sync_is_exactly_plain(name, plain, record):
    assert not (dist.is_available() and dist.is_initialized())
    seq = name == "sync_batch"
    a = _params(create_norm(name, C).double().train(), seed=1)
    b = _params(create_norm(plain, C).double().train(), seed=1)
    assert a.state_dict().keys() == b.state_dict().keys()
    a.record_stats = b.record_stats = record
    data = (lambda s: _seq_data(s, 1)) if seq else (lambda s: _img_data(s, 1))
    ra, rb = _steps(a, data, seq), _steps(b, data, seq)
    for sa, sb in zip(ra, rb):
        for key in sa:
            if key == "stats":
                assert sa[key].keys() == sb[key].keys()
                for k in sa[key]:
                    assert torch.equal(sa[key][k], sb[key][k])
            else:
                assert torch.equal(sa[key], sb[key]), key


@pytest.fixture
def world_of_one():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("name,plain", [("sync_batch", "batch"), ("sync_batch2d", "batch2d")])
def test_world_of_one_is_exactly_plain_and_calls_no_collective(world_of_one, name, plain,
                                                               monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a sync norm in a world of one must not call a collective")

    monkeypatch.setattr(dist, "all_reduce", forbidden)
    seq = name == "sync_batch"
    a = _params(create_norm(name, C).double().train(), seed=2)
    b = _params(create_norm(plain, C).double().train(), seed=2)
    data = (lambda s: _seq_data(s, 0)) if seq else (lambda s: _img_data(s, 0))
    for sa, sb in zip(_steps(a, data, seq), _steps(b, data, seq)):
        for key in sa:
            if key != "stats":
                assert torch.equal(sa[key], sb[key]), key


def test_sync_norm_takes_a_process_group_kwarg():
    norm = create_norm("sync_batch2d", C, process_group=None)
    assert norm.process_group is None
    with pytest.raises(ValueError, match="does not take"):
        create_norm("sync_batch", C, group=None)

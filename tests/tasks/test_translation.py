"""Tests of the PowerNorm translation pipeline on tiny synthetic data (width-8, 1+1 layers).

A session fixture writes a few dozen synthetic German/English sentence pairs, learns a small joint
BPE and binarizes them with fairseq exactly as `normrepro.tasks.translation.prepare` does; the tests then
check the configs, the norm wiring of the model, the batching, generation, BLEU, averaging and an
interrupted-then-resumed training run.
"""

from __future__ import annotations

import copy
import random
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch

from normrepro.config import _choices, resolve
from normrepro.norms import create_norm
from normrepro.tasks.translation import model as tm
from normrepro.sources.bible import bible_pairs
from normrepro.sources.common import CorpusError
from normrepro.sources.ding import ding_sentence_pairs
from normrepro.sources.iwslt14 import IWSLT_TEST_SETS, iwslt_test_lines, iwslt_train_lines
from normrepro.tasks.translation import prepare
from normrepro.tasks.translation.average import average_run, average_state_dicts
from normrepro.tasks.translation.datamodule import (ShardedBatchSampler, load_dictionary, load_pair_dataset,
                                              make_batches)
from normrepro.tasks.translation.evaluate import evaluate_set, tokenized_bleu, translate

REPL = Path(__file__).resolve().parents[2] / "replications" / "powernorm"
WORDS = [("haus", "house"), ("ist", "is"), ("gross", "big"), ("klein", "small"), ("das", "the"),
         ("hund", "dog"), ("katze", "cat"), ("sieht", "sees"), ("und", "and"), ("rot", "red"),
         ("blau", "blue"), ("baum", "tree"), ("mann", "man"), ("frau", "woman"), ("hat", "has")]


def _sentences(n: int, seed: int) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    de, en = [], []
    for _ in range(n):
        idx = [rng.randrange(len(WORDS)) for _ in range(rng.randint(2, 9))]
        de.append(" ".join(WORDS[i][0] for i in idx))
        en.append(" ".join(WORDS[i][1] for i in idx))
    return de, en


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """data/processed-style folder: 40 train, 7 valid, 13 test pairs + an OOD set of 5."""
    root = tmp_path_factory.mktemp("tiny")
    out = root / "tiny-de-en"
    out.mkdir()
    for split, n, seed in (("train", 40, 0), ("valid", 7, 1), ("test", 13, 2)):
        de, en = _sentences(n, seed)
        prepare._write_split(out, split, de, en, de, en)
    prepare._bpe_and_binarize(out, prepare.SPLITS, 30, None, workers=1)
    ood = out / "ood-toy-de-en"
    ood.mkdir()
    de, en = _sentences(5, 3)
    prepare._write_split(ood, "test", de, en, de, en)
    prepare._bpe_and_binarize(ood, ("test",), None, out, workers=1)
    return out


def tiny_model_cfg(**over) -> dict:
    cfg = dict(arch="norm_transformer_tiny", encoder_layers=1, decoder_layers=1, encoder_embed_dim=8,
               decoder_embed_dim=8, encoder_ffn_embed_dim=16, decoder_ffn_embed_dim=16,
               encoder_attention_heads=2, decoder_attention_heads=2, encoder_normalize_before=True,
               decoder_normalize_before=True, share_all_embeddings=True, dropout=0.1,
               attention_dropout=0.0, activation_dropout=0.0, encoder_norm="layer", decoder_norm="layer",
               norm_kwargs={"power": {"alpha_fwd": 0.9, "alpha_bkw": 0.9}}, norm_overrides={})
    cfg.update(over)
    return cfg


def build(cfg: dict, dictionary, warmup: int = 4):
    return tm.build_model(tm.model_args_from_config(cfg, warmup_updates=warmup), dictionary, dictionary)


def _padded_batch(dictionary):
    g = torch.Generator().manual_seed(0)
    src = torch.randint(dictionary.nspecial, len(dictionary), (3, 6), generator=g)
    src[0, :2] = dictionary.pad()  # left-padded source, as LanguagePairDataset pads it
    prev = torch.randint(dictionary.nspecial, len(dictionary), (3, 5), generator=g)
    prev[1, 3:] = dictionary.pad()  # right-padded target prefix
    return src, prev


# ------------------------------------------------------------------------------------ configs

def test_optimizer_is_foreach_with_the_loops_bits(tiny_data):
    """AdamW runs as torch's foreach implementation (faster on CPU), with the same bits as the
    per-tensor loop that trained the earlier results, warm-up schedule and weight decay included."""
    from normrepro.tasks.translation.module import TranslationModule

    dictionary = load_dictionary(tiny_data)
    optim = {"lr": 5e-3, "warmup_updates": 3, "weight_decay": 1e-4}
    torch.manual_seed(0)
    module = TranslationModule(tm.model_args_from_config(tiny_model_cfg(dropout=0.0), 3), dictionary, optim)
    twin = copy.deepcopy(module)
    opts = []
    for m, foreach in ((module, True), (twin, False)):
        cfg = m.configure_optimizers()
        opt, sched = cfg["optimizer"], cfg["lr_scheduler"]["scheduler"]
        assert opt.defaults["foreach"] is True
        for group in opt.param_groups:
            group["foreach"] = foreach
        opts.append((m, opt, sched))
    src, prev = _padded_batch(dictionary)
    lengths = (src != dictionary.pad()).sum(1)
    for _ in range(5):
        for m, opt, sched in opts:
            out = m.model(src, lengths, prev)[0]
            opt.zero_grad()
            out.float().logsumexp(-1).mean().backward()
            opt.step()
            sched.step()
    assert all(torch.equal(a, b) for a, b in zip(module.parameters(), twin.parameters()))


def test_every_config_resolves_and_instantiates(tiny_data):
    dictionary = load_dictionary(tiny_data)
    profiles, arms = _choices(REPL / "profiles"), _choices(REPL / "arms")
    assert {"smoke", "cpu", "gpu", "paper"} <= set(profiles)
    assert {"ln", "bn", "pn_v", "pn", "bn_dec", "pn_dec"} <= set(arms)
    for profile in profiles:
        for arm in arms:
            cfg = resolve(REPL, profile, arm, seed=1)
            args = tm.model_args_from_config(cfg["model"], cfg["optim"]["warmup_updates"])
            plan = tm.NormPlan.from_args(type("A", (), args))
            for pos in tm.POSITIONS:  # every position builds with its kwargs at the model width
                side = "encoder" if pos.startswith("encoder") else "decoder"
                plan.build(pos, cfg["model"][f"{side}_embed_dim"], cfg["model"][f"{side}_attention_heads"])
            assert cfg["data"]["max_tokens"] > 0 and cfg["trainer"]["keep_snapshots"] >= 1
            assert cfg["eval"]["beam"] >= 1
        # the full model of each profile, once (the pn arm: the most constructor kwargs)
        cfg = resolve(REPL, profile, "pn", seed=1)
        model = tm.build_model(tm.model_args_from_config(cfg["model"], cfg["optim"]["warmup_updates"]),
                               dictionary, dictionary)
        norms = tm.norm_modules(model)
        assert sum(type(m).__name__ == "PowerNorm" for m in norms.values()) == 2 * cfg["model"]["encoder_layers"] + 1
        pn = next(m for m in norms.values() if type(m).__name__ == "PowerNorm")
        assert pn.group_num == cfg["model"]["encoder_attention_heads"]
        assert pn.warmup_iters == cfg["optim"]["warmup_updates"] or cfg["model"]["norm_overrides"]


def test_arms_differ_in_the_norm_only():
    base = resolve(REPL, "cpu", "ln", seed=1)
    for arm in _choices(REPL / "arms"):
        cfg = resolve(REPL, "cpu", arm, seed=1)
        diff = {k for k in base["model"] if base["model"][k] != cfg["model"][k]}
        assert diff <= {"encoder_norm", "decoder_norm"}, (arm, diff)
        assert {k: v for k, v in cfg.items() if k not in ("model", "arm")} == \
               {k: v for k, v in base.items() if k not in ("model", "arm")}


# ------------------------------------------------------------------------------ model wiring

class _Spy(torch.nn.Module):
    """Wraps a registry norm and records the pad_mask of every call."""

    def __init__(self, name, dim, **kw):
        super().__init__()
        self.inner = create_norm(name, dim, **kw)
        self.name, self.calls = name, []

    def forward(self, x, pad_mask=None):
        self.calls.append(None if pad_mask is None else pad_mask.clone())
        return self.inner(x, pad_mask)


def test_every_norm_position_uses_the_registry_and_receives_the_mask(tiny_data, monkeypatch):
    dictionary = load_dictionary(tiny_data)
    built = []

    def spy_factory(name, dim, **kw):
        built.append(_Spy(name, dim, **kw))
        return built[-1]

    monkeypatch.setattr(tm, "create_norm", spy_factory)
    model = build(tiny_model_cfg(encoder_norm="batch", decoder_norm="power"), dictionary)
    norms = tm.norm_modules(model)
    # 1+1 layers: encoder self-attn, FFN, final; decoder self-attn, cross-attn, FFN, final.
    assert len(norms) == 7 and all(isinstance(m, _Spy) for m in norms.values())
    assert {n: m.name for n, m in norms.items() if n.startswith("encoder")} == dict.fromkeys(
        ["encoder.layers.0.self_attn_layer_norm", "encoder.layers.0.final_layer_norm", "encoder.final_norm"], "batch")
    assert all(m.name == "power" for n, m in norms.items() if n.startswith("decoder"))
    src, prev = _padded_batch(dictionary)
    model.train()
    model(src, None, prev)
    for name, spy in norms.items():
        assert len(spy.calls) == 1, name
        expected = src.eq(dictionary.pad()) if name.startswith("encoder") else prev.eq(dictionary.pad())
        assert spy.calls[0] is not None and torch.equal(spy.calls[0], expected), name


def test_power_kwargs_follow_heads_and_warmup(tiny_data):
    dictionary = load_dictionary(tiny_data)
    cfg = tiny_model_cfg(encoder_norm="power", norm_overrides={"encoder_final": {"power": {"warmup_iters": 7}}})
    model = build(cfg, dictionary, warmup=123)
    norms = tm.norm_modules(model)
    assert norms["encoder.layers.0.self_attn_layer_norm"].warmup_iters == 123
    assert norms["encoder.layers.0.self_attn_layer_norm"].group_num == 2
    assert norms["encoder.final_norm"].warmup_iters == 7
    with pytest.raises(ValueError, match="does not take"):
        build(tiny_model_cfg(encoder_norm="batch", norm_kwargs={"batch": {"warmup_iters": 3}}), dictionary)
    with pytest.raises(ValueError, match="not a sequence norm"):
        build(tiny_model_cfg(encoder_norm="batch2d"), dictionary)


@pytest.mark.parametrize("norm", ["batch", "power"])
def test_eval_output_uses_the_norm_not_layernorm(tiny_data, norm):
    """No fused LayerNorm fast path: a BN/PN encoder differs from its LayerNorm substitution."""
    dictionary = load_dictionary(tiny_data)
    torch.manual_seed(0)
    model = build(tiny_model_cfg(encoder_norm=norm, dropout=0.0), dictionary, warmup=1)
    src, prev = _padded_batch(dictionary)
    model.train()
    for _ in range(3):  # move the running statistics away from their initial values
        model(src, None, prev)
    model.eval()
    with torch.no_grad():
        out = model(src, None, prev)[0]
        substituted = copy.deepcopy(model)
        for name, mod in list(tm.norm_modules(substituted).items()):
            if name.startswith("encoder"):
                ln = create_norm("layer", mod.num_features)
                ln.weight.copy_(mod.weight)
                ln.bias.copy_(mod.bias)
                parent, attr = name.rsplit(".", 1)
                setattr(substituted.get_submodule(parent), attr, ln)
        out_ln = substituted(src, None, prev)[0]
        assert not torch.allclose(out, out_ln, atol=1e-4)
        # and the eval output really depends on the norm's running statistic
        changed = copy.deepcopy(model)
        stat = "running_var" if norm == "batch" else "running_phi"
        getattr(changed.encoder.layers[0].self_attn_layer_norm, stat).mul_(4.0)
        assert not torch.allclose(out, changed(src, None, prev)[0], atol=1e-4)


def test_padding_does_not_change_real_token_outputs(tiny_data):
    """Masked BN: extra padding in the batch leaves the encoder output at real tokens unchanged."""
    dictionary = load_dictionary(tiny_data)
    torch.manual_seed(0)
    model = build(tiny_model_cfg(encoder_norm="batch", dropout=0.0), dictionary)
    model.train()
    src, _ = _padded_batch(dictionary)
    more = torch.cat([torch.full((3, 4), dictionary.pad()), src], dim=1)  # 4 more left pads
    a = model.encoder(src)["encoder_out"][0]
    b = model.encoder(more)["encoder_out"][0][4:]
    real = ~src.eq(dictionary.pad()).t()
    assert torch.allclose(a[real], b[real], atol=1e-5)


def test_norms_run_in_float32_under_bf16_autocast(tiny_data, monkeypatch):
    dictionary = load_dictionary(tiny_data)
    seen = []

    class DtypeSpy(_Spy):
        def forward(self, x, pad_mask=None):
            seen.append((x.dtype, torch.is_autocast_enabled("cpu")))
            return super().forward(x, pad_mask)

    monkeypatch.setattr(tm, "create_norm", lambda name, dim, **kw: DtypeSpy(name, dim, **kw))
    model = build(tiny_model_cfg(encoder_norm="power", decoder_norm="batch"), dictionary)
    src, prev = _padded_batch(dictionary)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(src, None, prev)[0]
    out.float().sum().backward()
    assert len(seen) == 7 and all(dt == torch.float32 and not ac for dt, ac in seen)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


def test_fairseq_plugin_builds_the_same_model(tiny_data):
    """fairseq's own argument parsing (--user-dir plugin) gives the architecture build_model gives."""
    from fairseq import options, tasks

    cfg = tiny_model_cfg(encoder_norm="power")
    margs = tm.model_args_from_config(cfg, warmup_updates=5)
    plugin = Path(tm.__file__).parent / "fairseq_plugin"
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [str(tiny_data / "bin"), "--user-dir", str(plugin), "--task",
                                                "translation", "-s", "de", "-t", "en", *tm.fairseq_cli_flags(margs)])
    task = tasks.setup_task(args)
    torch.manual_seed(3)
    theirs = task.build_model(args)
    torch.manual_seed(3)
    ours = tm.build_model(margs, task.source_dictionary, task.target_dictionary)
    a, b = theirs.state_dict(), ours.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert type(theirs.encoder.final_norm).__name__ == "PowerNorm"


# ------------------------------------------------------------------------------------ batching

def test_required_batch_size_multiple_rounds_training_batches_only(tiny_data):
    """fairseq's default multiple of 8 (the paper profile) rounds training batches (fairseq may
    leave a sentence out of an epoch then, as the official scripts did; the data module counts
    it); validation/test batching keeps 1 whatever the config says."""
    from normrepro.tasks.translation.datamodule import TranslationDataModule

    ds = load_pair_dataset(tiny_data, "train", load_dictionary(tiny_data), shuffle=True)
    batches = make_batches(ds, max_tokens=200, seed=1, required_batch_size_multiple=8)
    flat = np.concatenate(batches).tolist()
    assert len(flat) == len(set(flat)) and set(flat) <= set(range(len(ds)))
    # fairseq rounds a batch down to a multiple of 8 unless it holds fewer than 8 sentences
    assert all(len(b) % 8 == 0 or len(b) < 8 for b in batches[:-1])
    sizes_1 = [len(b) for b in make_batches(ds, max_tokens=200, seed=1)]
    assert any(n % 8 and n > 8 for n in sizes_1)  # the data makes the multiple matter
    assert [len(b) for b in batches] != sizes_1
    dm = TranslationDataModule(tiny_data, max_tokens=200, seed=1, required_batch_size_multiple=8)
    assert [len(b) for b in dm.train_batches()] == [len(b) for b in batches]
    assert dm.dropped_train == len(ds) - len(flat)


def test_sharded_batch_sampler_is_disjoint_and_even(tiny_data):
    ds = load_pair_dataset(tiny_data, "train", load_dictionary(tiny_data), shuffle=True)
    batches = make_batches(ds, max_tokens=40, seed=1)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(ds)))  # nothing dropped
    for W in (1, 2, 3):
        shards = [ShardedBatchSampler(batches, W, r, shuffle=True, seed=1, even=True) for r in range(W)]
        for epoch in (0, 1):
            per_rank = []
            for s in shards:
                s.set_epoch(epoch)
                per_rank.append([tuple(b) for _, b in s])
            assert len({len(p) for p in per_rank}) == 1 and len(per_rank[0]) == len(batches) // W
            flat = [b for p in per_rank for b in p]
            assert len(set(flat)) == len(flat)  # disjoint
            ids = [i for b in flat for i in b]
            assert len(ids) == len(set(ids))
        # epoch-seeded: same epoch -> same order, other epoch -> another order
        shards[0].set_epoch(0)
        first = [tuple(b) for _, b in shards[0]]
        assert first == [tuple(b) for _, b in shards[0]]
        shards[0].set_epoch(1)
        assert first != [tuple(b) for _, b in shards[0]] or len(first) < 3
    # evaluation: every sentence exactly once, same number of batches per rank (empty padding)
    ev = [ShardedBatchSampler(batches[:5], 3, r, shuffle=False, even=False) for r in range(3)]
    got = [list(s) for s in ev]
    assert len({len(g) for g in got}) == 1
    ids = [i for g in got for _, b in g for i in b]
    assert sorted(ids) == sorted(np.concatenate(batches[:5]).tolist())


def test_sampler_resumes_mid_epoch(tiny_data):
    ds = load_pair_dataset(tiny_data, "train", load_dictionary(tiny_data), shuffle=True)
    batches = make_batches(ds, max_tokens=40, seed=1)
    s = ShardedBatchSampler(batches, 1, 0, seed=1)
    s.set_epoch(2)
    full = [tuple(b) for _, b in s]
    s.consumed = 3
    state = s.state_dict()
    t = ShardedBatchSampler(batches, 1, 0, seed=1)
    t.load_state_dict(state)
    t.set_epoch(2)
    assert [tuple(b) for _, b in t] == full[3:]
    t.set_epoch(3)  # the skip applies once, to the interrupted epoch only
    assert len(list(t)) == len(full)


# --------------------------------------------------------------------------- generation, BLEU

def test_every_test_sentence_is_translated_once(tiny_data, tmp_path):
    dictionary = load_dictionary(tiny_data)
    model = build(tiny_model_cfg(), dictionary).eval()
    ds = load_pair_dataset(tiny_data, "test", dictionary, shuffle=False)
    assert len(ds) == 13
    hyps = translate(model, ds, dictionary, beam=2, max_tokens=50, max_sentences=4, max_len_b=5)
    assert len(hyps) == 13  # 13 is not a multiple of 4: no sentence dropped, none repeated
    res = evaluate_set(model, dictionary, tiny_data, tmp_path, "test", beam=2, lenpen=1.0, batch_size=4,
                       device=torch.device("cpu"), max_len_b=5)
    assert res["sentences"] == 13
    assert len((tmp_path / "test.tok.txt").read_text().splitlines()) == 13
    assert len((tmp_path / "test.detok.txt").read_text().splitlines()) == 13
    assert len(translate(model, ds, dictionary, beam=1, max_tokens=50, limit=5, max_len_b=5)) == 5


def test_tokenized_bleu_hand_example():
    hyp, ref = "The cat sat on the mat today", "the cat sat on a mat today"
    # clipped n-gram precisions 6/7, 4/6, 2/5, 1/4; equal lengths so no brevity penalty
    expected = 100 * (6 / 7 * 4 / 6 * 2 / 5 * 1 / 4) ** 0.25
    score, sig = tokenized_bleu([hyp], [ref])
    assert score.score == pytest.approx(expected, abs=1e-6)
    assert "tok:none" in str(sig) and "case:lc" in str(sig) and "smooth:none" in str(sig)
    assert tokenized_bleu([ref], [ref])[0].score == pytest.approx(100.0)
    # a missing 4-gram match gives 0, as multi-bleu.perl (no smoothing)
    assert tokenized_bleu(["the cat is on"], ["the cat sat on"])[0].score == 0.0


def test_tokenized_bleu_matches_fairseq_scorer():
    from fairseq.data import Dictionary
    from fairseq.scoring.bleu import BleuConfig, Scorer

    d = Dictionary()
    pairs = [("a b c d e f", "a b c d x f"), ("g h i j", "g h i j k"), ("l m n o p", "l m q o p")]
    scorer = Scorer(BleuConfig(pad=d.pad(), eos=d.eos(), unk=d.unk()))
    for hyp, ref in pairs:
        scorer.add(d.encode_line(ref, add_if_not_exist=True).int(), d.encode_line(hyp, add_if_not_exist=True).int())
    ours = tokenized_bleu([h for h, _ in pairs], [r for _, r in pairs])[0].score
    assert ours == pytest.approx(scorer.score(), abs=1e-4)


# --------------------------------------------------------------------------------- averaging

def test_average_state_dicts():
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3), "h": torch.tensor([1.0], dtype=torch.float16)}
    b = {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(5), "h": torch.tensor([2.0], dtype=torch.float16)}
    out = average_state_dicts([a, b])
    assert torch.equal(out["w"], torch.tensor([2.0, 4.0]))
    assert out["n"].item() == 5  # integer buffers (step counters) take the newest value
    assert out["h"].dtype == torch.float16 and out["h"].item() == 1.5
    with pytest.raises(ValueError, match="different parameters"):
        average_state_dicts([a, {"w": a["w"]}])


def test_average_run_writes_weights_only_checkpoint(tmp_path):
    ck = tmp_path / "checkpoints"
    ck.mkdir()
    for i, u in enumerate((10, 20, 30, 40)):
        torch.save({"model": {"w": torch.full((2,), float(i))}, "updates": u, "epoch": 1, "val_loss": 1.0},
                   ck / f"snapshot_u{u:07d}.pt")
    out = average_run(tmp_path, last=3)
    state = torch.load(out, weights_only=True)
    assert torch.equal(state["model"]["w"], torch.full((2,), 2.0))  # mean of 1, 2, 3
    assert state["averaged"] == [f"snapshot_u{u:07d}.pt" for u in (20, 30, 40)]


# ----------------------------------------------------------------------------------- prepare

def _bible_db(path: Path):
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE bible (id INTEGER, bbName TEXT, bNumber INTEGER, cNumber INTEGER, "
                "vNumber INTEGER, vText TEXT)")
    rows = []
    for b in (1, 2):
        for c in range(1, 21):
            for v in range(1, 6):
                rows.append(("e", b, c, v, f"Vers {b} {c} {v} auf  Deutsch."))
                rows.append(("4", b, c, v, f"God`s verse {b} {c} {v} in English."))
    con.executemany("INSERT INTO bible (bbName, bNumber, cNumber, vNumber, vText) VALUES (?,?,?,?,?)", rows)
    con.commit()
    con.close()


def test_bible_pairs_join_and_clean(tmp_path):
    db = tmp_path / "bible.db"
    _bible_db(db)
    with pytest.raises(CorpusError, match="expected ~31,102"):
        bible_pairs(db)  # 200 verse pairs is not the real database
    pairs = bible_pairs(db, min_pairs=10)
    assert len(pairs) == 200 and pairs[0][0] == (1, 1, 1)
    assert pairs[0][1] == "Vers 1 1 1 auf Deutsch." and pairs[0][2] == "God's verse 1 1 1 in English."


def test_bible_split_is_by_chapter(tmp_path):
    db = tmp_path / "bible.db"
    _bible_db(db)
    pairs = bible_pairs(db, min_pairs=10)
    splits = prepare.split_bible(pairs, valid_verses=20, test_verses=30)
    assert len(splits["test"]) == 30 and len(splits["valid"]) == 20  # whole chapters of 5 verses
    chap = {s: {p[0][:2] for p in splits[s]} for s in splits}
    assert not (chap["test"] & chap["train"]) and not (chap["valid"] & chap["train"])
    assert sum(map(len, splits.values())) == len(pairs)
    assert prepare.split_bible(list(reversed(pairs)), valid_verses=20, test_verses=30) == splits
    sub = prepare.subset_split(splits["train"], 7, max_words=None)
    assert len(sub) == 7 and set(sub) <= set(splits["train"])
    assert prepare.subset_split(splits["train"], None, max_words=3) == []  # every verse has 5 words


def test_ding_filter_keeps_sentences_only(tmp_path):
    lines = [
        "# header :: comment",
        "Haus {n} | Häuser {pl} :: house | houses",
        "Abschied {m} | Abschied nehmen | Er verabschiedete sich von uns. :: leave | to take leave | He took leave of us.",
        "Wetter {n} | Wie ist das Wetter heute? :: weather | What is the weather like today?",
        "etw. tun | Ich tue etw. für dich. :: to do sth. | I do sth. for you.",
        "Satz | Es geht / Es läuft gut. :: sentence | It goes / runs well.",
        "Zwei | Das ist gut.; Das passt schon. :: two | That is good.; That's fine.",
        "Ungleich | Ein Satz hier. | Noch einer. :: unequal | One sentence here.",
    ]
    path = tmp_path / "de-en.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    pairs = ding_sentence_pairs(path)
    assert pairs == [("Er verabschiedete sich von uns.", "He took leave of us."),
                     ("Wie ist das Wetter heute?", "What is the weather like today?")]


def test_iwslt_cleaning_and_tag_stripping(tmp_path):
    keep = prepare.clean_corpus(["a b c", "a", "a b c d e", ""], ["x y z", "x y z", "x y", "q"])
    assert keep == [0]  # ratio 3 and 2.5 > 1.5; empty side dropped
    folder = tmp_path / "de-en"
    folder.mkdir()
    (folder / "train.tags.de-en.de").write_text("<url>http://x</url>\n<title>Titel</title>\nHallo Welt\n")
    assert iwslt_train_lines(folder, "de") == ["Titel", "Hallo Welt"]
    (folder / "IWSLT14.TED.dev2010.de-en.en.xml").write_text(
        '<doc>\n<seg id="1"> It’s here. </seg>\n<seg id="2">Two</seg>\n</doc>\n')
    assert iwslt_test_lines(folder, "IWSLT14.TED.dev2010", "en") == ["It's here.", "Two"]


def test_prepare_iwslt14_end_to_end(tmp_path):
    """A miniature IWSLT14 archive layout through the whole prepare-iwslt14.sh equivalent."""
    folder = tmp_path / "raw" / "de-en"
    folder.mkdir(parents=True)
    de, en = _sentences(60, 5)
    de[3], en[3] = "ein wort", "one two three four five"  # length ratio 2.5: removed by the cleaning
    header = ["<url>http://talk</url>", "<keywords>x</keywords>", "<talkid>1</talkid>"]
    for lang, lines in (("de", de), ("en", en)):
        body = header + ["<title>" + lines[0] + "</title>"] + lines[1:]
        (folder / f"train.tags.de-en.{lang}").write_text("\n".join(body) + "\n", encoding="utf-8")
        for k, name in enumerate(IWSLT_TEST_SETS):
            segs = "".join(f'<seg id="{i}"> {lines[k * 2 + i]} </seg>\n' for i in range(2))
            (folder / f"{name}.de-en.{lang}.xml").write_text(f"<doc>\n{segs}</doc>\n", encoding="utf-8")
    from normrepro.sources.common import write_manifest

    write_manifest(tmp_path / "raw", "iwslt14", sorted(folder.iterdir()), source="tests", license="none")
    out = tmp_path / "iwslt14"
    manifest = prepare.run("iwslt14", tmp_path / "raw", out, {"bpe_size": 40})
    kept = 59  # 60 lines (the first in a <title>), one dropped by the length ratio
    assert manifest["stats"]["after_clean"] == kept
    assert manifest["stats"]["valid.sentences"] == kept // 23 and manifest["stats"]["test.sentences"] == 10
    assert manifest["stats"]["train.sentences"] == kept - kept // 23
    assert (out / "tok" / "valid.en").read_text().splitlines()[0] == prepare.read_lines(out / "tok" / "valid.en")[0]
    assert "ein wort" not in (out / "raw" / "train.de").read_text()
    d = load_dictionary(out)
    assert len(load_pair_dataset(out, "test", d, shuffle=False)) == 10
    # The processed files are listed with their hashes, and training's check of them passes ...
    from normrepro.tasks.translation.common import verified_data

    listed = {f["path"] for f in manifest["files"]}
    assert {"bpe.codes", "bin/dict.de.txt", "tok/test.en", "raw/test.en"} <= listed
    assert verified_data(out)[1] == verified_data(out)[1]
    # ... until a file changes after prepare; and a changed raw file stops prepare, naming it.
    (out / "tok" / "test.en").write_text("changed\n", encoding="utf-8")
    with pytest.raises(prepare.DataError, match=r"tok/test\.en .*rm -r"):
        verified_data(out)
    (folder / "train.tags.de-en.en").write_text("other text\n", encoding="utf-8")
    with pytest.raises(prepare.DataError, match=r"train\.tags\.de-en\.en .*MANIFEST\.json.*fetch it again"):
        prepare.run("iwslt14", tmp_path / "raw", tmp_path / "other", {"bpe_size": 40})


def test_prepared_tiny_data_layout(tiny_data):
    for sub in ("raw", "tok", "bpe"):
        for split in prepare.SPLITS:
            assert (tiny_data / sub / f"{split}.de").is_file()
    d = load_dictionary(tiny_data)
    ood = load_dictionary(tiny_data / "ood-toy-de-en")
    assert [d[i] for i in range(len(d))] == [ood[i] for i in range(len(ood))]  # OOD reuses the dictionary
    assert len(load_pair_dataset(tiny_data / "ood-toy-de-en", "test", d, shuffle=False)) == 5


# ------------------------------------------------------------------------ training and resume

def _train_cfg(tmp: Path, max_updates: int, arm_norm: str = "power") -> dict:
    cfg = resolve(REPL, "smoke", "pn", seed=3)
    cfg["model"] = tiny_model_cfg(encoder_norm=arm_norm, dropout=0.2)
    cfg["data"]["max_tokens"] = 60
    cfg["optim"].update(lr=1e-2, warmup_updates=3)
    cfg["trainer"].update(max_updates=max_updates, val_every_updates=4, keep_snapshots=2,
                          resume_every_updates=5, early_stop_patience=0, threads=1)
    cfg["val_bleu"] = {"sentences": 3, "beam": 1}
    return cfg


def _fit(run_dir: Path, data: Path, cfg: dict):
    import yaml

    from normrepro.tasks.translation.train import train_run

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    return train_run(run_dir, data)


@pytest.mark.slow
def test_interrupted_training_resumes_exactly(tiny_data, tmp_path):
    """Stop mid-epoch at update 5 (a last.ckpt), resume to 13: same weights as 13 in one go."""
    full = _fit(tmp_path / "full", tiny_data, _train_cfg(tmp_path, 13))
    assert full["status"] == "ok" and full["updates"] == 13
    assert full["batches_per_epoch"] not in (5, 13) and 13 > full["batches_per_epoch"]  # crosses an epoch
    part = _fit(tmp_path / "part", tiny_data, _train_cfg(tmp_path, 5))
    assert part["updates"] == 5 and (tmp_path / "part" / "checkpoints" / "last.ckpt").is_file()
    resumed = _fit(tmp_path / "part", tiny_data, _train_cfg(tmp_path, 13))
    assert resumed["resumed"] and resumed["updates"] == 13
    a = torch.load(tmp_path / "full" / "checkpoints" / "snapshot_u0000012.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "part" / "checkpoints" / "snapshot_u0000012.pt", weights_only=True)["model"]
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6), k
    rows = (tmp_path / "part" / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["4", "8", "12"]  # no duplicated validation rows
    # the averaged checkpoint of the run evaluates end to end
    average_run(tmp_path / "part", last=2)
    from normrepro.tasks.translation.evaluate import evaluate_run

    cfg = _train_cfg(tmp_path, 13)
    cfg["eval"].update(beam=2, max_len_b=5)
    import yaml

    (tmp_path / "part" / "config.yaml").write_text(yaml.safe_dump(cfg))
    from normrepro.tasks.translation.recompute_stats import recompute_run

    assert recompute_run(tmp_path / "part", tiny_data)["status"] == "ok"  # PowerNorm's running ψ²
    final = evaluate_run(tmp_path / "part", tiny_data, [tiny_data / "ood-toy-de-en"])
    assert final["status"] == "ok" and final["sets"]["test"]["sentences"] == 13
    assert set(final) >= {"test_bleu_tok", "test_bleu_sacre", "toy_bleu_tok", "toy_bleu_sacre",
                          "test_avgstats_bleu_tok", "test_avgstats_bleu_sacre"}
    assert (tmp_path / "part" / "env.json").is_file()


@pytest.mark.slow
def test_nonfinite_loss_marks_run_diverged(tiny_data, tmp_path):
    cfg = _train_cfg(tmp_path, 8, arm_norm="batch")
    cfg["optim"].update(lr=1e6, warmup_updates=1)  # blows up within a few updates
    out = _fit(tmp_path / "div", tiny_data, cfg)
    assert out["status"] == "diverged" and out["updates"] <= 8


def test_paper_claims_are_stated_as_the_paper_states_them():
    from normrepro.paper import load_paper

    paper = load_paper(REPL / "paper.yaml")
    claims = {c.id: c for c in paper.claims}
    pn = claims["pn_vs_ln"]
    assert (pn.a, pn.b, pn.tests[0].kind) == ("ln", "pn", "superiority")
    claimed = paper.regime("iwslt14")["abstract_difference"]["diff"]
    assert pn.tests[1].kind == "non_inferiority" and pn.tests[1].margin < claimed
    assert (claims["ln_vs_bn"].a, claims["ln_vs_bn"].tests[0].kind) == ("bn", "superiority")
    assert resolve(REPL, "cpu", "bn", 1)["model"]["encoder_norm"] == "bn_official"
    assert resolve(REPL, "cpu", "bn_masked", 1)["model"]["encoder_norm"] == "batch"


def test_tokenized_bleu_does_not_warn_about_tokenized_text(caplog):
    """The tokenized BLEU is tokenized on purpose: sacreBLEU's three "forgot to detokenize"
    warnings (printed for >= 100 lines ending in " .") must not appear."""
    import logging

    hyps = [f"the cat number {i} sat on the mat ." for i in range(120)]
    refs = [f"the cat number {i} sat on a mat ." for i in range(120)]
    with caplog.at_level(logging.WARNING, logger="sacrebleu"):
        score, _ = tokenized_bleu(hyps, refs)
    assert score.score > 0
    assert not [r for r in caplog.records if "detokenize" in r.getMessage()]
    from sacrebleu.metrics import BLEU  # the check is live: without force it does warn

    with caplog.at_level(logging.WARNING, logger="sacrebleu"):
        BLEU(tokenize="none", lowercase=True, smooth_method="none").corpus_score(hyps, [refs])
    assert [r for r in caplog.records if "detokenize" in r.getMessage()]


def test_bpe_learning_writes_no_progress_frames_into_a_log(tmp_path):
    """subword-nmt's tqdm bar is carriage-return noise in a pipeline log (stderr not a terminal).
    tqdm reads TQDM_DISABLE when it is imported, so this runs in a fresh interpreter."""
    import os
    import subprocess
    import sys

    text = tmp_path / "train.txt"
    text.write_text("the quick brown fox jumps over the lazy dog\n" * 40, encoding="utf-8")
    code = ("import sys; from pathlib import Path; from normrepro.tasks.translation.prepare import "
            "learn_joint_bpe; learn_joint_bpe([Path(sys.argv[1])], Path(sys.argv[2]), 15)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TQDM")}
    proc = subprocess.run([sys.executable, "-c", code, str(text), str(tmp_path / "codes")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len((tmp_path / "codes").read_text(encoding="utf-8").splitlines()) > 1
    assert "it/s" not in proc.stderr and "\r" not in proc.stderr, proc.stderr

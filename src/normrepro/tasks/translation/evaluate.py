"""This task's half of the `evaluate` stage: translate the test sets with fairseq's
`SequenceGenerator` and score BLEU two ways.

    python -m normrepro.stages.evaluate RUN_DIR [--data data/processed/bible-de-en] \\
        [--ood data/processed/bible-de-en/ood-ding-de-en]

Beam 5, length penalty 1.0, batches of 128 sentences (the official test script's
`--batch-size 128`), maximum length a·src_len + b with fairseq-generate's defaults a=0,
b=200 (the paper's `generate.py --beam 5 --lenpen 1.0 --remove-bpe`; `eval.max_len_a/b` may
bound it, which the smoke profile does so that an untrained model does not emit 200 tokens). Every test sentence is translated exactly once
(asserted: batches are built with `required_batch_size_multiple=1` and no length filter, and the
ids returned must be exactly 0..N-1).

Two BLEU scores per test set:

* `bleu_tok`: the paper's number, BLEU on lowercased Moses tokens with BPE removed, against the
  tokenized reference `tok/test.en` (fairseq's `--scoring bleu` / `multi-bleu.perl`). Computed
  with sacreBLEU using `tokenize='none'`, `lowercase=True`, `smooth_method='none'`, so the
  whitespace tokens are scored as they are, with no smoothing, as multi-bleu does.
* `bleu_sacre`: sacreBLEU on Moses-detokenized output against the raw references `raw/test.en`,
  default 13a tokenization; case-insensitive because the models are trained on lowercased text
  (the signature says `c:lc`).

Running statistics (BN/PN arms). The averaged checkpoint is scored twice when
`eval.recompute_stats_batches` > 0 (the default):

* **primary**: the averaged weights with the running statistics recomputed for them on training
  batches (`checkpoints/running_stats.pt` from the `recompute_stats` stage, SWA's `update_bn`), on
  every test set. Averaged running statistics were gathered under other weights than the averaged
  ones, a handicap of the BN-family arms only; recomputing them is what SWA does and gives every
  arm a checkpoint whose statistics belong to its weights.
* **secondary**: the averaged checkpoint as it is, statistics averaged like the weights (fairseq's
  `average_checkpoints.py`, the paper's procedure), on the test set only: `test_avgstats_bleu_tok`
  and `test_avgstats_bleu_sacre`, hypotheses under `hyps/averaged_stats/`. A model without running
  statistics (LayerNorm) is the same model both ways: its result is copied, not recomputed.

`--checkpoint` scores the given weights alone, as they are.

Writes `hyps/<set>.{tok,detok}.txt` (line i = sentence i; sets `test` and one per OOD folder,
`ood-ding-de-en` -> `ding`) and `final.json`: status ok/diverged, `<set>_bleu_tok` and
`<set>_bleu_sacre` (primary) and `test_avgstats_bleu_*` (secondary) at the top level (what
`normrepro.summary` reads), details and signatures per set under `sets`, both treatments of the
running statistics under `running_stats`, the training summary under `train`; plus `env.json`.
A diverged run (non-finite loss, see `train.json`) is recorded with BLEU null, not an error.
The data folders are checked against their manifests first, and must be the data the run was
trained on (the fingerprint in its stamp); beam search reports its progress with an ETA.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Optional

import torch

from normrepro.errors import DataError, UserError
from normrepro.tasks.translation import data_dir
from normrepro.io import atomic_write_json, atomic_write_text, read_json
from normrepro.tasks.translation.common import (LOG, load_config, load_weights, model_args, quiet_logging,
                                          run_paths, set_threads, verified_data)


# Infix of the secondary result's keys: `test_avgstats_bleu_tok` = the averaged checkpoint with its
# averaged (not recomputed) running statistics.
AVGSTATS = "avgstats"


def tokenized_bleu(hyps: list[str], refs: list[str]):
    """multi-bleu style BLEU on whitespace tokens (lowercased, unsmoothed).

    The text is tokenized on purpose (the paper's number); `force=True` tells sacreBLEU so, which
    stops its "forgot to detokenize?" warning on every test set."""
    from sacrebleu.metrics import BLEU

    metric = BLEU(tokenize="none", lowercase=True, smooth_method="none", force=True)
    return metric.corpus_score(hyps, [refs]), metric.get_signature()


def detok_bleu(hyps: list[str], refs: list[str]):
    """sacreBLEU (13a, case-insensitive) on detokenized text."""
    from sacrebleu.metrics import BLEU

    metric = BLEU(lowercase=True)
    return metric.corpus_score(hyps, [refs]), metric.get_signature()


def detokenize(lines: list[str], lang: str = "en") -> list[str]:
    from sacremoses import MosesDetokenizer

    md = MosesDetokenizer(lang=lang)
    return [md.detokenize(line.split()) for line in lines]


@torch.no_grad()
def translate(model, dataset, dictionary, beam: int = 5, lenpen: float = 1.0, max_tokens: Optional[int] = None,
              max_sentences: Optional[int] = 128, max_len_a: float = 0, max_len_b: int = 200,
              device: Optional[torch.device] = None, limit: Optional[int] = None,
              progress_label: Optional[str] = None) -> list[str]:
    """Best beam hypothesis (BPE removed) for every sentence of `dataset`, in dataset order.

    Batches are fairseq-generate's for `--batch-size max_sentences` (length-sorted, no token
    bound unless `max_tokens`): the generator's length cap a·max_src_len + b is per batch, so a
    hypothesis that reaches it depends on the batch it is in; the same batches give exactly
    fairseq-generate's hypotheses. With `limit`, only sentences 0..limit-1 are translated.
    `progress_label`: show progress (sentences done, ETA) under this label.
    """
    from fairseq.sequence_generator import SequenceGenerator

    from normrepro.tasks.translation.datamodule import make_batches

    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    generator = SequenceGenerator([model], dictionary, beam_size=beam, len_penalty=lenpen,
                                  max_len_a=max_len_a, max_len_b=max_len_b)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    batches = make_batches(dataset, max_tokens, max_sentences, seed=1)
    if limit is not None:
        batches = [b[b < n] for b in batches]
        batches = [b for b in batches if len(b)]
    out: dict[int, str] = {}
    eos = dictionary.eos()
    progress = None
    if progress_label:
        from normrepro.progress import Progress

        progress = Progress(progress_label, n, unit="sentences")
    for batch_ids in batches:
        sample = dataset.collater([dataset[int(i)] for i in batch_ids])
        sample = _to_device(sample, device)
        hypos = generator.generate([model], sample)
        for k, sid in enumerate(sample["id"].tolist()):
            if sid in out:
                raise AssertionError(f"sentence {sid} translated twice")
            tokens = hypos[k][0]["tokens"].int().cpu()
            out[sid] = dictionary.string(tokens, bpe_symbol="subword_nmt", extra_symbols_to_ignore={eos})
        if progress is not None:
            progress.update(len(out))
    if progress is not None:
        progress.close()
    missing = sorted(set(range(n)) - set(out))
    if missing or len(out) != n:
        raise AssertionError(f"{len(missing)} of {n} sentences were not translated (e.g. {missing[:5]})")
    model.train(was_training)
    return [out[i] for i in range(n)]


def _to_device(sample, device):
    if isinstance(sample, torch.Tensor):
        return sample.to(device)
    if isinstance(sample, dict):
        return {k: _to_device(v, device) for k, v in sample.items()}
    return sample


def evaluate_set(model, dictionary, data_dir: Path, hyps_dir: Path, name: str, beam: int, lenpen: float,
                 batch_size: int, device, max_len_a: float = 0, max_len_b: int = 200) -> dict:
    """Translate `data_dir`'s test split, write hypothesis files, return both BLEU scores."""
    from normrepro.tasks.translation.datamodule import load_pair_dataset
    from normrepro.tasks.translation.prepare import read_lines

    dataset = load_pair_dataset(data_dir, "test", dictionary, shuffle=False)
    refs_tok = read_lines(data_dir / "tok" / "test.en")
    refs_raw = read_lines(data_dir / "raw" / "test.en")
    if not len(dataset) == len(refs_tok) == len(refs_raw):
        raise AssertionError(f"{data_dir}: {len(dataset)} binarized vs {len(refs_tok)} tokenized vs "
                             f"{len(refs_raw)} raw test sentences")
    started = time.time()
    hyps = translate(model, dataset, dictionary, beam=beam, lenpen=lenpen, max_sentences=batch_size, device=device,
                     max_len_a=max_len_a, max_len_b=max_len_b,
                     progress_label=f"[evaluate] {hyps_dir.parent} {name}: beam search")
    seconds = time.time() - started
    detok = detokenize(hyps)
    atomic_write_text(hyps_dir / f"{name}.tok.txt", "".join(h + "\n" for h in hyps))
    atomic_write_text(hyps_dir / f"{name}.detok.txt", "".join(h + "\n" for h in detok))
    tok_score, tok_sig = tokenized_bleu(hyps, refs_tok)
    sacre_score, sacre_sig = detok_bleu(detok, refs_raw)
    LOG.info("%s: tokenized BLEU %.2f, sacreBLEU %.2f (%d sentences, %.0f s)", name, tok_score.score,
             sacre_score.score, len(hyps), seconds)
    return {"sentences": len(hyps), "bleu_tok": tok_score.score, "bleu_tok_detail": str(tok_score),
            "bleu_tok_signature": str(tok_sig), "bleu_sacre": sacre_score.score,
            "bleu_sacre_detail": str(sacre_score), "bleu_sacre_signature": str(sacre_sig),
            "generate_seconds": round(seconds, 1), "data": str(data_dir)}


def load_model(run_dir: Path, data_dir: Path, checkpoint: Optional[Path] = None, device=None):
    from normrepro.tasks.translation.datamodule import load_dictionary
    from normrepro.tasks.translation.model import build_model

    paths = run_paths(run_dir)
    cfg = load_config(paths["config"])
    dictionary = load_dictionary(data_dir)
    model = build_model(model_args(cfg), dictionary, dictionary)
    state = load_weights(checkpoint or paths["averaged"])
    model.load_state_dict(state["model"], strict=True)
    return model.to(device or torch.device("cpu")).eval(), dictionary, cfg, state


def set_key(folder: str | Path) -> str:
    """Short name of a test-only set: `.../ood-ding-de-en` -> `ding`."""
    name = Path(folder).name
    name = name[4:] if name.startswith("ood-") else name
    name = name[: -len("-de-en")] if name.endswith("-de-en") else name
    return name.replace("-", "_")


def evaluate_run(run_dir: Path, data_dir: Path, ood_dirs: list[Path], checkpoint: Optional[Path] = None,
                 device: Optional[torch.device] = None, process_start: Optional[float] = None) -> dict:
    """Score the run (module docstring). With `checkpoint`, only those weights, as they are."""
    from normrepro.tasks.translation.recompute_stats import apply_running_stats, load_running_stats, stats_batches

    started = process_start or time.time()
    paths = run_paths(run_dir)
    cfg = load_config(paths["config"])
    train = read_json(paths["train"]) if paths["train"].is_file() else {}
    ev = cfg.get("eval", {})
    final = {"arm": cfg.get("arm"), "seed": cfg.get("seed"), "profile": cfg.get("profile"),
             "dataset": str(data_dir.name), "train": train, "status": train.get("status", "ok")}
    sets = {"test": data_dir} | {set_key(d): Path(d) for d in ood_dirs}
    final["sets"] = {}
    # Both ways of treating the running statistics (primary: recomputed for the averaged weights).
    both = checkpoint is None and stats_batches(cfg) > 0
    secondary = None
    if final["status"] == "diverged":
        LOG.warning("%s diverged during training; recording BLEU as null", run_dir)
        for name in sets:
            final["sets"][name] = {"bleu_tok": None, "bleu_sacre": None, "data": str(sets[name])}
        if both:
            secondary = {"bleu_tok": None, "bleu_sacre": None}
    else:
        device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model, dictionary, _, state = load_model(run_dir, data_dir, checkpoint, device)
        final["checkpoint"] = {"path": str(checkpoint or paths["averaged"]),
                               "averaged": state.get("averaged", []), "updates": state.get("updates", [])}
        args = (int(ev.get("beam", 5)), float(ev.get("lenpen", 1.0)), int(ev.get("batch_size", 128)), device,
                float(ev.get("max_len_a", 0)), int(ev.get("max_len_b", 200)))
        if both:
            stats = load_running_stats(paths["running_stats"], paths["averaged"])
            model.load_state_dict(apply_running_stats(state["model"], stats), strict=True)
            final["running_stats"] = {
                "primary": "recomputed", "secondary": "averaged",
                "recomputed": {k: stats.get(k) for k in ("status", "batches", "requested_batches", "sentences",
                                                         "target_tokens", "modules", "seed", "seconds")}}
        for name, folder in sets.items():
            final["sets"][name] = evaluate_set(model, dictionary, folder, paths["hyps"], name, *args)
            if not all(math.isfinite(final["sets"][name][k]) for k in ("bleu_tok", "bleu_sacre")):
                final["status"] = "diverged"
        if both:
            if stats.get("buffers"):
                model.load_state_dict(state["model"], strict=True)
                secondary = evaluate_set(model, dictionary, data_dir, paths["hyps"] / "averaged_stats", "test", *args)
                same = False
            else:
                # No running statistics (LayerNorm) or none recomputed: the very same model.
                secondary, same = dict(final["sets"]["test"]), True
            final["running_stats"]["averaged"] = {"sets": {"test": secondary}, "same_as_primary": same}
        final["bleu_tok_signature"] = final["sets"]["test"]["bleu_tok_signature"]
        final["bleu_sacre_signature"] = final["sets"]["test"]["bleu_sacre_signature"]
    # Flat keys for the generic summary (normrepro.summary reads numbers at the top level).
    for name, res in final["sets"].items():
        final[f"{name}_bleu_tok"] = res["bleu_tok"]
        final[f"{name}_bleu_sacre"] = res["bleu_sacre"]
    if secondary is not None:
        final[f"test_{AVGSTATS}_bleu_tok"] = secondary["bleu_tok"]
        final[f"test_{AVGSTATS}_bleu_sacre"] = secondary["bleu_sacre"]
    final["eval_seconds"] = round(time.time() - started, 1)
    atomic_write_json(paths["final"], final)
    from normrepro.provenance import write_env_json

    write_env_json(paths["env"], wall_time_s=(train.get("wall_time_s") or 0) + final["eval_seconds"],
                   train_wall_time_s=train.get("wall_time_s"), eval_wall_time_s=final["eval_seconds"])
    return final


def check_inputs(run_dir: Path, data_dir: Path, ood_dirs: list[Path]) -> None:
    """The data folders match their manifests, and the training data is what the run saw."""
    from normrepro.rundir import STAMP, parse_stamp

    paths = run_paths(run_dir)
    if not paths["config"].is_file():
        raise UserError(f"{paths['config']} not found; resolve and train the run first (make does)")
    _, fingerprint = verified_data(data_dir)
    for folder in ood_dirs:
        verified_data(folder)
    stamp = Path(run_dir) / STAMP
    if stamp.is_file():
        _, trained_on = parse_stamp(stamp.read_text(encoding="utf-8"))
        if trained_on is not None and trained_on != fingerprint:
            raise DataError(f"{run_dir} was trained on other data than {data_dir} holds now; "
                            "rerun make to retrain it")


def run_stage(run_dir: Path, data: Path | None = None, ood: list[Path] = (),
              process_start: float | None = None) -> int:
    """The `evaluate` stage for one trained run folder: the averaged checkpoint with recomputed
    and with averaged running statistics; `data` defaults to the folder its config names."""
    quiet_logging()
    cfg = load_config(run_paths(run_dir)["config"])
    data = Path(data) if data is not None else data_dir(cfg)
    check_inputs(run_dir, data, list(ood))
    # The run's own thread count (runs may execute side by side, see parallel_runs).
    set_threads(cfg["trainer"].get("threads"))
    final = evaluate_run(run_dir, data, list(ood), None, process_start=process_start)
    print(json.dumps({k: v for k, v in final.items() if k.endswith(("_bleu_tok", "_bleu_sacre"))}))
    return 0

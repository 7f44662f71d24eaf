"""The Lightning module that trains the norm-swapped fairseq transformer, and its run recorder.

Training step = fairseq's `label_smoothed_cross_entropy` criterion and trainer, step for step:

* loss = `label_smoothed_nll_loss(lprobs, target, ε=0.1, ignore_index=pad)` summed over the batch
  and divided by the number of target tokens (over all ranks under DDP: each rank's sum is scaled
  by W / Σ ntokens so that DDP's gradient averaging yields Σ loss / Σ ntokens, as fairseq does);
* the torch seed is reset to `seed + updates` before every step, as fairseq's trainer does, so
  dropout masks depend only on the update number (an interrupted run resumes bit for bit);
* Adam(β = 0.9, 0.98) with decoupled weight decay (fairseq's Adam applies `p -= lr·wd·p`, which is
  torch's AdamW) and fairseq's `inverse_sqrt` schedule;
* optional gradient-norm clipping (Lightning's `gradient_clip_val`; 0 = off as in the paper).

Losses are logged as fairseq logs them: base 2 (bits per target token), `ppl = 2^nll_loss`.
Validation accumulates loss sums and token counts and reduces them across ranks once at the end.
A non-finite training or validation loss marks the run `diverged` and stops it.

`RunRecorder` (a callback) writes after every validation: a row of `metrics.csv` and a
weights-only snapshot `checkpoints/snapshot_u<updates>.pt` ({"model", "updates", "epoch",
"val_loss"}: loadable with `torch.load(weights_only=True)`), keeping the last `keep` of them for
checkpoint averaging.
"""

from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path
from typing import Optional

import lightning as L
import torch

from fairseq.criterions.label_smoothed_cross_entropy import label_smoothed_nll_loss

from normrepro.io import atomic_path, atomic_write_text
from normrepro.tasks.translation.common import LOG, METRIC_COLUMNS, inverse_sqrt_lr, snapshot_paths
from normrepro.tasks.translation.model import build_model

LN2 = math.log(2.0)


class TranslationModule(L.LightningModule):
    def __init__(self, model_args: dict, dictionary, optim: dict, label_smoothing: float = 0.1,
                 seed: int = 1, val_bleu: Optional[dict] = None):
        super().__init__()
        self.model_args, self.optim_cfg = dict(model_args), dict(optim)
        self.dictionary, self.pad = dictionary, dictionary.pad()
        self.label_smoothing, self.seed = float(label_smoothing), int(seed)
        self.val_bleu_cfg = dict(val_bleu or {})
        self.model = build_model(self.model_args, dictionary, dictionary)
        self.diverged = False
        self._reset_train_sums()
        self._reset_val_sums()
        self.last_val: dict = {}

    # -- loss --------------------------------------------------------------------------------
    def compute_loss(self, batch):
        """Summed label-smoothed loss and NLL (natural log) and the target token count."""
        net_output = self.model(**batch["net_input"])
        lprobs = self.model.get_normalized_probs(net_output, log_probs=True)
        target = batch["target"]
        loss, nll = label_smoothed_nll_loss(lprobs.view(-1, lprobs.size(-1)), target.view(-1),
                                            self.label_smoothing, ignore_index=self.pad, reduce=True)
        return loss, nll, target.ne(self.pad).sum()

    def _reset_train_sums(self):
        self._tr_loss = self._tr_nll = self._tr_tok = None
        self._tr_started = time.time()

    def _reset_val_sums(self):
        self._val = torch.zeros(3, dtype=torch.float64)

    def training_step(self, batch, batch_idx):
        # fairseq's trainer seeds every update with seed + updates (dropout independent of history).
        torch.manual_seed(self.seed + self.global_step)
        if torch.cuda.is_available():
            torch.cuda.manual_seed_all(self.seed + self.global_step)
        loss, nll, ntok = self.compute_loss(batch)
        world = self.trainer.world_size if self._trainer is not None else 1
        if world > 1:
            total = ntok.detach().clone().float()
            torch.distributed.all_reduce(total)
            scale = world / total.clamp_min(1.0)
        else:
            scale = 1.0 / ntok.clamp_min(1).float()
        with torch.no_grad():
            d = loss.detach().float()
            self._tr_loss = d if self._tr_loss is None else self._tr_loss + d
            self._tr_nll = nll.detach().float() if self._tr_nll is None else self._tr_nll + nll.detach().float()
            self._tr_tok = ntok.detach() if self._tr_tok is None else self._tr_tok + ntok.detach()
        return loss * scale

    def validation_step(self, batch, batch_idx):
        if "net_input" not in batch:  # an empty padding batch of a shorter DDP shard
            return
        loss, nll, ntok = self.compute_loss(batch)
        self._val += torch.stack([loss.detach().double().cpu(), nll.detach().double().cpu(),
                                  ntok.detach().double().cpu()])

    def on_validation_epoch_start(self):
        self._reset_val_sums()
        self._val_started = time.time()

    def on_validation_epoch_end(self):
        if self.trainer.sanity_checking:
            return
        val = self._val.to(self.device)
        train = torch.zeros(3, dtype=torch.float64, device=self.device)
        if self._tr_tok is not None:
            train = torch.stack([self._tr_loss.double(), self._tr_nll.double(), self._tr_tok.double()]).to(self.device)
        if self.trainer.world_size > 1:
            torch.distributed.all_reduce(val)
            torch.distributed.all_reduce(train)
        val, train = val.cpu().tolist(), train.cpu().tolist()
        elapsed = max(getattr(self, "_val_started", time.time()) - self._tr_started, 1e-9)
        row = {
            "updates": int(self.global_step),
            "epoch": int(self.current_epoch) + 1,
            "train_loss": train[0] / train[2] / LN2 if train[2] else float("nan"),
            "train_nll_loss": train[1] / train[2] / LN2 if train[2] else float("nan"),
            "val_loss": val[0] / val[2] / LN2 if val[2] else float("nan"),
            "val_nll_loss": val[1] / val[2] / LN2 if val[2] else float("nan"),
            "lr": self.current_lr(),
            "train_tokens": int(train[2]),
            "train_tokens_per_s": train[2] / elapsed,
        }
        row["val_ppl"] = 2 ** row["val_nll_loss"] if math.isfinite(row["val_nll_loss"]) else float("nan")
        if not (math.isfinite(row["val_loss"]) and (math.isfinite(row["train_loss"]) or not train[2])):
            self.diverged = True
            self.trainer.should_stop = True
            LOG.warning("non-finite loss at update %d: marking the run diverged", self.global_step)
        # Beam search on a model with NaN weights never finishes a hypothesis: skip it then.
        row["val_bleu"] = float("nan") if self.diverged else self.quick_bleu()
        self.last_val = row
        # inf instead of NaN keeps EarlyStopping/ModelCheckpoint from raising on a diverged run.
        self.log("val_loss", row["val_loss"] if math.isfinite(row["val_loss"]) else float("inf"),
                 prog_bar=True, sync_dist=False)
        self._reset_train_sums()

    def current_lr(self) -> float:
        opt = self.trainer.optimizers[0] if self.trainer.optimizers else None
        return float(opt.param_groups[0]["lr"]) if opt is not None else float("nan")

    @torch.no_grad()
    def quick_bleu(self) -> float:
        """Greedy tokenized BLEU on the first `val_bleu.sentences` validation sentences (rank 0)."""
        n = int(self.val_bleu_cfg.get("sentences") or 0)
        dm = self.trainer.datamodule
        if n <= 0 or dm is None or self.trainer.global_rank != 0:
            return float("nan")
        from normrepro.tasks.translation.evaluate import tokenized_bleu, translate

        ds = dm.dataset("valid")
        hyps = translate(self.model, ds, self.dictionary, beam=int(self.val_bleu_cfg.get("beam", 1)),
                         device=self.device, limit=n)
        refs = [self.dictionary.string(ds[i]["target"], bpe_symbol="subword_nmt") for i in range(len(hyps))]
        return tokenized_bleu(hyps, refs)[0].score

    # -- optimisation ----------------------------------------------------------------------------
    def configure_optimizers(self):
        o = self.optim_cfg
        lr = float(o["lr"])
        # foreach: one op per step for all tensors instead of a Python loop over them (torch's
        # CPU default); the same bits (tests/tasks/test_optimizers.py), 2 ms less per update
        # of the cpu model on one thread
        opt = torch.optim.AdamW(self.parameters(), lr=lr, betas=tuple(o.get("betas", (0.9, 0.98))),
                                eps=float(o.get("eps", 1e-8)), weight_decay=float(o.get("weight_decay", 0.0)),
                                foreach=True)
        warm, init = int(o["warmup_updates"]), float(o.get("warmup_init_lr", 1e-7))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda n: inverse_sqrt_lr(n, lr, warm, init) / lr)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}


class RunRecorder(L.Callback):
    """metrics.csv rows and weights-only snapshots after every validation (see module doc)."""

    def __init__(self, run_dir: Path, keep: int = 5):
        self.run_dir, self.keep = Path(run_dir), int(keep)
        self.metrics_path = self.run_dir / "metrics.csv"
        self.rows: list[dict] = []
        self.wall_offset = 0.0
        self._t0 = time.time()

    def on_train_start(self, trainer, pl_module):
        # After a resume (the loop state is restored by now, unlike in on_fit_start) keep the rows
        # up to the restored update count; later ones are redone.
        self._t0 = time.time()
        if self.metrics_path.is_file():
            with open(self.metrics_path, newline="", encoding="utf-8") as fh:
                rows = list(csv.DictReader(fh))
            self.rows = [r for r in rows if int(r["updates"]) <= trainer.global_step]
            if self.rows:
                self.wall_offset = float(self.rows[-1]["wall_s"])

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or not pl_module.last_val:
            return
        row = dict(pl_module.last_val, wall_s=self.wall_offset + time.time() - self._t0)
        self.rows = [r for r in self.rows if int(r["updates"]) < row["updates"]] + [row]
        if trainer.is_global_zero:
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(self.rows)
            atomic_write_text(self.metrics_path, buf.getvalue())
            if math.isfinite(row["val_loss"]):
                self._snapshot(pl_module, row)

    def _snapshot(self, pl_module, row):
        state = {k: v.detach().cpu().clone() for k, v in pl_module.model.state_dict().items()}
        path = self.run_dir / "checkpoints" / f"snapshot_u{row['updates']:07d}.pt"
        with atomic_path(path, suffix=".pt") as tmp:
            torch.save({"model": state, "updates": int(row["updates"]), "epoch": int(row["epoch"]),
                        "val_loss": float(row["val_loss"])}, tmp)
        for old in snapshot_paths(self.run_dir)[: -self.keep]:
            old.unlink()
        LOG.info("update %d: val_loss %.3f, train_loss %.3f, %.0f tok/s", row["updates"], row["val_loss"],
                 row["train_loss"], row["train_tokens_per_s"])

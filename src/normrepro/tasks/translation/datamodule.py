"""Lightning data module around fairseq's binarized language-pair data and token batching.

Batches are built the way `fairseq-train` builds them: indices ordered by (target, source) length
with a seeded random tie-break (`LanguagePairDataset.ordered_indices` under `numpy_seed(seed)`),
packed by `batch_by_size` up to `max_tokens` (padded tokens of the longer side) with
`required_batch_size_multiple=1`, so no sentence is ever dropped to round a batch; each epoch
shuffles the list of batches with `numpy` seed `seed + epoch` (epochs counted from 1, as in fairseq).

`ShardedBatchSampler` then deals the batches to DDP ranks: rank r takes batches r, r+W, r+2W, ...
so ranks see disjoint batches. Training drops the last `len % W` batches of the (already shuffled)
epoch so every rank runs the same number of steps (a different remainder each epoch); evaluation
pads the shorter ranks with empty batches instead, so every sentence is scored exactly once.

The train loader is resumable: Lightning saves `state_dict()` (epoch and batches already trained,
counted in `on_before_batch_transfer`, i.e. when a batch really goes to the model, not when the
loader prefetches it) in its checkpoint, and after `load_state_dict()` the sampler skips those
batches, so an interrupted run continues with exactly the batches it had not seen.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from fairseq.data import Dictionary, LanguagePairDataset, data_utils

SRC, TGT = "de", "en"


def load_dictionary(data_dir: Path) -> Dictionary:
    """The joined dictionary of a prepared dataset (`bin/dict.de.txt` == `bin/dict.en.txt`)."""
    path = Path(data_dir) / "bin" / f"dict.{SRC}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; prepare the data first (make does; or "
                                "`python -m normrepro.stages.prepare --task translation ...`)")
    return Dictionary.load(str(path))


def load_pair_dataset(data_dir: Path, split: str, dictionary: Dictionary, shuffle: bool) -> LanguagePairDataset:
    """fairseq's `LanguagePairDataset` of `bin/{split}.de-en.{de,en}` (as the translation task loads it)."""
    prefix = Path(data_dir) / "bin" / f"{split}.{SRC}-{TGT}."
    src = data_utils.load_indexed_dataset(str(prefix) + SRC, dictionary)
    tgt = data_utils.load_indexed_dataset(str(prefix) + TGT, dictionary)
    if src is None or tgt is None:
        raise FileNotFoundError(f"binarized split {prefix}{{{SRC},{TGT}}}.{{bin,idx}} not found in {data_dir}")
    if len(src) != len(tgt):
        raise ValueError(f"{prefix}: {len(src)} source vs {len(tgt)} target sentences")
    return LanguagePairDataset(src, src.sizes, dictionary, tgt, tgt.sizes, dictionary,
                               left_pad_source=True, left_pad_target=False, shuffle=shuffle)


def make_batches(dataset: LanguagePairDataset, max_tokens: Optional[int], max_sentences: Optional[int] = None,
                 seed: int = 1, max_positions: Optional[tuple[int, int]] = None,
                 drop_too_long: bool = False, required_batch_size_multiple: int = 1) -> list[np.ndarray]:
    """fairseq's batches of sample indices (see module doc). Sentences longer than
    `max_positions` are dropped when `drop_too_long`, else they are an error. `max_tokens=None`
    batches by `max_sentences` alone (fairseq-generate's `--batch-size`)."""
    with data_utils.numpy_seed(seed):
        indices = dataset.ordered_indices()
    if max_positions is not None:
        indices, ignored = dataset.filter_indices_by_size(indices, max_positions)
        if len(ignored) and not drop_too_long:
            raise ValueError(f"{len(ignored)} sentences are longer than max positions {max_positions} "
                             f"(e.g. index {ignored[0]}); evaluation must translate every sentence")
    if len(indices) and max_tokens is not None:
        sizes = dataset.num_tokens_vec(indices)
        if sizes.max() > max_tokens:
            worst = int(indices[int(sizes.argmax())])
            raise ValueError(f"sentence {worst} has {int(sizes.max())} tokens, more than "
                             f"max_tokens={max_tokens}; raise max_tokens")
    return [np.asarray(b) for b in dataset.batch_by_size(indices, max_tokens=max_tokens,
                                                          max_sentences=max_sentences,
                                                          required_batch_size_multiple=int(required_batch_size_multiple))]


class ShardedBatchSampler(torch.utils.data.Sampler):
    """Yields `(position, indices)` for this rank's share of the epoch's batches (module doc)."""

    def __init__(self, batches: list, num_replicas: int = 1, rank: int = 0, shuffle: bool = True,
                 seed: int = 1, even: bool = True):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside [0, {num_replicas})")
        self.batches = [np.asarray(b) for b in batches]
        self.num_replicas, self.rank = num_replicas, rank
        self.shuffle, self.seed, self.even = shuffle, seed, even
        self.epoch = 1
        self._resume: Optional[dict] = None
        self.consumed = 0  # batches of the current epoch that reached the model (training only)

    def set_epoch(self, epoch: int) -> None:
        """Lightning passes its 0-based epoch; fairseq counts epochs from 1."""
        self.epoch = int(epoch) + 1

    def epoch_batches(self) -> list:
        batches = list(self.batches)
        if self.shuffle:
            np.random.RandomState(self.seed + self.epoch).shuffle(batches)
        W = self.num_replicas
        if self.even:
            batches = batches[: len(batches) - len(batches) % W]
        else:
            batches = batches + [np.zeros(0, dtype=np.int64)] * ((-len(batches)) % W)
        return batches[self.rank::W]

    def __len__(self) -> int:
        n, W = len(self.batches), self.num_replicas
        return n // W if self.even else -(-n // W)

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        mine = self.epoch_batches()
        start = 0
        if self._resume is not None and self._resume.get("epoch") == self.epoch:
            start = int(self._resume.get("consumed", 0))
        self._resume = None
        self.consumed = start
        for pos in range(start, len(mine)):
            yield pos, mine[pos]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, state: dict) -> None:
        self._resume = dict(state)


class _BatchDataset(Dataset):
    """Maps `(position, indices)` to fairseq's collated batch, plus its position in the epoch."""

    def __init__(self, dataset: LanguagePairDataset):
        self.dataset = dataset

    def __getitem__(self, item):
        pos, indices = item
        batch = self.dataset.collater([self.dataset[int(i)] for i in indices])
        batch["position"] = pos
        return batch

    def __len__(self):
        return len(self.dataset)


def _keep(batch):
    return batch


class ResumableLoader(DataLoader):
    """A DataLoader whose position in the epoch Lightning saves and restores (`_Stateful`)."""

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)


def batch_loader(dataset: LanguagePairDataset, sampler: ShardedBatchSampler, num_workers: int = 0,
                 resumable: bool = False) -> DataLoader:
    cls = ResumableLoader if resumable else DataLoader
    return cls(_BatchDataset(dataset), sampler=sampler, batch_size=None, collate_fn=_keep,
               num_workers=num_workers, persistent_workers=num_workers > 0)


def datamodule_from_config(data_dir: str | Path, cfg: dict) -> "TranslationDataModule":
    """The data module of a resolved run config (its batching and seed), as training builds it."""
    d = cfg["data"]
    return TranslationDataModule(data_dir, max_tokens=d["max_tokens"], max_sentences=d.get("max_sentences"),
                                 seed=int(cfg["seed"]), train_max_positions=d.get("train_max_positions"),
                                 num_workers=int(d.get("num_workers", 0)),
                                 required_batch_size_multiple=int(d.get("required_batch_size_multiple") or 1))


class TranslationDataModule(L.LightningDataModule):
    """Train/valid loaders of a prepared dataset (`data_dir` from `normrepro.tasks.translation.prepare`).

    `max_tokens` bounds each batch; `train_max_positions` drops longer training pairs (fairseq's
    `--max-source/target-positions` filter), never validation ones.
    """

    def __init__(self, data_dir: str | Path, max_tokens: int = 4096, max_sentences: Optional[int] = None,
                 seed: int = 1, train_max_positions: Optional[int] = None,
                 eval_max_tokens: Optional[int] = None, num_workers: int = 0,
                 required_batch_size_multiple: int = 1):
        super().__init__()
        # fairseq's --required-batch-size-multiple (default 8, which the official scripts keep)
        # rounds training batches' sentence counts; validation/test batches always use 1.
        self.required_batch_size_multiple = int(required_batch_size_multiple)
        self.data_dir = Path(data_dir)
        self.max_tokens, self.max_sentences, self.seed = int(max_tokens), max_sentences, int(seed)
        self.train_max_positions = train_max_positions
        self.eval_max_tokens = int(eval_max_tokens or max_tokens)
        self.num_workers = num_workers
        self.dictionary = load_dictionary(self.data_dir)
        self._datasets: dict[str, LanguagePairDataset] = {}
        self.train_sampler: Optional[ShardedBatchSampler] = None
        self.dropped_train = 0

    def dataset(self, split: str) -> LanguagePairDataset:
        if split not in self._datasets:
            self._datasets[split] = load_pair_dataset(self.data_dir, split, self.dictionary, shuffle=split == "train")
        return self._datasets[split]

    def _world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 1, 0
        return trainer.world_size, trainer.global_rank

    def train_batches(self) -> list:
        ds = self.dataset("train")
        mp = (self.train_max_positions, self.train_max_positions) if self.train_max_positions else None
        batches = make_batches(ds, self.max_tokens, self.max_sentences, self.seed, mp, drop_too_long=True,
                               required_batch_size_multiple=self.required_batch_size_multiple)
        self.dropped_train = len(ds) - sum(len(b) for b in batches)
        return batches

    def train_dataloader(self):
        W, rank = self._world()
        self.train_sampler = ShardedBatchSampler(self.train_batches(), W, rank, shuffle=True, seed=self.seed, even=True)
        return batch_loader(self.dataset("train"), self.train_sampler, self.num_workers, resumable=True)

    def eval_dataloader(self, split: str) -> DataLoader:
        W, rank = self._world()
        ds = self.dataset(split)
        batches = make_batches(ds, self.eval_max_tokens, self.max_sentences, self.seed)
        return batch_loader(ds, ShardedBatchSampler(batches, W, rank, shuffle=False, even=False))

    def val_dataloader(self):
        return self.eval_dataloader("valid")

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        # Count the training batches that reach the model (the loader may have prefetched more).
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.training and self.train_sampler is not None and "position" in batch:
            self.train_sampler.consumed = int(batch["position"]) + 1
        batch.pop("position", None)
        return batch

"""The LightningDataModule of the ConvNeXt replication: `data.ImageClassificationData` for Lightning.

All data logic (splits, samplers, transforms) lives in `normrepro.tasks.image_classification.data`; this class only
tells it which DDP rank, world size and epoch a loader is for, which Lightning knows.
"""

from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader

from normrepro.tasks.image_classification.data import ImageClassificationData


class ConvNeXtDataModule(L.LightningDataModule):
    """Train / held-out validation / test loaders of one data set, configured by `cfg["data"]`."""

    def __init__(self, data_cfg: dict, seed: int, batch_size: int):
        super().__init__()
        self.data = ImageClassificationData(data_cfg, seed, batch_size)

    # What the model and the train stage need to know, before or after setup().
    @property
    def spec(self):
        return self.data.spec

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    @property
    def in_chans(self) -> int:
        return self.data.in_chans

    @property
    def backend(self) -> str:
        return self.data.backend

    @property
    def split_sizes(self) -> dict[str, int]:
        return self.data.split_sizes

    def norm_stats(self) -> tuple[list[float], list[float]]:
        return self.data.norm_stats()

    def setup(self, stage: str | None = None) -> None:
        self.data.setup()

    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        # Lightning restores a checkpoint before asking for loaders: start at the resumed epoch.
        epoch = self.trainer.current_epoch if getattr(self, "trainer", None) is not None else 0
        return self.data.loader("train", True, rank, world, epoch)

    def val_dataloader(self):
        if self.data.size("val") == 0:
            return []  # the Trainer is configured with limit_val_batches=0 then
        rank, world = self._rank_world()
        return self.data.loader("val", False, rank, world)

    def test_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        return self.data.loader("test", False, rank, world)

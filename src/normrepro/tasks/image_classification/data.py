"""Image classification data for the ConvNeXt replication: preparation, splits and loaders.

Data sets and how they are served
---------------------------------
=============  =======  =====  ==========================================================
name           classes  size   backend
=============  =======  =====  ==========================================================
fashion-mnist  10       32     `tensor`: the IDX files are parsed once (`prepare`) into one
                               uint8 tensor file, padded 28→32 with the background value 0
                               and kept as 1 channel (the stem's `in_chans=1`; replicating
                               to 3 channels would only triple the first conv's input)
cifar10/100    10/100   32     `image`: torchvision's dataset over the raw folder, PIL
                               transforms (timm's RandAugment, random erasing) in workers
imagenette     10       160    `image`: ImageFolder over `imagenette2-160/{train,val}`
imagenet       1000     224    `image`: ImageFolder over the root recorded in MANIFEST.json
=============  =======  =====  ==========================================================

Splits: the validation set (monitoring, learning curves) is held out of the *training* split;
the test split (fashion-mnist/cifar `test`, imagenette/imagenet `val`) is touched only by the
evaluate stage. Held-out and subset indices are drawn with `data.split_seed` (default 0), not the
run seed, so every arm and seed sees exactly the same images and differs only in initialisation
and data order.

Determinism (resume = uninterrupted run): training batches are drawn by `EpochShuffleSampler`,
whose order depends only on (seed, epoch); it also reseeds the loader's generator per epoch, so
worker augmentation seeds do not depend on how many epochs this process has run. The tensor
backend augments whole batches on the training device (`augment_tensor_batch`), with the global
RNG the LightningModule reseeds at every step.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler

from normrepro import datacheck
from normrepro.errors import DataError
from normrepro.io import atomic_write_bytes, write_if_changed

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    num_classes: int
    in_chans: int
    image_size: int
    backend: str  # "tensor" or "image"
    test_split: str  # the split the evaluate stage reports on, as the data set names it


DATASETS: dict[str, DatasetSpec] = {
    "fashion-mnist": DatasetSpec("fashion-mnist", 10, 1, 32, "tensor", "test"),
    "cifar10": DatasetSpec("cifar10", 10, 3, 32, "image", "test"),
    "cifar100": DatasetSpec("cifar100", 100, 3, 32, "image", "test"),
    "imagenette": DatasetSpec("imagenette", 10, 3, 160, "image", "val"),
    "imagenet": DatasetSpec("imagenet", 1000, 3, 224, "image", "val"),
}

# Per-channel statistics for normalisation. Fashion-MNIST's are computed by `prepare` from the
# padded training images; these are the published values of the others.
_CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
_CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))

FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
PREPARED = "prepared.json"


class DataLayoutError(DataError):
    """Data or data settings are missing or malformed; the message says what to run or fix."""


def dataset_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise DataLayoutError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    return DATASETS[name]


# --------------------------------------------------------------------------------------------
# IDX (MNIST-family) files

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an IDX file (optionally gzipped): 2 zero bytes, dtype code, ndim, big-endian dims."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise DataLayoutError(f"cannot read IDX file {path}: {exc}") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataLayoutError(f"{path} is not an IDX file (bad magic {data[:4]!r})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise DataLayoutError(f"{path}: truncated IDX header")
    dims = struct.unpack(">" + "I" * ndim, data[4:header])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    count = int(np.prod(dims))
    if len(data) - header != count * dtype.itemsize:
        raise DataLayoutError(f"{path}: header says {dims} ({count * dtype.itemsize} bytes of "
                              f"data) but the file holds {len(data) - header}; re-fetch it")
    return np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(dims)


def _load_fashion_split(raw: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    img_name, lbl_name = FASHION_FILES[split]
    images = read_idx(raw / img_name)
    labels = read_idx(raw / lbl_name)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DataLayoutError(f"{raw}: {split} images {images.shape} and labels {labels.shape} "
                              "do not match (expected N×28×28 and N)")
    pad_h, pad_w = 32 - images.shape[1], 32 - images.shape[2]
    if pad_h < 0 or pad_w < 0:
        raise DataLayoutError(f"{raw}: images are {images.shape[1:]}, expected at most 32×32")
    # Centre the 28×28 digit-style images in 32×32 with the background value 0.
    padded = np.pad(images, ((0, 0), (pad_h // 2, pad_h - pad_h // 2),
                             (pad_w // 2, pad_w - pad_w // 2)))
    x = torch.from_numpy(np.ascontiguousarray(padded)).unsqueeze(1)  # N×1×32×32 uint8
    y = torch.from_numpy(labels.astype(np.int64))
    if int(y.min()) < 0 or int(y.max()) >= 10:
        raise DataLayoutError(f"{raw}: {split} labels outside 0..9")
    return x, y


# --------------------------------------------------------------------------------------------
# prepare: raw/<dataset> → processed/<dataset>/prepared.json (+ tensors for fashion-mnist)

def _raw_manifest(raw: Path, dataset: str) -> dict:
    """The raw download's MANIFEST.json, after checking every file it lists (size, sha256)."""
    return datacheck.verify_raw(raw, dataset)


def _image_root(dataset: str, raw: Path, manifest: dict) -> Path:
    if dataset == "imagenet":
        root = manifest.get("root")
        if not root:
            raise DataLayoutError(f"{raw}/MANIFEST.json has no 'root'; re-run "
                                  "python -m normrepro.fetch imagenet --imagenet-dir DIR")
        return Path(root)
    if dataset == "imagenette":
        return raw / "imagenette2-160"
    return raw


def _open_image_split(dataset: str, root: Path, train: bool):
    """The torchvision dataset of one split, without transforms (they are applied later)."""
    from torchvision import datasets

    try:
        if dataset == "cifar10":
            return datasets.CIFAR10(root=str(root), train=train, download=False)
        if dataset == "cifar100":
            return datasets.CIFAR100(root=str(root), train=train, download=False)
        folder = root / ("train" if train else "val")
        return datasets.ImageFolder(str(folder))
    except (RuntimeError, FileNotFoundError) as exc:
        expected = ("torchvision's CIFAR layout (cifar-10-batches-py/ or cifar-100-python/)"
                    if dataset.startswith("cifar") else "{train,val}/<class>/*.JPEG")
        raise DataLayoutError(f"{dataset}: cannot open {root} ({exc}); expected {expected}. "
                              f"Re-run python -m normrepro.fetch {dataset}") from exc


def prepare(dataset: str, raw: str | Path, out: str | Path) -> dict:
    """Check the raw data and write what training reads; returns the prepared.json content.

    prepared.json lists the files written here with their hashes (`files`) and the raw data's
    identity (`raw_fingerprint`); training and evaluation check them on load. Both it and the
    tensor file are rewritten only when their content changes, so preparing the same raw data
    again changes nothing downstream.
    """
    spec = dataset_spec(dataset)
    raw, out = Path(raw), Path(out)
    manifest = _raw_manifest(raw, dataset)
    info: dict = {"dataset": dataset, "num_classes": spec.num_classes, "in_chans": spec.in_chans,
                  "image_size": spec.image_size, "backend": spec.backend,
                  "raw_manifest": str(raw / "MANIFEST.json"),
                  "raw_fingerprint": datacheck.raw_fingerprint(manifest)}
    written: list[str] = []
    if dataset == "fashion-mnist":
        x_train, y_train = _load_fashion_split(raw, "train")
        x_test, y_test = _load_fashion_split(raw, "test")
        scaled = x_train.float().div_(255.0)
        mean, std = [float(scaled.mean())], [float(scaled.std())]
        tensors = {"train_images": x_train, "train_labels": y_train,
                   "test_images": x_test, "test_labels": y_test}
        tensor_file = out / "fashion-mnist.pt"
        # Saved through a buffer: torch names the archive after the file it writes to, so a
        # temporary file name would make every preparation's bytes (and hash) different.
        buffer = io.BytesIO()
        torch.save(tensors, buffer)
        data = buffer.getvalue()
        if not (tensor_file.is_file() and tensor_file.stat().st_size == len(data)
                and tensor_file.read_bytes() == data):
            atomic_write_bytes(tensor_file, data)
        written.append(tensor_file.name)
        # Relative to prepared.json, so the processed folder can be read from anywhere.
        info.update(tensor_file=tensor_file.name, n_train=len(y_train), n_test=len(y_test),
                    mean=mean, std=std)
    else:
        root = _image_root(dataset, raw, manifest)
        train_set = _open_image_split(dataset, root, True)
        test_set = _open_image_split(dataset, root, False)
        n_classes = len(train_set.classes)
        if n_classes != spec.num_classes or len(test_set.classes) != spec.num_classes:
            raise DataLayoutError(f"{dataset}: found {n_classes} training classes and "
                                  f"{len(test_set.classes)} test classes under {root}, "
                                  f"expected {spec.num_classes}")
        mean, std = {"cifar10": _CIFAR10_STATS, "cifar100": _CIFAR100_STATS}.get(
            dataset, (IMAGENET_MEAN, IMAGENET_STD))
        info.update(root=str(root.resolve()), n_train=len(train_set), n_test=len(test_set),
                    mean=list(mean), std=list(std))
    info["files"] = datacheck.file_entries(out, written)
    write_if_changed(out / PREPARED, json.dumps(info, indent=2, sort_keys=True) + "\n")
    return info


def _reprepare_hint(processed: Path) -> str:
    name = processed.name
    return (f"prepare it again: rm -r {processed} && make {processed}/{PREPARED} (or python -m "
            f"normrepro.tasks.image_classification.prepare --dataset {name} --raw data/raw/{name} --out {processed})")


def load_prepared(processed: str | Path, verify: bool = True) -> dict:
    """prepared.json of a processed data set; with `verify`, its files are checked against it."""
    processed = Path(processed)
    path = processed / PREPARED
    if not path.is_file():
        raise DataLayoutError(f"{path} not found; {_reprepare_hint(processed)}")
    try:
        with open(path, encoding="utf-8") as fh:
            info = json.load(fh)
    except ValueError as exc:
        raise DataLayoutError(f"{path} is not valid JSON ({exc}); "
                              f"{_reprepare_hint(processed)}") from None
    if verify:
        datacheck.verify_processed(processed, info, path, _reprepare_hint(processed))
    return info


def data_fingerprint(data_cfg: dict) -> str:
    """The identity of the data a run with `data_cfg` reads, after checking its files."""
    processed = Path(data_cfg.get("processed_root", "data/processed")) / data_cfg["dataset"]
    return datacheck.fingerprint(load_prepared(processed))


# --------------------------------------------------------------------------------------------
# splits and sampling

def split_indices(n_train: int, n_test: int, val_size: int, train_subset: int | None,
                  test_subset: int | None, split_seed: int) -> dict[str, np.ndarray]:
    """Deterministic held-out validation, training subset and test subset indices."""
    if val_size < 0 or val_size >= n_train:
        raise DataLayoutError(f"data.val_size={val_size} must be in [0, {n_train - 1}] "
                         f"(the training split has {n_train} images)")
    rng = np.random.default_rng(split_seed)
    perm = rng.permutation(n_train)
    val, rest = np.sort(perm[:val_size]), perm[val_size:]
    if train_subset is not None:
        if not 0 < train_subset <= len(rest):
            raise DataLayoutError(f"data.train_subset={train_subset} must be in [1, {len(rest)}] "
                             f"({n_train} training images minus {val_size} held out)")
        rest = rest[:train_subset]
    test = np.arange(n_test)
    if test_subset is not None:
        if not 0 < test_subset <= n_test:
            raise DataLayoutError(f"data.test_subset={test_subset} must be in [1, {n_test}]")
        test = np.sort(np.random.default_rng(split_seed + 1).permutation(n_test)[:test_subset])
    return {"train": np.sort(rest), "val": val, "test": test}


class EpochShuffleSampler(Sampler[int]):
    """Indices of one rank's shard; order depends only on (seed, epoch), never on history.

    Shuffled epochs use a permutation drawn from a generator seeded with (seed, epoch); the
    permutation is cut (drop_last) or padded by wrapping around so every rank gets the same
    number of samples, then rank r takes every world_size-th index, as DistributedSampler does.
    `loader_generator`, if given, is reseeded with (seed, epoch) too: the DataLoader draws its
    workers' base seed from it, so augmentation in workers is reproducible after a resume.
    """

    def __init__(self, n: int, *, seed: int, shuffle: bool, rank: int = 0, world_size: int = 1,
                 epoch: int = 0, drop_last: bool = False,
                 loader_generator: torch.Generator | None = None):
        if n <= 0:
            raise ValueError("EpochShuffleSampler needs at least one sample")
        self.n, self.seed, self.shuffle = n, int(seed), shuffle
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.loader_generator = loader_generator
        self.set_epoch(epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if self.loader_generator is not None:
            self.loader_generator.manual_seed(self._epoch_seed() + 1)

    def _epoch_seed(self) -> int:
        return (self.seed * 1_000_003 + self.epoch * 7919) % (2**62)

    def __len__(self) -> int:
        if self.drop_last:
            return self.n // self.world_size
        return math.ceil(self.n / self.world_size)

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self._epoch_seed())
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        total = len(self) * self.world_size
        if total > self.n:
            order = torch.cat([order, order[: total - self.n]])
        order = order[:total]
        return iter(order[self.rank::self.world_size].tolist())


# --------------------------------------------------------------------------------------------
# datasets

class TensorImages(Dataset):
    """uint8 images held in memory; a whole batch is gathered with one index (`__getitems__`)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, indices: np.ndarray):
        self.images = images
        self.labels = labels
        self.indices = torch.as_tensor(indices, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        j = self.indices[i]
        return self.images[j], self.labels[j]

    def __getitems__(self, idx: Sequence[int]):
        j = self.indices[torch.as_tensor(idx, dtype=torch.long)]
        return self.images[j], self.labels[j]


def _batch_as_is(batch):
    """collate_fn for TensorImages: `__getitems__` already returns stacked tensors."""
    return batch


class TransformedSubset(Dataset):
    """A subset of a transform-less torchvision dataset, with its own transform."""

    def __init__(self, base, indices: np.ndarray, transform: Callable):
        self.base, self.indices, self.transform = base, [int(i) for i in indices], transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        img, label = self.base[self.indices[i]]
        if hasattr(img, "mode") and img.mode != "RGB":
            img = img.convert("RGB")
        return self.transform(img), label


def build_image_transform(aug: dict, size: int, mean, std, train: bool) -> Callable:
    """PIL → normalised tensor, built by timm's `create_transform` as the official ConvNeXt code
    builds it (its `datasets.build_transform`).

    Train: RandomResizedCrop (`rrc`, scale `rrc_scale`, bicubic), horizontal flip, RandAugment
    (`rand_augment`, e.g. rand-m9-mstd0.5-inc1), normalisation and random erasing
    (`random_erasing`, pixel mode, one box). For small images (`crop: random_crop`) the random
    resized crop is replaced by a padded random crop, as the official code does for 32 x 32
    inputs (timm has no such crop). Eval: resize to size / `eval_crop_pct`, centre crop, both
    bicubic. Mixup/CutMix and label smoothing act on batches (timm's `Mixup`, in the
    LightningModule), not here.
    """
    from timm.data import create_transform
    from torchvision import transforms as T

    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if not train:
        return create_transform(size, is_training=False, interpolation="bicubic",
                                crop_pct=float(aug.get("eval_crop_pct", 1.0)), mean=mean, std=std)
    crop = aug.get("crop", "random_crop")
    if crop not in ("random_crop", "rrc"):
        raise DataLayoutError(f"data.augment.crop={crop!r}: use 'random_crop' or 'rrc'")
    transform = create_transform(
        size, is_training=True, scale=tuple(aug.get("rrc_scale", (0.08, 1.0))),
        hflip=float(aug.get("hflip", 0.5)), auto_augment=aug.get("rand_augment") or None,
        # timm turns color jitter off whenever RandAugment is on (the paper's setting)
        color_jitter=aug.get("color_jitter"), interpolation="bicubic", mean=mean, std=std,
        re_prob=float(aug.get("random_erasing", 0.0)), re_mode="pixel", re_count=1)
    if crop == "random_crop":
        # Resize + centre crop are no-ops at the native size; they make other sizes fit.
        transform.transforms[0:1] = [
            T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size),
            T.RandomCrop(size, padding=int(aug.get("crop_padding", 4)))]
    return transform


def augment_tensor_batch(x: torch.Tensor, aug: dict, mean: torch.Tensor, std: torch.Tensor,
                         train: bool, eraser: Callable | None = None) -> torch.Tensor:
    """uint8 (B, C, H, W) → normalised float, with random shift-crop and flip when training.

    Runs on the training device with the global RNG, which the LightningModule reseeds per step.
    """
    x = x.float().div_(255.0)
    if train:
        b, _, h, w = x.shape
        pad = int(aug.get("crop_padding", 0))
        if aug.get("crop", "random_crop") != "random_crop" or aug.get("rand_augment"):
            raise DataLayoutError("fashion-mnist is served as tensors: only crop: random_crop, hflip "
                             "and random_erasing are available (no rrc/rand_augment)")
        if pad > 0:
            # Shift each image by its own random offset: one gather over the flattened padded
            # image instead of a Python loop over samples.
            c = x.shape[1]
            wp = w + 2 * pad
            padded = torch.nn.functional.pad(x, (pad, pad, pad, pad)).flatten(2)
            oy = torch.randint(0, 2 * pad + 1, (b, 1, 1), device=x.device)
            ox = torch.randint(0, 2 * pad + 1, (b, 1, 1), device=x.device)
            rows = torch.arange(h, device=x.device).view(1, h, 1) + oy
            cols = torch.arange(w, device=x.device).view(1, 1, w) + ox
            index = (rows * wp + cols).flatten(1).unsqueeze(1).expand(b, c, h * w)
            x = padded.gather(2, index).view(b, c, h, w)
        p_flip = float(aug.get("hflip", 0.5))
        if p_flip > 0:
            flip = torch.rand(b, device=x.device) < p_flip
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
    x = (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    if train and eraser is not None:
        x = eraser(x)
    return x


# --------------------------------------------------------------------------------------------
# splits and loaders of one data set (the LightningDataModule in datamodule.py wraps this; the
# evaluate stage uses it directly, without importing Lightning)

class ImageClassificationData:
    """Train / held-out validation / test sets and loaders, configured by `cfg["data"]`."""

    def __init__(self, data_cfg: dict, seed: int, batch_size: int):
        self.cfg = dict(data_cfg)
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.spec = dataset_spec(self.cfg["dataset"])
        self.processed = Path(self.cfg.get("processed_root", "data/processed")) / self.spec.name
        self.info: dict | None = None
        self.split_sizes: dict[str, int] = {}
        self._sets: dict[str, Dataset] = {}

    # The model needs these before setup() runs (num_classes, in_chans).
    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    @property
    def in_chans(self) -> int:
        return self.spec.in_chans

    @property
    def image_size(self) -> int:
        return int(self.cfg.get("image_size") or self.spec.image_size)

    @property
    def backend(self) -> str:
        return self.spec.backend

    def norm_stats(self) -> tuple[list[float], list[float]]:
        info = self.info or load_prepared(self.processed, verify=False)
        return list(info["mean"]), list(info["std"])

    def setup(self) -> None:
        if self._sets:
            return
        self.info = load_prepared(self.processed)
        if self.info.get("dataset") != self.spec.name:
            raise DataLayoutError(f"{self.processed}/{PREPARED} is for {self.info.get('dataset')!r}, "
                                  f"not {self.spec.name!r}; re-run the prepare stage")
        aug = self.cfg.get("augment") or {}
        idx = split_indices(int(self.info["n_train"]), int(self.info["n_test"]),
                            int(self.cfg.get("val_size", 0)), self.cfg.get("train_subset"),
                            self.cfg.get("test_subset"), int(self.cfg.get("split_seed", 0)))
        self.split_sizes = {k: int(len(v)) for k, v in idx.items()}
        if self.backend == "tensor":
            tensor_file = self.processed / self.info["tensor_file"]
            try:
                tensors = torch.load(tensor_file, map_location="cpu", weights_only=True)
            except (RuntimeError, EOFError, OSError, ValueError) as exc:
                raise DataLayoutError(f"{tensor_file} cannot be read ({exc}); "
                                      f"{_reprepare_hint(self.processed)}") from None
            for split, src in (("train", "train"), ("val", "train"), ("test", "test")):
                self._sets[split] = TensorImages(tensors[f"{src}_images"], tensors[f"{src}_labels"],
                                                 idx[split])
        else:
            root = Path(self.info["root"])
            mean, std = self.norm_stats()
            base_train = _open_image_split(self.spec.name, root, True)
            base_test = _open_image_split(self.spec.name, root, False)
            size = self.image_size
            self._sets["train"] = TransformedSubset(
                base_train, idx["train"], build_image_transform(aug, size, mean, std, True))
            self._sets["val"] = TransformedSubset(
                base_train, idx["val"], build_image_transform(aug, size, mean, std, False))
            self._sets["test"] = TransformedSubset(
                base_test, idx["test"], build_image_transform(aug, size, mean, std, False))

    def size(self, split: str) -> int:
        self.setup()
        return len(self._sets[split])

    def loader(self, split: str, train: bool, rank: int = 0, world_size: int = 1,
               epoch: int = 0) -> DataLoader:
        """The loader of one split; `train` shuffles (per seed and epoch) and drops the last
        incomplete batch. Under DDP each rank gets its own shard."""
        self.setup()
        ds = self._sets[split]
        if train and len(ds) < self.batch_size * world_size:
            raise DataLayoutError(f"data: {len(ds)} training images but batch size "
                                  f"{self.batch_size} × {world_size} processes; lower "
                                  "data.batch_size or raise data.train_subset")
        generator = torch.Generator()
        sampler = EpochShuffleSampler(len(ds), seed=self.seed, shuffle=train, rank=rank,
                                      world_size=world_size, epoch=epoch, drop_last=train,
                                      loader_generator=generator)
        workers = int(self.cfg.get("num_workers", 0))
        common = dict(num_workers=workers, pin_memory=torch.cuda.is_available(),
                      persistent_workers=False, generator=generator)
        if workers > 0:
            common["prefetch_factor"] = int(self.cfg.get("prefetch_factor", 2))
        if self.backend == "tensor":
            batches = BatchSampler(sampler, self.batch_size, drop_last=train)
            return DataLoader(ds, batch_sampler=batches, collate_fn=_batch_as_is, **common)
        return DataLoader(ds, batch_size=self.batch_size, sampler=sampler, drop_last=train,
                          **common)

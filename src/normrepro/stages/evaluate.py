"""Stage `evaluate`: score a trained run on its test set(s) → RUN/final.json.

    python -m normrepro.stages.evaluate RUN [--data DIR] [--ood DIR ...]

The same command for every replication; RUN/config.yaml names the task, whose
`evaluate.run_stage` scores the run: image classification, top-1/top-5 of the final weights on
the test split; translation, beam search and BLEU of the averaged snapshots (running statistics
recomputed, and averaged) on the test set and every `--ood` set. `--data` defaults to the
processed folder the config names. A run that diverged is recorded as such, with no score.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from normrepro.errors import cli
from normrepro.progress import quiet_libraries
from normrepro.runtime import keep_freed_memory
from normrepro.stages._task import run_task, task_module


@cli
def main(argv: list[str] | None = None) -> int:
    process_start = time.time()
    parser = argparse.ArgumentParser(prog="python -m normrepro.stages.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="trained run folder")
    parser.add_argument("--data", type=Path, default=None, help="processed data folder (default: the config's)")
    parser.add_argument("--ood", type=Path, action="append", default=[],
                        help="a prepared test-only folder (e.g. .../ood-ding-de-en); repeatable")
    args = parser.parse_args(argv)
    quiet_libraries()
    keep_freed_memory()  # (fresh pages per tensor cost up to a fifth of a CPU step)
    task = run_task(args.run)
    return task_module(task, "evaluate").run_stage(args.run, args.data, args.ood,
                                                   process_start=process_start)


if __name__ == "__main__":
    sys.exit(main())

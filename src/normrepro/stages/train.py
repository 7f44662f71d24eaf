"""Stage `train`: train one arm × seed from its resolved config; resume it if interrupted.

    python -m normrepro.stages.train RUN [--data DIR]

The same command for every replication: RUN/config.yaml (written by `normrepro.plan`) names the
task (`task:`), whose `train.run_stage` trains. `--data` defaults to the processed folder the
config names (and, for image classification, must be that folder if given). A finished run
(its done-marker present: `env.json` for image classification, `train.json` for translation)
with the same training-relevant config and data is left as it is; a killed one resumes from
`checkpoints/last.ckpt`; one whose config or data changed is moved aside to
`RUN.replaced-<time>/` and started over (`normrepro.rundir`). The processed data is checked
against its stamp (sizes and hashes) before use.
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
    parser = argparse.ArgumentParser(prog="python -m normrepro.stages.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="run folder holding its resolved config.yaml")
    parser.add_argument("--data", type=Path, default=None, help="processed data folder (default: the config's)")
    args = parser.parse_args(argv)
    quiet_libraries()
    keep_freed_memory()  # (fresh pages per tensor cost up to a fifth of a CPU step)
    task = run_task(args.run)
    return task_module(task, "train").run_stage(args.run, args.data, process_start=process_start)


if __name__ == "__main__":
    sys.exit(main())

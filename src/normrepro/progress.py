"""Progress a person can follow, and logs without library noise.

`Progress` reports `done/total` of a long loop (training steps, beam-search batches) with rate,
elapsed time and ETA:

* on a terminal (stdout is a TTY, and make runs no parallel jobs that would interleave lines):
  one line redrawn in place, at most four times a second;
* otherwise (logs, CI): a plain line every `NORMREPRO_PROGRESS_EVERY` seconds (default 30), so
  log files get no carriage-return frames.

`training_progress(label)` is the same as a Lightning callback (rank 0 only). `quiet_libraries()`
keeps the logs to what a reader needs: no Lightning tips or device banners ("GPU available: ...",
"💡 Tip: ..."), no deprecation warnings from the libraries, no warnings about choices made on
purpose (few data-loader workers for in-memory tensors).
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings

_LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning",
                      "lightning_fabric")


def quiet_libraries() -> None:
    """Silence library noise; call after importing Lightning (its import resets its log level)."""
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*Checkpoint directory .* exists and is not empty.*")
    warnings.filterwarnings("ignore", message=r".*is smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    # DDP on CPU with channels-last BatchNorm models (normrepro.tasks.image_classification.module.memory_format):
    # torch says it "may impair performance", once per bucket and process.
    warnings.filterwarnings("ignore", message=r".*Grad strides do not match bucket view strides.*")
    for name in _LIGHTNING_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    # torch.compile on a CPU-only machine: "No CUDA runtime is found, using CUDA_HOME=..."
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    if not live_terminal(sys.stderr):
        # Libraries' tqdm bars (subword-nmt's BPE learning) are carriage-return frames in a log.
        os.environ.setdefault("TQDM_DISABLE", "1")


def _fmt_time(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def live_terminal(stream=None) -> bool:
    """True when a redrawn line is safe: a TTY, and no parallel make jobs sharing it."""
    stream = stream or sys.stdout
    if os.environ.get("NORMREPRO_PROGRESS", "") == "lines":
        return False
    makeflags = os.environ.get("MAKEFLAGS", "")
    parallel = "--jobserver" in makeflags or any(
        w.startswith("-j") and w != "-j1" for w in makeflags.split())
    return bool(getattr(stream, "isatty", lambda: False)()) and not parallel


class Progress:
    """Progress of `total` units of work (see the module docstring for the two display modes)."""

    def __init__(self, label: str, total: int | None, unit: str = "steps", stream=None,
                 every_s: float | None = None, live: bool | None = None, start: int = 0):
        self.label, self.total, self.unit = label, total, unit
        self.stream = stream or sys.stdout
        self.live = live_terminal(self.stream) if live is None else live
        self.every_s = every_s if every_s is not None else float(
            os.environ.get("NORMREPRO_PROGRESS_EVERY", "30"))
        self.start = time.monotonic()
        self.start_done = start  # work done before this process (a resumed run): not in the rate
        self.last_print = self.start
        self.done = start
        self._drawn = False

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        done_here = self.done - self.start_done
        rate = done_here / elapsed if elapsed > 0 else 0.0
        text = f"{self.label}  {self.unit} {self.done}"
        if self.total:
            text += f"/{self.total} ({100.0 * self.done / self.total:.0f}%)"
        text += f"  {rate:.2f} {self.unit}/s  elapsed {_fmt_time(elapsed)}"
        if self.total and rate > 0 and self.done < self.total:
            text += f"  ETA {_fmt_time((self.total - self.done) / rate)}"
        return text

    def update(self, done: int) -> None:
        self.done = done
        now = time.monotonic()
        if self.live:
            if now - self.last_print >= 0.25 or (self.total and done >= self.total):
                self.stream.write("\r" + self.line() + "\x1b[K")
                self.stream.flush()
                self.last_print, self._drawn = now, True
        elif now - self.last_print >= self.every_s:
            print(self.line(), file=self.stream, flush=True)
            self.last_print = now

    def close(self) -> None:
        if self.live and self._drawn:
            self.stream.write("\r" + self.line() + "\x1b[K\n")
            self.stream.flush()
            self._drawn = False


def training_progress(label: str):
    """A Lightning callback showing training progress in optimizer steps (rank 0 only)."""
    import lightning as L

    class TrainingProgress(L.Callback):
        def __init__(self):
            self.progress: Progress | None = None

        def on_train_start(self, trainer, pl_module):
            if not trainer.is_global_zero:
                return
            total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
            if total is None:
                try:
                    total = int(trainer.estimated_stepping_batches)
                except (ValueError, TypeError, RuntimeError):
                    total = None
            self.progress = Progress(label, total if total and total < 10**12 else None,
                                     start=int(trainer.global_step))

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if self.progress is not None:
                self.progress.update(int(trainer.global_step))

        def on_train_end(self, trainer, pl_module):
            if self.progress is not None:
                self.progress.close()

    return TrainingProgress()

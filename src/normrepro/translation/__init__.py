"""German→English translation with norm-swapped fairseq transformers (the PowerNorm replication).

Stages, each a `python -m normrepro.translation.<stage>` with explicit inputs and outputs:

* `prepare`   raw corpus → Moses tokens → joint BPE → fairseq-binarized data (+ raw references)
* `train`     one arm × seed with Lightning around fairseq's model and data pieces
* `average`   the last N weight snapshots of a run → `averaged.pt`
* `recompute_stats`  BN/PN running statistics for the averaged weights → `running_stats.pt`
* `evaluate`  beam search with fairseq's `SequenceGenerator`, tokenized BLEU and sacreBLEU
  (recomputed running statistics primary, averaged ones secondary)
* `summarize` per-dataset `summary.csv` and `runs.csv` (statistics of `normrepro.summary`)
* `plot`, `report`  figures and `results/powernorm/<profile>/report.md`
* `crosscheck`, `bench`  the same arm trained by `fairseq-train` vs the Lightning module

`model` holds the architecture (also registered for `fairseq-train --user-dir
src/normrepro/translation/fairseq_plugin`), `datamodule` and `module` the Lightning pieces.
This package's `__init__` imports nothing heavy so that every stage starts quickly.
"""

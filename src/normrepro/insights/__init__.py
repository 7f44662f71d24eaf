"""Experiments behind "why do transformers use LayerNorm rather than BatchNorm?" (issue 5).

One module per question, each a `python -m normrepro.insights.<stage> --out DIR` that writes a
CSV and a figure (PNG + PDF, atomically) in seconds on a CPU:

* `fluctuation`: records how far batch statistics (and the gradients flowing through them) are
  from the running statistics during training: `StatsRecorderCallback` for Lightning, the
  `BatchStatsRecorder` underneath it, and the plot of the records against "% of training".
* `causal`: how much a norm lets position t see positions > t (forward and backward), and the
  train/eval mismatch of batch statistics.
* `axes`: which elements share a statistic in each registry norm, measured by perturbation, drawn
  as normalisation cubes, with the answer to "is transformer LayerNorm instance norm?".
* `sync_cost`: the extra collectives and time of synchronised BatchNorm under a 2-process gloo
  group (`distributed.spawn_group` starts the processes).
* `padding`: how far masked (`batch`) and unmasked (`batch_unmasked`, padding counted in the
  statistics) BN statistics differ with the padding fraction of real batches; the two trainings
  compared.
* `ddp`: per-worker vs global BN statistics during a Lightning DDP fit (`WorkerStatsCallback`) and
  the per-worker vs synchronised BN comparison.
* `runs`: the training runs behind them (arms of the two replications with a recorder attached),
  configured in `replications/insights/`; `report`: `results/insights/<profile>/report.md`.
  `make replicate-insights` runs everything, then the shared index stage (`make report`).
"""

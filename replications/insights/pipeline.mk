# Insights pipeline (issue 5), included by the top-level Makefile. Every stage is a file:
#
#   data/processed/fashion-mnist/prepared.json         the image task's prepare rule
#   data/processed/<bible data>/MANIFEST.json          the translation task's prepare rule
#   results/insights/<profile>/                        everything one profile writes, nothing else:
#     runs/<run>/config.yaml                           plan     (normrepro.plan; rewritten only when
#                                                                it changes, a changed run moved
#                                                                aside first)
#       .../record.json                                train    (written last; an interrupted run
#                                                                resumes from its checkpoint)
#       .../final.json                                 evaluate (DDP runs: normrepro.stages.evaluate)
#     <stage>/args.txt                                 plan     (the stage's arguments from the
#                                                                profile, rewritten only on change)
#     fluctuation/fluctuation_summary.csv              1. batch vs running statistics
#     padding/padding_bins.csv                         2. masked vs unmasked BN
#     causal/causal.csv                                3. causal leakage
#     axes/axes.csv                                    4. normalisation axes
#     sync_cost/sync_cost.csv                          5. cost of synchronised BN ...
#     ddp/ddp.csv                                         ... and per-worker vs sync BN under DDP
#     report.md                                        report
#
# Runs: image-bn, text-bn, text-pn_v (fluctuation), text-bn_unmasked (padding, against text-bn),
# ddp-bn, ddp-bn_sync (DDP on 2 CPU processes); their configs come from the replications' own
# configs, see replications/insights/base.yaml. Each stage writes its CSV and figure atomically.
# The public target runs `normrepro.plan` first (see the top-level Makefile): it checks PROFILE,
# SET (overrides of the insights profile) and every run config, stops at the first problem with
# one line, then locks results/insights/<profile>/, writes the run configs and stage arguments and
# calls the private _ins-* goal with the command's variables (INS_*, and the data of the runs as
# IC_*/TR_* variables, which switch on the two tasks' data rules in mk/tasks/).

INS_REPL := replications/insights

.PHONY: replicate-insights _ins-replicate _ins-force

replicate-insights: $(SETUP) ## why transformers use LayerNorm: five experiments -> results/insights/<profile>/report.md (PROFILE SET)
	@$(PLAN) insights --goal replicate $(plan_args) -- $(MAKE) --no-print-directory _ins-replicate
	@$(MAKE) --no-print-directory report

_ins-force:

ifneq ($(filter _ins-%,$(MAKECMDGOALS)),)
ifeq ($(INS_RES),)
$(error the private _ins-* goals run from the public target (make replicate-insights), which checks the command first)
endif
INS_IMG_RUNS := image-bn ddp-bn ddp-bn_sync
INS_TXT_RUNS := text-bn text-bn_unmasked text-pn_v
INS_STAGES := causal axes sync_cost padding
rec = $(INS_RUNS)/$(1)/record.json

# Files of the pattern chains that make must not delete as intermediates.
.SECONDARY: $(foreach r,$(INS_IMG_RUNS) $(INS_TXT_RUNS),$(INS_RUNS)/$(r)/record.json)

_ins-replicate: $(INS_RES)/report.md
	@echo "[insights] report: $(INS_RES)/report.md (profile $(PROFILE))"

# Data: made by the tasks' rules (mk/tasks/*.mk: prepared.json, MANIFEST.json),
# which the plan's IC_*/TR_* variables switch on.

$(foreach r,$(INS_IMG_RUNS),$(call rec,$(r))): $(INS_RUNS)/%/record.json: $(INS_RUNS)/%/config.yaml $(INS_IMG_DATA)/prepared.json
	$(PY) -m normrepro.insights.runs train --config $< --out $(@D)

$(foreach r,$(INS_TXT_RUNS),$(call rec,$(r))): $(INS_RUNS)/%/record.json: $(INS_RUNS)/%/config.yaml $(INS_TXT_DATA)/MANIFEST.json
	$(PY) -m normrepro.insights.runs train --config $< --out $(@D) --data $(INS_TXT_DATA)

$(INS_RUNS)/ddp-%/final.json: $(INS_RUNS)/ddp-%/record.json
	$(PY) -m normrepro.stages.evaluate $(@D)

# 1. fluctuation: the first BN layer of a ConvNeXt on images vs a Transformer on text (+ PN-V)
$(INS_RES)/fluctuation/fluctuation_summary.csv: $(call rec,image-bn) $(call rec,text-bn) $(call rec,text-pn_v)
	$(PY) -m normrepro.insights.fluctuation --out $(@D) \
		--csv "images: ConvNeXt BN=$(INS_RUNS)/image-bn/batch_stats.csv" \
		--csv "text: Transformer BN=$(INS_RUNS)/text-bn/batch_stats.csv" \
		--csv "text: Transformer PN-V=$(INS_RUNS)/text-pn_v/batch_stats.csv"

# 2. padding: statistics vs padding fraction (trained masked-BN model) and the two trainings
$(INS_RES)/padding/padding_bins.csv: $(INS_RES)/padding/args.txt $(call rec,text-bn) $(call rec,text-bn_unmasked)
	$(PY) -m normrepro.insights.padding --masked-run $(INS_RUNS)/text-bn \
		--unmasked-run $(INS_RUNS)/text-bn_unmasked --data $(INS_TXT_DATA) --out $(@D) $$(cat $<)

# 3, 4. causal leakage and normalisation axes (no training, seconds)
$(INS_RES)/causal/causal.csv: $(INS_RES)/causal/args.txt
	$(PY) -m normrepro.insights.causal --out $(@D) $$(cat $<)

$(INS_RES)/axes/axes.csv: $(INS_RES)/axes/args.txt
	$(PY) -m normrepro.insights.axes --out $(@D) $$(cat $<)

# 5. data parallelism: the cost per BN layer, then the two DDP runs against each other
$(INS_RES)/sync_cost/sync_cost.csv: $(INS_RES)/sync_cost/args.txt
	$(PY) -m normrepro.insights.sync_cost --out $(@D) $$(cat $<)

$(INS_RES)/ddp/ddp.csv: $(INS_RUNS)/ddp-bn/final.json $(INS_RUNS)/ddp-bn_sync/final.json $(INS_RES)/sync_cost/sync_cost.csv
	$(PY) -m normrepro.insights.ddp --run "per-worker BN=$(INS_RUNS)/ddp-bn" \
		--run "synchronised BN=$(INS_RUNS)/ddp-bn_sync" --sync-cost $(INS_RES)/sync_cost/sync_cost.csv --out $(@D)

$(INS_RES)/report.md: $(INS_RES)/fluctuation/fluctuation_summary.csv $(INS_RES)/padding/padding_bins.csv \
		$(INS_RES)/causal/causal.csv $(INS_RES)/axes/axes.csv $(INS_RES)/ddp/ddp.csv
	$(PY) -m normrepro.insights.report report --results $(INS_RES) --profile $(PROFILE) --out $@
endif

# Insights pipeline (issue 5), included by the top-level Makefile. Every stage is a file:
#
#   data/processed/fashion-mnist/prepared.json         the ConvNeXt pipeline's prepare rule
#   data/processed/<bible data>/MANIFEST.json          the PowerNorm pipeline's prepare rule
#   results/insights/runs/<run>/config.yaml            resolve  (normrepro.insights.runs; rewritten
#                                                                only when it changes)
#     .../record.json                                  train    (written last; an interrupted run
#                                                                resumes from its checkpoint)
#     .../final.json                                   evaluate (DDP runs: normrepro.convnext.evaluate)
#   results/insights/<stage>/args.txt                  the stage's arguments from the profile
#                                                      (rewritten only when they change)
#   results/insights/fluctuation/fluctuation_summary.csv  1. batch vs running statistics
#   results/insights/padding/padding_bins.csv          2. masked vs unmasked BN
#   results/insights/causal/causal.csv                 3. causal leakage
#   results/insights/axes/axes.csv                     4. normalisation axes
#   results/insights/sync_cost/sync_cost.csv           5. cost of synchronised BN ...
#   results/insights/ddp/ddp.csv                          ... and per-worker vs sync BN under DDP
#   results/insights/report.md, results/README.md      report and the index of all reports
#
# Runs: image-bn, text-bn, text-pn_v (fluctuation), text-bn_unmasked (padding, against text-bn),
# ddp-bn, ddp-bn_sync (DDP on 2 CPU processes); their configs come from the replications' own
# configs, see replications/insights/base.yaml. Each stage writes its CSV and figure atomically.
# The public target resolves PROFILE=auto once and calls the private _ins-* targets in a sub-make.

INS_REPL := replications/insights
INS_RES := results/insights
INS_RUNS := $(INS_RES)/runs

.PHONY: replicate-insights _ins-replicate _ins-force

ins_profile = $$($(PY) -c "from normrepro.config import resolve_profile_name as r; print(r('$(PROFILE)'))")

replicate-insights: $(SETUP) ## why transformers use LayerNorm: five experiments -> results/insights/report.md (PROFILE)
	@$(MAKE) --no-print-directory _ins-replicate PROFILE=$(ins_profile)

_ins-force:

ifneq ($(filter _ins-%,$(MAKECMDGOALS)),)
ins_run = $(shell $(PY) -m normrepro.insights.runs data --profile $(PROFILE) --run $(1) $(2))
INS_CX_PROFILE := $(shell $(PY) -m normrepro.config get $(INS_REPL) --profile $(PROFILE) upstream.convnext)
INS_PN_PROFILE := $(shell $(PY) -m normrepro.config get $(INS_REPL) --profile $(PROFILE) upstream.powernorm)
INS_IMG_NAME := $(call ins_run,image-bn,--name)
INS_IMG_DATA := $(call ins_run,image-bn)
INS_TXT_NAME := $(call ins_run,text-bn,--name)
INS_TXT_DATA := $(call ins_run,text-bn)
INS_IMG_RUNS := image-bn ddp-bn ddp-bn_sync
INS_TXT_RUNS := text-bn text-bn_unmasked text-pn_v
INS_STAGES := causal axes sync_cost padding
rec = $(INS_RUNS)/$(1)/record.json

# Files of the pattern chains that make must not delete as intermediates.
.SECONDARY: $(foreach r,$(INS_IMG_RUNS) $(INS_TXT_RUNS),$(INS_RUNS)/$(r)/config.yaml $(INS_RUNS)/$(r)/record.json) \
	$(foreach s,$(INS_STAGES),$(INS_RES)/$(s)/args.txt)

_ins-replicate: $(INS_RES)/report.md results/README.md
	@echo "[insights] report: $(INS_RES)/report.md (profile $(PROFILE))"

# Data: made by the replications' own rules, which their pipeline.mk defines in a sub-make that
# has one of their private goals (_cx-force, _pn-force: empty targets) among its goals.
$(INS_IMG_DATA)/prepared.json: _ins-force | $(SETUP)
	@$(MAKE) --no-print-directory _cx-force $@ PROFILE=$(INS_CX_PROFILE) DATASET=$(INS_IMG_NAME)

$(INS_TXT_DATA)/MANIFEST.json: _ins-force | $(SETUP)
	@$(MAKE) --no-print-directory _pn-force $@ PROFILE=$(INS_PN_PROFILE) DATASET=$(INS_TXT_NAME)

$(INS_RUNS)/%/config.yaml: _ins-force | $(SETUP)
	@$(PY) -m normrepro.insights.runs resolve --profile $(PROFILE) --run $* --out $@

$(INS_RES)/%/args.txt: _ins-force | $(SETUP)
	@$(PY) -m normrepro.insights.runs args --profile $(PROFILE) --stage $* --out $@

$(foreach r,$(INS_IMG_RUNS),$(call rec,$(r))): $(INS_RUNS)/%/record.json: $(INS_RUNS)/%/config.yaml $(INS_IMG_DATA)/prepared.json
	$(PY) -m normrepro.insights.runs train --config $< --out $(@D)

$(foreach r,$(INS_TXT_RUNS),$(call rec,$(r))): $(INS_RUNS)/%/record.json: $(INS_RUNS)/%/config.yaml $(INS_TXT_DATA)/MANIFEST.json
	$(PY) -m normrepro.insights.runs train --config $< --out $(@D) --data $(INS_TXT_DATA)

$(INS_RUNS)/ddp-%/final.json: $(INS_RUNS)/ddp-%/record.json
	$(PY) -m normrepro.convnext.evaluate --run $(@D)

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

results/README.md: $(INS_RES)/report.md $(wildcard results/convnext/report.md results/powernorm/report.md)
	$(PY) -m normrepro.insights.report index --results results --out $@
endif

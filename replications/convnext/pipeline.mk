# ConvNeXt BN -> LN replication pipeline (included by the top-level Makefile). Every stage is a file:
#
#   data/raw/<dataset>/MANIFEST.json                        fetch      (normrepro.fetch)
#   data/processed/<dataset>/prepared.json                  prepare    (normrepro.convnext.prepare)
#   results/convnext/<dataset>/<arm>/seed<k>/config.yaml    resolve    (rewritten only if changed)
#     .../env.json                                          train      (written last; a killed run
#                                                                       has none and resumes from
#                                                                       checkpoints/last.ckpt)
#     .../final.json                                        evaluate   (test top-1/top-5, status)
#   results/convnext/<dataset>/run-list.txt                 the arm x seed folders of this command
#                                                           (rewritten only if changed)
#   results/convnext/<dataset>/summary.csv (+ runs.csv)     summarize
#   results/convnext/figures/<dataset>-*.{png,pdf}          plot
#   results/convnext/report.md                              report
#   results/bench/convnext.json                             bench      (bench-convnext; always reruns)
#
# The public targets resolve PROFILE=auto once and call the private _cx-* targets in a sub-make,
# where the run lists come from the profile (`python -m normrepro.config get`); DATASET=, ARMS=
# and SEEDS= on the command line override the profile; SET="key=value ..." overrides config keys
# of every run (e.g. SET="trainer.num_nodes=1 trainer.accumulate_grad_batches=4"). BENCH_ARGS
# passes options to the bench, e.g. BENCH_ARGS="--steps 50 --repeats 5".

CX_REPL := replications/convnext
BENCH_ARGS ?=
SET ?=

.PHONY: replicate-convnext bench-convnext _cx-replicate _cx-bench _cx-force

cx_profile = $$($(PY) -c "from normrepro.config import resolve_profile_name as r; print(r('$(PROFILE)'))")

replicate-convnext: $(SETUP) ## ConvNeXt BatchNorm vs LayerNorm, fetch to report (PROFILE DATASET ARMS SEEDS SET)
	@$(MAKE) --no-print-directory _cx-replicate PROFILE=$(cx_profile)

bench-convnext: $(SETUP) ## training images/s, Lightning vs bare PyTorch loop, per arm -> results/bench/convnext.json
	@$(MAKE) --no-print-directory _cx-bench PROFILE=$(cx_profile)

_cx-force:

ifneq ($(filter _cx-%,$(MAKECMDGOALS)),)
cx_get = $(shell $(PY) -m normrepro.config get $(CX_REPL) --profile $(PROFILE) $(1))
cx_cli = $(filter command line environment,$(origin $(1)))
CX_DATASET := $(if $(call cx_cli,DATASET),$(DATASET),$(call cx_get,data.dataset))
CX_ARMS := $(if $(call cx_cli,ARMS),$(ARMS),$(call cx_get,arms))
CX_SEEDS := $(if $(call cx_cli,SEEDS),$(SEEDS),$(call cx_get,seeds))
CX_SET := $(if $(call cx_cli,DATASET),--set data.dataset=$(CX_DATASET)) $(addprefix --set ,$(SET))
CX_RAW := data/raw/$(CX_DATASET)/MANIFEST.json
CX_PREP := data/processed/$(CX_DATASET)/prepared.json
CX_RES := results/convnext/$(CX_DATASET)
CX_RUNS := $(foreach a,$(CX_ARMS),$(foreach s,$(CX_SEEDS),$(CX_RES)/$(a)/seed$(s)))
CX_FINALS := $(addsuffix /final.json,$(CX_RUNS))
CX_FIG_STEMS := $(addprefix results/convnext/figures/$(CX_DATASET)-,learning-curves final-top1 ours-vs-paper)
CX_FIGS := $(foreach s,$(CX_FIG_STEMS),$(s).png $(s).pdf)
cx_arm = $(word 1,$(subst /, ,$(1)))
cx_seed = $(patsubst seed%,%,$(word 2,$(subst /, ,$(1))))

# Intermediate files of the pattern chains: keep them (make would delete them after the build).
.SECONDARY: $(foreach r,$(CX_RUNS),$(r)/config.yaml $(r)/env.json)

_cx-replicate: results/convnext/report.md
	@echo "[convnext] report: results/convnext/report.md (data: $(CX_DATASET), arms: $(CX_ARMS), seeds: $(CX_SEEDS))"

# $(CX_RAW): the fetch rule of the top-level Makefile.

$(CX_PREP): $(CX_RAW)
	$(PY) -m normrepro.convnext.prepare --dataset $(CX_DATASET) --raw data/raw/$(CX_DATASET) \
		--out data/processed/$(CX_DATASET)

$(CX_RES)/%/config.yaml: _cx-force | $(SETUP)
	@$(PY) -m normrepro.config resolve $(CX_REPL) --profile $(PROFILE) --arm $(call cx_arm,$*) \
		--seed $(call cx_seed,$*) $(CX_SET) --out $@

$(CX_RES)/%/env.json: $(CX_RES)/%/config.yaml $(CX_PREP)
	$(PY) -m normrepro.convnext.train --config $< --out $(@D)

$(CX_RES)/%/final.json: $(CX_RES)/%/env.json
	$(PY) -m normrepro.convnext.evaluate --run $(@D)

# Which runs belong to this command: changes when SEEDS/ARMS change, so the summary follows.
$(CX_RES)/run-list.txt: _cx-force
	@mkdir -p $(@D) && printf '%s\n' $(CX_RUNS) > $@.tmp && \
		{ cmp -s $@.tmp $@ && rm -f $@.tmp || mv -f $@.tmp $@; }

$(CX_RES)/summary.csv: $(CX_RES)/run-list.txt $(CX_FINALS)
	$(PY) -m normrepro.convnext.summarize --out $@ --runs $(CX_RUNS)

$(CX_FIGS) &: $(CX_RES)/summary.csv $(CX_REPL)/paper.yaml
	$(PY) -m normrepro.convnext.plot --summary $< --paper $(CX_REPL)/paper.yaml \
		--out-dir results/convnext/figures

results/convnext/report.md: $(CX_RES)/summary.csv $(CX_FIGS) $(CX_REPL)/paper.yaml
	$(PY) -m normrepro.convnext.report --results results/convnext --datasets $(CX_DATASET) \
		--paper $(CX_REPL)/paper.yaml --out $@

_cx-bench: | $(SETUP)
	$(PY) -m normrepro.convnext.bench --repl $(CX_REPL) --profile $(PROFILE) --arms $(CX_ARMS) \
		--out results/bench/convnext.json $(BENCH_ARGS)
endif

# ---- learning-rate sweep (make sweep-convnext) ----------------------------------------------
# Each arm of the profile's `sweep.arms` trained once (seed `sweep.seed`) per lr of `sweep.lrs`,
# scored on the held-out split; then each arm again at its best lr with
# `sweep.check_epochs_factor` x the epochs. Files (normrepro.convnext.sweep documents them):
#   $(CX_RES)/sweep/<arm>/lr<lr>/{config.yaml,env.json,metrics.csv}   grid runs
#   $(CX_RES)/sweep/grid.csv                                           the chosen lr per arm
#   $(CX_RES)/sweep/<arm>/check/{config.yaml,env.json,metrics.csv}     longer run at the chosen lr
#   $(CX_RES)/sweep/summary.csv, $(CX_RES)/sweep/figures/sweep.{png,pdf}
# The chosen values go into the profile by hand (arm_overrides), never automatically.

.PHONY: sweep-convnext _cx-sweep

sweep-convnext: $(SETUP) ## per-arm lr grid on held-out data + a 1.5x-epochs check -> results/convnext/<profile>/<dataset>/sweep/
	@$(MAKE) --no-print-directory _cx-sweep PROFILE=$(cx_profile)

ifneq ($(filter _cx-sweep,$(MAKECMDGOALS)),)
sw_get = $(shell $(PY) -m normrepro.convnext.sweep settings $(CX_REPL) --profile $(PROFILE) $(1) $(addprefix --set ,$(SET)))
SW_RES := $(CX_RES)/sweep
SW_ARMS := $(if $(call cx_cli,ARMS),$(ARMS),$(call sw_get,arms))
SW_LRS := $(call sw_get,lrs)
SW_RUNS := $(foreach a,$(SW_ARMS),$(foreach l,$(SW_LRS),$(SW_RES)/$(a)/lr$(l)))
SW_CHECKS := $(foreach a,$(SW_ARMS),$(SW_RES)/$(a)/check)
sw_arm = $(word 1,$(subst /, ,$(1)))
sw_lr = $(patsubst lr%,%,$(word 2,$(subst /, ,$(1))))

.SECONDARY: $(foreach r,$(SW_RUNS) $(SW_CHECKS),$(r)/config.yaml $(r)/env.json)

_cx-sweep: $(SW_RES)/summary.csv
	@echo "[convnext] sweep: $(SW_RES)/summary.csv, $(SW_RES)/figures/sweep.png (arms: $(SW_ARMS); lrs: $(SW_LRS))"

$(addsuffix /config.yaml,$(SW_RUNS)): $(SW_RES)/%/config.yaml: _cx-force | $(SETUP)
	@$(PY) -m normrepro.convnext.sweep resolve $(CX_REPL) --profile $(PROFILE) \
		--arm $(call sw_arm,$*) --lr $(call sw_lr,$*) $(CX_SET) --out $@

$(addsuffix /config.yaml,$(SW_CHECKS)): $(SW_RES)/%/check/config.yaml: $(SW_RES)/grid.csv _cx-force
	@$(PY) -m normrepro.convnext.sweep resolve-check $(CX_REPL) --profile $(PROFILE) --arm $* \
		--grid $< $(CX_SET) --out $@

$(addsuffix /env.json,$(SW_RUNS) $(SW_CHECKS)): %/env.json: %/config.yaml $(CX_PREP)
	$(PY) -m normrepro.convnext.train --config $< --out $(@D)

$(SW_RES)/grid.csv: $(addsuffix /env.json,$(SW_RUNS))
	$(PY) -m normrepro.convnext.sweep grid --sweep-dir $(SW_RES) --runs $(SW_RUNS)

$(SW_RES)/summary.csv: $(SW_RES)/grid.csv $(addsuffix /env.json,$(SW_CHECKS))
	$(PY) -m normrepro.convnext.sweep finish --sweep-dir $(SW_RES) --runs $(SW_RUNS) \
		--arms $(SW_ARMS)
endif

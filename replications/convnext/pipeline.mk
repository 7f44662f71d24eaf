# ConvNeXt BN -> LN replication pipeline (included by the top-level Makefile). Every stage is a file:
#
#   data/raw/<dataset>/MANIFEST.json                   fetch      (normrepro.fetch)
#   data/processed/<dataset>/prepared.json             prepare    (normrepro.stages.prepare; redone
#                                                                 when a raw file changes; checks
#                                                                 the raw files' hashes)
#   results/convnext/<profile>/                        everything one profile writes, nothing else:
#     <dataset>/<arm>/seed<k>/config.yaml              plan       (normrepro.plan; rewritten only if
#                                                                 changed, a changed run moved aside
#                                                                 to seed<k>.replaced-<time>/)
#       .../env.json                                   train      (written last; a killed run has
#                                                                 none and resumes from
#                                                                 checkpoints/last.ckpt)
#       .../final.json                                 evaluate   (test top-1/top-5, status)
#     <dataset>/run-list.txt                           plan       (the arm x seed folders of this
#                                                                 command, rewritten only if changed)
#     <dataset>/summary.csv (+ runs.csv)               summarize
#     figures/<dataset>-*.{png,pdf}                    plot
#     report.md                                        report
#   results/bench/convnext-<profile>.json              bench      (bench-convnext; always reruns)
#
# The public targets run `normrepro.plan` first (see the top-level Makefile): it checks PROFILE,
# DATASET=, ARMS=, SEEDS= and SET="key=value ..." (overrides of every run's config, e.g.
# SET="trainer.num_nodes=1 trainer.accumulate_grad_batches=4") and every run config, stops at the
# first problem with one line, then locks results/convnext/<profile>/, writes the run configs and
# calls the private _cx-* goal with the command's variables (CX_*). BENCH_ARGS passes options to
# the bench, e.g. BENCH_ARGS="--steps 50 --repeats 5".

CX_REPL := replications/convnext
BENCH_ARGS ?=

.PHONY: replicate-convnext bench-convnext _cx-replicate _cx-bench _cx-force

# Was a variable given on the command line (e.g. the sweep's ARMS=)?
cx_cli = $(call given,$(1))

replicate-convnext: $(SETUP) ## ConvNeXt BatchNorm vs LayerNorm, fetch to report (PROFILE DATASET ARMS SEEDS SET)
	@$(PLAN) convnext --goal replicate $(plan_args) -- $(MAKE) --no-print-directory _cx-replicate
	@$(MAKE) --no-print-directory report

bench-convnext: $(SETUP) ## training images/s, Lightning vs bare PyTorch loop, per arm -> results/bench/convnext-<profile>.json
	@$(PLAN) convnext --goal bench $(plan_args) -- $(MAKE) --no-print-directory _cx-bench

_cx-force:

# Data (whenever a plan names it: this pipeline's, or the insights pipeline's).
ifneq ($(CX_PREP),)
$(CX_PREP): $(CX_RAW) $(CX_RAW_FILES)
	$(PY) -m normrepro.stages.prepare --task image_classification $(CX_DATASET) --raw $(patsubst %/,%,$(dir $(CX_RAW))) \
		--out $(patsubst %/,%,$(dir $(CX_PREP)))
endif

# $(CX_RAW): the fetch rule of the top-level Makefile.

ifneq ($(filter _cx-%,$(MAKECMDGOALS)),)
ifeq ($(CX_ROOT),)
$(error the private _cx-* goals run from the public targets (make replicate-convnext, ...), which check the command first)
endif
CX_FINALS := $(addsuffix /final.json,$(CX_RUNS))
CX_FIG_STEMS := $(addprefix $(CX_ROOT)/figures/$(CX_DATASET)-,learning-curves final-top1 ours-vs-paper)
CX_FIGS := $(foreach s,$(CX_FIG_STEMS),$(s).png $(s).pdf)

_cx-replicate: $(CX_ROOT)/report.md
	@echo "[convnext] report: $(CX_ROOT)/report.md (data: $(CX_DATASET), arms: $(CX_ARMS), seeds: $(CX_SEEDS))"

$(CX_RES)/%/env.json: $(CX_RES)/%/config.yaml $(CX_PREP)
	$(PY) -m normrepro.stages.train $(@D)

$(CX_RES)/%/final.json: $(CX_RES)/%/env.json
	$(PY) -m normrepro.stages.evaluate $(@D)

# env.json listed too, so it is no intermediate file: make keeps it, and a deleted env.json
# means "train this run again" (an intermediate one would not be remade while final.json exists).
$(CX_RES)/summary.csv: $(CX_RES)/run-list.txt $(addsuffix /env.json,$(CX_RUNS)) $(CX_FINALS) \
		$(CX_REPL)/paper.yaml
	$(PY) -m normrepro.stages.summarize --replication $(CX_REPL) --out $@ --runs $(CX_RUNS)

$(CX_FIGS) &: $(CX_RES)/summary.csv $(CX_REPL)/paper.yaml
	$(PY) -m normrepro.stages.plot --replication $(CX_REPL) --summary $< --out-dir $(CX_ROOT)/figures

# (a sweep finished after the report: the report shows it, so it is redone)
$(CX_ROOT)/report.md: $(CX_RES)/summary.csv $(CX_FIGS) $(CX_REPL)/paper.yaml $(wildcard $(CX_RES)/sweep/summary.csv)
	$(PY) -m normrepro.stages.report --replication $(CX_REPL) --results $(CX_ROOT) \
		--datasets $(CX_DATASET) --out $@

_cx-bench: | $(SETUP)
	$(PY) -m normrepro.tasks.image_classification.bench --repl $(CX_REPL) --profile $(PROFILE) --arms $(CX_ARMS) \
		$(CX_SET) --out results/bench/convnext-$(PROFILE).json $(BENCH_ARGS)
endif

# ---- learning-rate sweep (make sweep-convnext) ----------------------------------------------
# Each arm of the profile's `sweep.arms` trained once (seed `sweep.seed`) per lr of `sweep.lrs`,
# scored on the held-out split; then each arm again at its best lr with
# `sweep.check_epochs_factor` x the epochs. Files (normrepro.tasks.image_classification.sweep documents them):
#   $(CX_RES)/sweep/<arm>/lr<lr>/{config.yaml,env.json,metrics.csv}   grid runs
#   $(CX_RES)/sweep/grid.csv                                           the chosen lr per arm
#   $(CX_RES)/sweep/<arm>/check/{config.yaml,env.json,metrics.csv}     longer run at the chosen lr
#   $(CX_RES)/sweep/summary.csv, $(CX_RES)/sweep/figures/sweep.{png,pdf}
# The chosen values go into the profile by hand (arm_overrides), never automatically.

.PHONY: sweep-convnext _cx-sweep

sweep-convnext: $(SETUP) ## per-arm lr grid on held-out data + a 1.5x-epochs check -> results/convnext/<profile>/<dataset>/sweep/
	@$(PLAN) convnext --goal sweep $(plan_args) -- $(MAKE) --no-print-directory _cx-sweep

ifneq ($(filter _cx-sweep,$(MAKECMDGOALS)),)
sw_get = $(shell $(PY) -m normrepro.tasks.image_classification.sweep settings $(CX_REPL) --profile $(PROFILE) $(1) $(addprefix --set ,$(SET)))
SW_RES := $(CX_RES)/sweep
SW_ARMS := $(if $(call cx_cli,ARMS),$(ARMS),$(call sw_get,arms))
SW_LRS := $(call sw_get,lrs)
SW_RUNS := $(foreach a,$(SW_ARMS),$(foreach l,$(call sw_get,lrs --arm $(a)),$(SW_RES)/$(a)/lr$(l)))
SW_CHECKS := $(foreach a,$(SW_ARMS),$(SW_RES)/$(a)/check)
sw_arm = $(word 1,$(subst /, ,$(1)))
sw_lr = $(patsubst lr%,%,$(word 2,$(subst /, ,$(1))))

.SECONDARY: $(foreach r,$(SW_RUNS) $(SW_CHECKS),$(r)/config.yaml $(r)/env.json)

_cx-sweep: $(SW_RES)/summary.csv
	@echo "[convnext] sweep: $(SW_RES)/summary.csv, $(SW_RES)/figures/sweep.png (arms: $(SW_ARMS); lrs: $(SW_LRS))"

$(addsuffix /config.yaml,$(SW_RUNS)): $(SW_RES)/%/config.yaml: _cx-force | $(SETUP)
	@$(PY) -m normrepro.tasks.image_classification.sweep resolve $(CX_REPL) --profile $(PROFILE) \
		--arm $(call sw_arm,$*) --lr $(call sw_lr,$*) $(CX_SET) --out $@

$(addsuffix /config.yaml,$(SW_CHECKS)): $(SW_RES)/%/check/config.yaml: $(SW_RES)/grid.csv _cx-force
	@$(PY) -m normrepro.tasks.image_classification.sweep resolve-check $(CX_REPL) --profile $(PROFILE) --arm $* \
		--grid $< $(CX_SET) --out $@

$(addsuffix /env.json,$(SW_RUNS) $(SW_CHECKS)): %/env.json: %/config.yaml $(CX_PREP)
	$(PY) -m normrepro.stages.train $(@D)

$(SW_RES)/grid.csv: $(addsuffix /env.json,$(SW_RUNS))
	$(PY) -m normrepro.tasks.image_classification.sweep grid --sweep-dir $(SW_RES) --runs $(SW_RUNS)

$(SW_RES)/summary.csv: $(SW_RES)/grid.csv $(addsuffix /env.json,$(SW_CHECKS))
	$(PY) -m normrepro.tasks.image_classification.sweep finish --sweep-dir $(SW_RES) --runs $(SW_RUNS) \
		--arms $(SW_ARMS)
endif

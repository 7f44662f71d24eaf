# The pipeline of every replication built on a task (included by the top-level Makefile).
# A replication is a folder replications/<name>/ with base.yaml (naming its `task:`), paper.yaml,
# arms/*.yaml and profiles/*.yaml; it needs no make code: `make replicate-<name>` runs
#
#   data/raw/<dataset>/MANIFEST.json                   fetch      (top-level Makefile)
#   data/processed/...                                 prepare    (the task's rules, mk/tasks/<task>.mk)
#   results/<name>/<profile>/                          everything one profile writes, nothing else:
#     <data>/<arm>/seed<k>/config.yaml                 plan       (normrepro.plan; rewritten only if
#                                                                  changed, a run trained under
#                                                                  another config moved aside first)
#       .../$(R_DONE)                                  train      (the task's done-marker, written
#                                                                  last: env.json for image
#                                                                  classification, train.json for
#                                                                  translation; a killed run resumes)
#       .../final.json                                 evaluate   (after the task's own steps, e.g.
#                                                                  checkpoint averaging)
#     <data>/runs.list                                 plan       (the arm x seed folders of this
#                                                                  command, rewritten only if changed)
#     <data>/summary.csv (+ runs.csv)                  summarize
#     figures/<data>-*.{png,pdf}                       plot
#     report.md                                        report
#
# <data> is the data set's name (plus "-<variant>" where a translation profile sets data_variant).
# The public targets run `normrepro.plan` first (see the top-level Makefile): it checks PROFILE,
# DATASET=, ARMS=, SEEDS=, SET= and every run config, stops at the first problem with one line,
# then locks results/<name>/<profile>/, writes the run configs and a plan (the R_* variables of the
# command, and the task's data variables IC_*/TR_*) and runs the private goal in a sub-make.
# Goals beyond `replicate`: sweep (every task, below), bench (every task), crosscheck (translation).

# The replications made by these rules: every folder with a base.yaml, except those that bring
# their own pipeline.mk (insights).
TASK_REPLICATIONS := $(filter-out $(patsubst replications/%/pipeline.mk,%,$(wildcard replications/*/pipeline.mk)),\
	$(patsubst replications/%/base.yaml,%,$(wildcard replications/*/base.yaml)))
REPLICATE_TARGETS := $(addprefix replicate-,$(TASK_REPLICATIONS))
task_of = $(shell sed -n 's/^task: *\([a-z_]*\).*/\1/p' replications/$(1)/base.yaml)

# Each task's goals besides replicate (normrepro.plan.GOALS says the same), for `make help`.
TASK_GOALS_image_classification := sweep bench
TASK_GOALS_translation := sweep crosscheck bench
TASK_GOAL_HELP_sweep := per-arm lr grid on held-out data + a longer check -> results/<name>/<profile>/<data>/sweep/
TASK_GOAL_HELP_bench := training throughput per arm -> results/bench/<name>-<profile>.json
TASK_GOAL_HELP_crosscheck := arm ln, fairseq-train vs Lightning on the same data and seed -> crosscheck.json

.PHONY: $(REPLICATE_TARGETS) _replicate _force

# replicate-<name>: fetch to report, then the replications its base.yaml names in
# `also_replicate` (same PROFILE; e.g. replicate-dyt also runs the text extension dyt_text), then
# the results index (PROFILE DATASET ARMS SEEDS SET). DATASET/ARMS/SEEDS/SET belong to <name>
# alone: when one is given, the others are not run (a line says how to run them). The plan checks
# the others' commands too before anything is written.
also_of = $(shell $(PLAN) $(1) --also-replicate)
narrowed = $(strip $(foreach v,DATASET ARMS SEEDS SET,$(call given,$(v))))
$(REPLICATE_TARGETS): replicate-%: $(SETUP)
	@$(PLAN) $* --goal replicate $(plan_args) -- $(MAKE) --no-print-directory _replicate
	@$(foreach o,$(call also_of,$*),$(if $(narrowed),\
		echo "[$*] not running $(o) (DATASET/ARMS/SEEDS/SET name $*'s runs): make replicate-$(o) PROFILE=$(PROFILE)";,\
		$(PLAN) $(o) --goal replicate --profile '$(PROFILE)' --what 'make $@ (also_replicate: $(o))' \
			-- $(MAKE) --no-print-directory _replicate &&)) true
	@$(MAKE) --no-print-directory report

# <goal>-<name> for the task's other goals (sweep-convnext, bench-powernorm, crosscheck-powernorm):
# the plan says whether the replication's task has that goal. The cross-check runs on
# CROSSCHECK_PROFILE's data (mk/tasks/translation.mk).
.PHONY: $(addprefix sweep-,$(TASK_REPLICATIONS)) $(addprefix bench-,$(TASK_REPLICATIONS)) \
	$(addprefix crosscheck-,$(TASK_REPLICATIONS))
$(addprefix sweep-,$(TASK_REPLICATIONS)): sweep-%: $(SETUP)
	@$(PLAN) $* --goal sweep $(plan_args) -- $(MAKE) --no-print-directory _sweep
$(addprefix bench-,$(TASK_REPLICATIONS)): bench-%: $(SETUP)
	@$(PLAN) $* --goal bench $(plan_args) -- $(MAKE) --no-print-directory _bench
$(addprefix crosscheck-,$(TASK_REPLICATIONS)): crosscheck-%: $(SETUP)
	@$(PLAN) $* --goal crosscheck $(plan_args) --profile '$(CROSSCHECK_PROFILE)' \
		-- $(MAKE) --no-print-directory _crosscheck

_force:

ifneq ($(filter _replicate _sweep _bench _crosscheck,$(MAKECMDGOALS)),)
ifeq ($(R_ROOT),)
$(error the private goals run from the public targets (make replicate-<name>, ...), which check the command first)
endif
endif

ifneq ($(filter _replicate,$(MAKECMDGOALS)),)
R_FINALS := $(addsuffix /final.json,$(R_RUNS))

_replicate: $(R_ROOT)/report.md
	@echo "[$(R_NAME)] report: $(R_ROOT)/report.md (data: $(R_DATA_NAME), arms: $(R_ARMS), seeds: $(R_SEEDS))"

# The done-markers are listed too, so they are no intermediate files: a deleted marker means
# "train this run again" (an intermediate one would not be remade while final.json exists).
$(R_RES)/summary.csv: $(R_RES)/runs.list $(addsuffix /$(R_DONE),$(R_RUNS)) $(R_FINALS) $(R_REPL)/paper.yaml
	$(PY) -m normrepro.stages.summarize --replication $(R_REPL) --out $@ --runs $(R_RUNS)

# The plot writes every figure of the data folder; the final-metric figure stands for them.
$(R_FIG): $(R_RES)/summary.csv $(R_REPL)/paper.yaml
	$(PY) -m normrepro.stages.plot --replication $(R_REPL) --summary $< --out-dir $(R_ROOT)/figures

# The report also shows what the task's optional inputs hold when they exist (R_REPORT_DEPS,
# R_REPORT_ARGS from mk/tasks/<task>.mk: a sweep, a cross-check, a bench); it never builds them.
$(R_ROOT)/report.md: $(R_FIG) $(R_RES)/summary.csv $(R_REPL)/paper.yaml $(R_REPORT_DEPS)
	$(PY) -m normrepro.stages.report --replication $(R_REPL) --results $(R_ROOT) --out $@ $(R_REPORT_ARGS)
endif

# ---- learning-rate sweep (make sweep-<name>), the same for every task ------------------------
# Each arm of the profile's `sweep.arms` trained once (seed `sweep.seed`) per lr of `sweep.lrs`,
# scored on held-out data by the task's score (normrepro.sweep: held-out top-1 for images,
# validation cross-entropy for translation); then each arm again at its best lr with
# `sweep.check_epochs_factor` x the training length. Files (normrepro.sweep documents them):
#   $(R_RES)/sweep/<arm>/lr<lr>/{config.yaml,metrics.csv,$(R_DONE)}   grid runs
#   $(R_RES)/sweep/grid.csv                                           the chosen lr per arm
#   $(R_RES)/sweep/<arm>/check/...                                    longer run at the chosen lr
#   $(R_RES)/sweep/summary.csv, $(R_RES)/sweep/figures/sweep.{png,pdf}
# The chosen values go into the profile by hand (arm_overrides), never automatically.
ifneq ($(filter _sweep,$(MAKECMDGOALS)),)
sw_get = $(shell $(PY) -m normrepro.sweep settings $(R_REPL) --profile $(PROFILE) $(1) $(addprefix --set ,$(SET)))
SW_RES := $(R_RES)/sweep
SW_ARMS := $(if $(call given,ARMS),$(ARMS),$(call sw_get,arms))
SW_LRS := $(call sw_get,lrs)
SW_RUNS := $(foreach a,$(SW_ARMS),$(foreach l,$(call sw_get,lrs --arm $(a)),$(SW_RES)/$(a)/lr$(l)))
SW_CHECKS := $(foreach a,$(SW_ARMS),$(SW_RES)/$(a)/check)
sw_arm = $(word 1,$(subst /, ,$(1)))
sw_lr = $(patsubst lr%,%,$(word 2,$(subst /, ,$(1))))

.SECONDARY: $(foreach r,$(SW_RUNS) $(SW_CHECKS),$(r)/config.yaml $(r)/$(R_DONE))

_sweep: $(SW_RES)/summary.csv
	@echo "[$(R_NAME)] sweep: $(SW_RES)/summary.csv, $(SW_RES)/figures/sweep.png (arms: $(SW_ARMS); lrs: $(SW_LRS))"

$(addsuffix /config.yaml,$(SW_RUNS)): $(SW_RES)/%/config.yaml: _force | $(SETUP)
	@$(PY) -m normrepro.sweep resolve $(R_REPL) --profile $(PROFILE) \
		--arm $(call sw_arm,$*) --lr $(call sw_lr,$*) $(R_SET) --out $@

$(addsuffix /config.yaml,$(SW_CHECKS)): $(SW_RES)/%/check/config.yaml: $(SW_RES)/grid.csv _force
	@$(PY) -m normrepro.sweep resolve-check $(R_REPL) --profile $(PROFILE) --arm $* \
		--grid $< $(R_SET) --out $@

$(addsuffix /$(R_DONE),$(SW_RUNS) $(SW_CHECKS)): %/$(R_DONE): %/config.yaml $(R_TRAIN_DATA)
	$(PY) -m normrepro.stages.train $(@D)

$(SW_RES)/grid.csv: $(addsuffix /$(R_DONE),$(SW_RUNS))
	$(PY) -m normrepro.sweep grid --sweep-dir $(SW_RES) --runs $(SW_RUNS)

$(SW_RES)/summary.csv: $(SW_RES)/grid.csv $(addsuffix /$(R_DONE),$(SW_CHECKS))
	$(PY) -m normrepro.sweep finish --sweep-dir $(SW_RES) --runs $(SW_RUNS) --arms $(SW_ARMS)
endif

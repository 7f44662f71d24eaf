# Task image_classification (normrepro.tasks.image_classification): its data, per-run, sweep and
# bench rules, used by every replication whose base.yaml names this task (mk/replication.mk).
#
#   data/processed/<dataset>/prepared.json             prepare  (redone when a raw file changes;
#                                                               checks the raw files' hashes)
#   <run>/env.json                                     train    (the done-marker, written last; a
#                                                               killed run has none and resumes
#                                                               from checkpoints/last.ckpt)
#   <run>/final.json                                   evaluate (test top-1/top-5, status)
#   results/<name>/<profile>/<dataset>/sweep/...       sweep    (make sweep-<name>, below)
#   results/bench/<name>-<profile>.json                bench    (make bench-<name>; always reruns;
#                                                               BENCH_ARGS="--steps 50 --repeats 5")

BENCH_ARGS ?=

# Data (whenever a plan names it: an image-classification replication's, or the insights
# pipeline's). $(IC_RAW): the fetch rule of the top-level Makefile.
ifneq ($(IC_PREP),)
$(IC_PREP): $(IC_RAW) $(IC_RAW_FILES)
	$(PY) -m normrepro.stages.prepare --task image_classification $(IC_DATASET) \
		--raw $(patsubst %/,%,$(dir $(IC_RAW))) --out $(patsubst %/,%,$(dir $(IC_PREP)))
endif

ifeq ($(R_TASK),image_classification)
$(R_RES)/%/env.json: $(R_RES)/%/config.yaml $(IC_PREP)
	$(PY) -m normrepro.stages.train $(@D)

$(R_RES)/%/final.json: $(R_RES)/%/env.json
	$(PY) -m normrepro.stages.evaluate $(@D)

# The report shows the sweep when one has finished (and is redone when it finishes).
R_REPORT_DEPS := $(wildcard $(R_RES)/sweep/summary.csv)
R_REPORT_ARGS := --datasets $(R_DATA_NAME)

_bench: | $(SETUP)
	$(PY) -m normrepro.tasks.image_classification.bench --repl $(R_REPL) --profile $(PROFILE) --arms $(R_ARMS) \
		$(R_SET) --out results/bench/$(R_NAME)-$(PROFILE).json $(BENCH_ARGS)
endif

# ---- learning-rate sweep (make sweep-<name>) ------------------------------------------------
# Each arm of the profile's `sweep.arms` trained once (seed `sweep.seed`) per lr of `sweep.lrs`,
# scored on the held-out split; then each arm again at its best lr with
# `sweep.check_epochs_factor` x the epochs. Files (normrepro.tasks.image_classification.sweep documents them):
#   $(R_RES)/sweep/<arm>/lr<lr>/{config.yaml,env.json,metrics.csv}   grid runs
#   $(R_RES)/sweep/grid.csv                                           the chosen lr per arm
#   $(R_RES)/sweep/<arm>/check/{config.yaml,env.json,metrics.csv}     longer run at the chosen lr
#   $(R_RES)/sweep/summary.csv, $(R_RES)/sweep/figures/sweep.{png,pdf}
# The chosen values go into the profile by hand (arm_overrides), never automatically.
ifneq ($(filter _sweep,$(MAKECMDGOALS)),)
sw_get = $(shell $(PY) -m normrepro.tasks.image_classification.sweep settings $(R_REPL) --profile $(PROFILE) $(1) $(addprefix --set ,$(SET)))
SW_RES := $(R_RES)/sweep
SW_ARMS := $(if $(call given,ARMS),$(ARMS),$(call sw_get,arms))
SW_LRS := $(call sw_get,lrs)
SW_RUNS := $(foreach a,$(SW_ARMS),$(foreach l,$(call sw_get,lrs --arm $(a)),$(SW_RES)/$(a)/lr$(l)))
SW_CHECKS := $(foreach a,$(SW_ARMS),$(SW_RES)/$(a)/check)
sw_arm = $(word 1,$(subst /, ,$(1)))
sw_lr = $(patsubst lr%,%,$(word 2,$(subst /, ,$(1))))

.SECONDARY: $(foreach r,$(SW_RUNS) $(SW_CHECKS),$(r)/config.yaml $(r)/env.json)

_sweep: $(SW_RES)/summary.csv
	@echo "[$(R_NAME)] sweep: $(SW_RES)/summary.csv, $(SW_RES)/figures/sweep.png (arms: $(SW_ARMS); lrs: $(SW_LRS))"

$(addsuffix /config.yaml,$(SW_RUNS)): $(SW_RES)/%/config.yaml: _force | $(SETUP)
	@$(PY) -m normrepro.tasks.image_classification.sweep resolve $(R_REPL) --profile $(PROFILE) \
		--arm $(call sw_arm,$*) --lr $(call sw_lr,$*) $(R_SET) --out $@

$(addsuffix /config.yaml,$(SW_CHECKS)): $(SW_RES)/%/check/config.yaml: $(SW_RES)/grid.csv _force
	@$(PY) -m normrepro.tasks.image_classification.sweep resolve-check $(R_REPL) --profile $(PROFILE) --arm $* \
		--grid $< $(R_SET) --out $@

$(addsuffix /env.json,$(SW_RUNS) $(SW_CHECKS)): %/env.json: %/config.yaml $(IC_PREP)
	$(PY) -m normrepro.stages.train $(@D)

$(SW_RES)/grid.csv: $(addsuffix /env.json,$(SW_RUNS))
	$(PY) -m normrepro.tasks.image_classification.sweep grid --sweep-dir $(SW_RES) --runs $(SW_RUNS)

$(SW_RES)/summary.csv: $(SW_RES)/grid.csv $(addsuffix /env.json,$(SW_CHECKS))
	$(PY) -m normrepro.tasks.image_classification.sweep finish --sweep-dir $(SW_RES) --runs $(SW_RUNS) \
		--arms $(SW_ARMS)
endif

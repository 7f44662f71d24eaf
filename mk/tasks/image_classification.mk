# Task image_classification (normrepro.tasks.image_classification): its data, per-run, sweep and
# bench rules, used by every replication whose base.yaml names this task (mk/replication.mk).
#
#   data/processed/<dataset>/prepared.json             prepare  (redone when a raw file changes;
#                                                               checks the raw files' hashes)
#   <run>/env.json                                     train    (the done-marker, written last; a
#                                                               killed run has none and resumes
#                                                               from checkpoints/last.ckpt)
#   <run>/final.json                                   evaluate (test top-1/top-5, status)
#   results/<name>/<profile>/<dataset>/sweep/...       sweep    (make sweep-<name>, mk/replication.mk)
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
# What a training needs besides its config (the sweep's runs too, mk/replication.mk).
R_TRAIN_DATA := $(IC_PREP)

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

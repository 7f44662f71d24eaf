# normrepro — every stage is a file target; `make help` lists the public ones.
#
# On a fresh machine every public target bootstraps the environment itself: anything that runs
# Python depends on $(SETUP), the stamp of `make setup`.

SHELL := /bin/bash
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

VENV    ?= .venv
PY      := $(VENV)/bin/python
SETUP   := $(VENV)/.setup-stamp
PROFILE ?= auto
# Config overrides of every run of a pipeline command, e.g. SET="trainer.max_epochs=2 optim.lr=1e-3".
SET ?=
# Extra pytest arguments, e.g. `make test PYTEST_ARGS="-k norms"`.
PYTEST_ARGS ?=

# Every public pipeline target first runs `normrepro.plan`: it checks the whole command (PROFILE,
# DATASET, ARMS, SEEDS, SET, every run config) before anything under results/ is touched, locks
# the results folder, writes the run configs and a plan (the make variables of the command), then
# runs the private goal in a sub-make with PLAN_FILE=<plan>. DATASET/ARMS/SEEDS are passed only
# when given on the command line (empty means "given empty", an error).
PLAN = $(PY) -m normrepro.plan
given = $(filter command line environment override,$(origin $(1)))
plan_args = --profile '$(PROFILE)' --set '$(SET)' --what 'make $@$(foreach v,PROFILE DATASET ARMS SEEDS SET,$(if $(call given,$(v)), $(v)="$($(v))"))' \
	$(if $(call given,DATASET),--dataset '$(DATASET)') $(if $(call given,ARMS),--arms '$(ARMS)') \
	$(if $(call given,SEEDS),--seeds '$(SEEDS)')

# fairseq wheels (ve-fairseq) exist only for CPython 3.11 and 3.12.
PYTHON_FOR_VENV ?= $(shell for p in python3.11 python3.12 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info[:2] not in ((3,11),(3,12)))' 2>/dev/null && { echo $$p; break; }; done)

.PHONY: help setup test report bench-norms gpu-check clean-results

help: ## list the public targets
	@{ grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST); \
	  $(foreach r,$(TASK_REPLICATIONS),echo "replicate-$(r): ## replications/$(r) ($(call task_of,$(r))), fetch to report (PROFILE DATASET ARMS SEEDS SET)"; \
	    $(foreach g,$(TASK_GOALS_$(call task_of,$(r))),echo "$(g)-$(r): ## replications/$(r): $(TASK_GOAL_HELP_$(g))";)) } | sort | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-24s\033[0m %s\n", $$1, $$2}'
	@echo "  variables: PROFILE=smoke|cpu|gpu|paper|auto (default auto), DATASET=..., ARMS=..., SEEDS=...,"
	@echo "             SET=\"key=value ...\" (config overrides); results go to results/<replication>/<profile>/"

setup: $(SETUP) ## create .venv (Python 3.11/3.12) and install normrepro[dev] in editable mode

$(SETUP): pyproject.toml
	@if [ -z "$(PYTHON_FOR_VENV)" ]; then \
		echo "error: normrepro needs CPython 3.11 or 3.12 (fairseq wheels exist only for those);" >&2; \
		echo "       install one, or point PYTHON_FOR_VENV=/path/to/python3.11 at it." >&2; exit 2; fi
	@$(PYTHON_FOR_VENV) -c 'import sys; v=sys.version_info[:2]; sys.exit(0 if v in ((3,11),(3,12)) else print(f"error: PYTHON_FOR_VENV is Python {v[0]}.{v[1]}; normrepro needs 3.11 or 3.12", file=sys.stderr) or 2)'
	test -x $(PY) || $(PYTHON_FOR_VENV) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install -e '.[dev]'
	$(PY) -c "from normrepro.norms import create_norm, NORM_NAMES; import fairseq, lightning, timm, sacrebleu"
	touch $@

test: $(SETUP) ## run the test suite (CPU, tiny synthetic data)
	$(PY) -m pytest $(PYTEST_ARGS)

report: $(SETUP) ## the results index: results/README.md, index.html, summary.png (every replicate-* runs it)
	$(PY) -m normrepro.stages.index --results results --replications replications

bench-norms: $(SETUP) ## time fwd+bwd of every sequence norm vs torch LayerNorm -> results/bench/norms.json
	$(PY) -m normrepro.bench_norms --out results/bench/norms.json

# Extra arguments of gpu-check, e.g. GPU_CHECK_ARGS="--steps 10 --translation-arms ln pn".
GPU_CHECK_ARGS ?=

gpu-check: $(SETUP) ## one GPU, <= 5 min: both gpu profiles briefly, bf16, every arm -> results/bench/gpu.json
	$(PY) -m normrepro.gpu_check --out results/bench/gpu.json $(GPU_CHECK_ARGS)

clean-results: ## delete results/ (keeps data/ and .venv)
	rm -rf results

# Raw data: MANIFEST.json is written last, so it stamps a complete, checksum-verified fetch.
# Order-only on setup, so that editing pyproject.toml does not re-fetch every dataset.
data/raw/%/MANIFEST.json: | $(SETUP)
	$(PY) -m normrepro.fetch $* --out $(@D)
.PRECIOUS: data/raw/%/MANIFEST.json

# The variables of the command being run (written by normrepro.plan); then the rules of each
# task (data, per-run stages, the task's own goals), the pipeline shared by every replication
# built on a task (replicate-<name>, ...), and the pipelines a replication folder brings itself
# (insights).
ifdef PLAN_FILE
include $(PLAN_FILE)
# Library deprecation warnings are noise in a pipeline's log (some fire at import, before a
# stage can filter them); the stages silence the rest (normrepro.progress.quiet_libraries).
export PYTHONWARNINGS := ignore::DeprecationWarning,ignore::FutureWarning
endif
include mk/tasks/image_classification.mk mk/tasks/translation.mk
include mk/replication.mk
-include replications/*/pipeline.mk

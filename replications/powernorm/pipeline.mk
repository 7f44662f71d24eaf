# PowerNorm replication pipeline (included by the top-level Makefile). Every stage is a file:
#
#   data/raw/<dataset>/MANIFEST.json                      fetch          (normrepro.fetch)
#   data/processed/<data>/MANIFEST.json                   prepare        (tokenize, BPE, binarize)
#   data/processed/<data>/ood-<set>/MANIFEST.json         prepare        (OOD test, training BPE/dict)
#   results/powernorm/<data>/<arm>/seed<k>/config.yaml    resolve        (rewritten only if changed)
#     .../train.json                                      train          (resumes if interrupted)
#     .../checkpoints/averaged.pt                         average        (last N snapshots)
#     .../final.json                                      evaluate       (beam 5, BLEU two ways)
#   results/powernorm/<data>/summary.csv                  summarize
#   results/powernorm/figures/<data>-*.{png,pdf}          plot
#   results/powernorm/report.md                           report
#
# <data> is the dataset name, plus "-<variant>" when the profile sets data_variant (smoke).
# The public targets resolve PROFILE=auto once and call the private _pn-* targets in a sub-make,
# where the run lists come from the profile (`python -m normrepro.config get`); DATASET=, ARMS=
# and SEEDS= on the command line override the profile.

PN_REPL := replications/powernorm

.PHONY: replicate-powernorm crosscheck-powernorm bench-powernorm _pn-replicate _pn-crosscheck \
	_pn-bench _pn-force

pn_profile = $$($(PY) -c "from normrepro.config import resolve_profile_name as r; print(r('$(PROFILE)'))")

# The profile's `parallel_runs` runs that many trainings/evaluations at once (the cpu profile: two
# one-thread runs on two cores, which also overlaps their start-up and beam search).
replicate-powernorm: $(SETUP) ## PowerNorm vs BatchNorm vs LayerNorm translation, fetch to report (PROFILE DATASET ARMS SEEDS)
	@prof=$(pn_profile); jobs=$$($(PY) -m normrepro.config get $(PN_REPL) --profile $$prof parallel_runs); \
		$(MAKE) --no-print-directory -j$${jobs:-1} _pn-replicate PROFILE=$$prof

# The cross-check's data: the smoke set by default (minutes); CROSSCHECK_PROFILE=cpu runs the same
# widened small model on the full Bible data instead.
CROSSCHECK_PROFILE ?= smoke

crosscheck-powernorm: $(SETUP) ## arm ln, fairseq-train vs Lightning, same data+seed -> results/powernorm/crosscheck.json (CROSSCHECK_PROFILE=smoke|cpu)
	@$(MAKE) --no-print-directory _pn-crosscheck PROFILE=$(CROSSCHECK_PROFILE)

bench-powernorm: $(SETUP) ## training tokens/s, Lightning vs fairseq-train, same model/data -> results/bench/powernorm.json
	@$(MAKE) --no-print-directory _pn-bench PROFILE=$(pn_profile)

_pn-force:

ifneq ($(filter _pn-%,$(MAKECMDGOALS)),)
pn_get = $(shell $(PY) -m normrepro.config get $(PN_REPL) --profile $(PROFILE) $(1))
pn_cli = $(filter command line environment,$(origin $(1)))
PN_DATASET := $(if $(call pn_cli,DATASET),$(DATASET),$(call pn_get,dataset))
PN_ARMS := $(if $(call pn_cli,ARMS),$(ARMS),$(call pn_get,arms))
PN_SEEDS := $(if $(call pn_cli,SEEDS),$(SEEDS),$(call pn_get,seeds))
PN_VARIANT := $(call pn_get,data_variant)
PN_OOD := $(call pn_get,ood)
PN_KEEP := $(call pn_get,trainer.keep_snapshots)
PN_NAME := $(PN_DATASET)$(if $(PN_VARIANT),-$(PN_VARIANT))
PN_DATA := data/processed/$(PN_NAME)
PN_RES := results/powernorm/$(PN_NAME)
PN_RUNS := $(foreach a,$(PN_ARMS),$(foreach s,$(PN_SEEDS),$(PN_RES)/$(a)/seed$(s)))
PN_FINALS := $(addsuffix /final.json,$(PN_RUNS))
PN_OOD_DIRS := $(foreach o,$(PN_OOD),$(PN_DATA)/ood-$(o))
PN_RAW := $(foreach d,$(PN_DATASET) $(PN_OOD),data/raw/$(d)/MANIFEST.json)
PN_FIG := results/powernorm/figures/$(PN_NAME)-final-bleu.png
pn_arm = $(word 1,$(subst /, ,$(1)))
pn_seed = $(patsubst seed%,%,$(word 2,$(subst /, ,$(1))))

# Intermediate files of the pattern chains: keep them (make would delete them after the build).
.SECONDARY: $(foreach r,$(PN_RUNS),$(r)/config.yaml $(r)/train.json $(r)/checkpoints/averaged.pt) \
	$(foreach d,$(PN_DATASET) $(PN_OOD),data/processed/$(PN_NAME).$(d).options.yaml) \
	$(addsuffix /MANIFEST.json,$(PN_OOD_DIRS))

_pn-replicate: results/powernorm/report.md
	@echo "[powernorm] report: results/powernorm/report.md (data: $(PN_NAME), arms: $(PN_ARMS), seeds: $(PN_SEEDS))"

# data/raw/<dataset>/MANIFEST.json: the fetch rule of the top-level Makefile.

# Prepare options of the profile, rewritten only when they change (so the data is redone only then).
data/processed/$(PN_NAME).%.options.yaml: _pn-force | $(SETUP)
	@mkdir -p $(@D) && $(PY) -m normrepro.translation.prepare --write-options $@ --repl-dir $(PN_REPL) \
		--profile $(PROFILE) $*

$(PN_DATA)/MANIFEST.json: data/processed/$(PN_NAME).$(PN_DATASET).options.yaml data/raw/$(PN_DATASET)/MANIFEST.json
	$(PY) -m normrepro.translation.prepare $(PN_DATASET) --raw data/raw/$(PN_DATASET) --out $(PN_DATA) --options $<

$(PN_DATA)/ood-%/MANIFEST.json: data/processed/$(PN_NAME).%.options.yaml data/raw/%/MANIFEST.json $(PN_DATA)/MANIFEST.json
	$(PY) -m normrepro.translation.prepare $* --raw data/raw/$* --codes-from $(PN_DATA) --out $(PN_DATA)/ood-$* \
		--options $<

$(PN_RES)/%/config.yaml: _pn-force | $(SETUP)
	@$(PY) -m normrepro.config resolve $(PN_REPL) --profile $(PROFILE) --arm $(call pn_arm,$*) \
		--seed $(call pn_seed,$*) --set dataset=$(PN_DATASET) --out $@

$(PN_RES)/%/train.json: $(PN_RES)/%/config.yaml $(PN_DATA)/MANIFEST.json
	$(PY) -m normrepro.translation.train $(PN_RES)/$* --data $(PN_DATA)

$(PN_RES)/%/checkpoints/averaged.pt: $(PN_RES)/%/train.json
	$(PY) -m normrepro.translation.average $(PN_RES)/$* --last $(PN_KEEP)

$(PN_RES)/%/final.json: $(PN_RES)/%/checkpoints/averaged.pt $(addsuffix /MANIFEST.json,$(PN_OOD_DIRS))
	$(PY) -m normrepro.translation.evaluate $(PN_RES)/$* --data $(PN_DATA) $(addprefix --ood ,$(PN_OOD_DIRS))

# The list of runs of this command: the summary is redone when it changes (e.g. SEEDS=).
$(PN_RES)/runs.list: _pn-force
	@mkdir -p $(@D) && printf '%s\n' $(PN_RUNS) > $@.tmp && { cmp -s $@.tmp $@ && rm $@.tmp || mv $@.tmp $@; }

$(PN_RES)/summary.csv: $(PN_FINALS) $(PN_RES)/runs.list
	$(PY) -m normrepro.translation.summarize --out $@ --runs $(PN_RUNS)

$(PN_FIG): $(PN_RES)/summary.csv $(PN_REPL)/paper.yaml
	$(PY) -m normrepro.translation.plot --summary $< --paper $(PN_REPL)/paper.yaml --out-dir results/powernorm/figures

results/powernorm/report.md: $(PN_FIG) $(PN_RES)/summary.csv $(PN_REPL)/paper.yaml \
		$(wildcard results/powernorm/crosscheck.json results/bench/powernorm.json)
	$(PY) -m normrepro.translation.report --results results/powernorm --paper $(PN_REPL)/paper.yaml --out $@

# Cross-check (arm ln, one seed; smoke data unless CROSSCHECK_PROFILE=cpu): fairseq-train/generate vs Lightning. The
# smoke model is widened and trained 300 updates so that BLEU is above zero (about a minute each).
PN_CC_SET := trainer.max_updates=300 trainer.val_every_updates=50 optim.lr=5e-3 optim.warmup_updates=50 \
	model.encoder_embed_dim=64 model.decoder_embed_dim=64 model.encoder_ffn_embed_dim=256 \
	model.decoder_ffn_embed_dim=256 eval.max_len_b=20
PN_CODE := $(addprefix src/normrepro/translation/,model.py module.py datamodule.py train.py evaluate.py common.py)

# The cross-check and bench rules exist only when they are asked for: the report lists their
# outputs as prerequisites (to pick up new numbers), and must not rebuild them under its own
# PROFILE (the cross-check is defined on the smoke data).
ifneq ($(filter _pn-crosscheck,$(MAKECMDGOALS)),)
_pn-crosscheck: results/powernorm/crosscheck.json

results/powernorm/crosscheck.json: $(PN_DATA)/MANIFEST.json $(PN_CODE) src/normrepro/translation/crosscheck.py \
		$(PN_REPL)/base.yaml $(PN_REPL)/profiles/$(PROFILE).yaml
	$(PY) -m normrepro.translation.crosscheck --data $(PN_DATA) --repl-dir $(PN_REPL) --profile $(PROFILE) \
		--arm ln --seed 1 --out $@ $(addprefix --set ,$(PN_CC_SET))

endif

# Throughput benchmark on the profile's model and data.
ifneq ($(filter _pn-bench,$(MAKECMDGOALS)),)
_pn-bench: results/bench/powernorm.json

results/bench/powernorm.json: $(PN_DATA)/MANIFEST.json $(PN_CODE) src/normrepro/translation/bench.py \
		$(PN_REPL)/base.yaml $(PN_REPL)/profiles/$(PROFILE).yaml
	$(PY) -m normrepro.translation.bench --data $(PN_DATA) --repl-dir $(PN_REPL) --profile $(PROFILE) --out $@
endif
endif

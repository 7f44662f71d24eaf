# PowerNorm replication pipeline (included by the top-level Makefile). Every stage is a file:
#
#   data/raw/<dataset>/MANIFEST.json                      fetch          (normrepro.fetch)
#   data/processed/<data>.<dataset>.options.yaml          plan           (the profile's prepare options,
#                                                                         rewritten only if changed)
#   data/processed/<data>/MANIFEST.json                   prepare        (tokenize, BPE, binarize; redone
#                                                                         when a raw file changes)
#   data/processed/<data>/ood-<set>/MANIFEST.json         prepare        (OOD test, training BPE/dict)
#   results/powernorm/<profile>/                          everything one profile writes, nothing else:
#     <data>/<arm>/seed<k>/config.yaml                    plan           (rewritten only if changed; a
#                                                                         run trained under another
#                                                                         config moved aside first)
#       .../train.json                                    train          (resumes if interrupted)
#       .../checkpoints/averaged.pt                       average        (last N snapshots)
#       .../checkpoints/running_stats.pt                  recompute_stats (BN/PN running statistics
#                                                                         for the averaged weights)
#       .../final.json                                    evaluate       (beam 5, BLEU two ways;
#                                                                         recomputed statistics primary,
#                                                                         averaged ones secondary)
#     <data>/summary.csv                                  summarize
#     figures/<data>-*.{png,pdf}                          plot
#     report.md                                           report
#     crosscheck.json                                     crosscheck     (make crosscheck-powernorm)
#   results/bench/powernorm-<profile>.json                bench          (make bench-powernorm)
#
# <data> is the dataset name, plus "-<variant>" when the profile sets data_variant (smoke).
# The public targets run `normrepro.plan` first (see the top-level Makefile): it checks PROFILE,
# DATASET=, ARMS=, SEEDS=, SET= and every run config, stops at the first problem with one line,
# then locks results/powernorm/<profile>/, writes the run configs and prepare options and calls
# the private _pn-* goal with the command's variables (PN_*).

PN_REPL := replications/powernorm

.PHONY: replicate-powernorm crosscheck-powernorm bench-powernorm _pn-replicate _pn-crosscheck \
	_pn-bench _pn-force

# The profile's `parallel_runs` runs that many trainings/evaluations at once (the cpu profile: two
# one-thread runs on two cores, which also overlaps their start-up and beam search); the plan
# passes it to the sub-make as -j.
replicate-powernorm: $(SETUP) ## PowerNorm vs BatchNorm vs LayerNorm translation, fetch to report (PROFILE DATASET ARMS SEEDS SET)
	@$(PLAN) powernorm --goal replicate $(plan_args) -- $(MAKE) --no-print-directory _pn-replicate
	@$(MAKE) --no-print-directory report

# The cross-check's data: the smoke set by default (minutes); CROSSCHECK_PROFILE=cpu runs the same
# widened small model on the full Bible data instead.
CROSSCHECK_PROFILE ?= smoke

crosscheck-powernorm: $(SETUP) ## arm ln, fairseq-train vs Lightning, same data+seed -> results/powernorm/<CROSSCHECK_PROFILE>/crosscheck.json
	@$(PLAN) powernorm --goal crosscheck $(plan_args) --profile '$(CROSSCHECK_PROFILE)' \
		-- $(MAKE) --no-print-directory _pn-crosscheck

bench-powernorm: $(SETUP) ## training tokens/s, Lightning vs fairseq-train, same model/data -> results/bench/powernorm-<profile>.json
	@$(PLAN) powernorm --goal bench $(plan_args) -- $(MAKE) --no-print-directory _pn-bench

_pn-force:

# Data (whenever a plan names it: this pipeline's, or the insights pipeline's). The options files
# are written by the plan, only when they change.
ifneq ($(PN_DATA),)
$(PN_DATA)/MANIFEST.json: data/processed/$(PN_NAME).$(PN_DATASET).options.yaml \
		data/raw/$(PN_DATASET)/MANIFEST.json $(PN_RAW_FILES)
	$(PY) -m normrepro.stages.prepare --task translation $(PN_DATASET) --raw data/raw/$(PN_DATASET) --out $(PN_DATA) --options $<

$(PN_DATA)/ood-%/MANIFEST.json: data/processed/$(PN_NAME).%.options.yaml data/raw/%/MANIFEST.json \
		$(PN_DATA)/MANIFEST.json $(PN_OOD_RAW_FILES)
	$(PY) -m normrepro.stages.prepare --task translation $* --raw data/raw/$* --codes-from $(PN_DATA) --out $(PN_DATA)/ood-$* \
		--options $<

.SECONDARY: $(addsuffix /MANIFEST.json,$(PN_OOD_DIRS))
endif

# data/raw/<dataset>/MANIFEST.json: the fetch rule of the top-level Makefile.

ifneq ($(filter _pn-%,$(MAKECMDGOALS)),)
ifeq ($(PN_ROOT),)
$(error the private _pn-* goals run from the public targets (make replicate-powernorm, ...), which check the command first)
endif
PN_FINALS := $(addsuffix /final.json,$(PN_RUNS))
PN_FIG := $(PN_ROOT)/figures/$(PN_NAME)-final-bleu.png
PN_CROSSCHECK := results/powernorm/$(CROSSCHECK_PROFILE)/crosscheck.json
PN_BENCH := results/bench/powernorm-$(PROFILE).json

# Intermediate files of the pattern chains: keep them (make would delete them after the build).
.SECONDARY: $(foreach r,$(PN_RUNS),$(r)/checkpoints/averaged.pt $(r)/checkpoints/running_stats.pt)

_pn-replicate: $(PN_ROOT)/report.md
	@echo "[powernorm] report: $(PN_ROOT)/report.md (data: $(PN_NAME), arms: $(PN_ARMS), seeds: $(PN_SEEDS))"

$(PN_RES)/%/train.json: $(PN_RES)/%/config.yaml $(PN_DATA)/MANIFEST.json
	$(PY) -m normrepro.stages.train $(PN_RES)/$* --data $(PN_DATA)

$(PN_RES)/%/checkpoints/averaged.pt: $(PN_RES)/%/train.json
	$(PY) -m normrepro.tasks.translation.average $(PN_RES)/$* --last $(PN_KEEP)

# Cheap for LayerNorm runs (no running statistics: no forward pass); forward passes only otherwise.
$(PN_RES)/%/checkpoints/running_stats.pt: $(PN_RES)/%/checkpoints/averaged.pt
	$(PY) -m normrepro.tasks.translation.recompute_stats $(PN_RES)/$* --data $(PN_DATA)

$(PN_RES)/%/final.json: $(PN_RES)/%/checkpoints/running_stats.pt $(PN_RES)/%/checkpoints/averaged.pt \
		$(addsuffix /MANIFEST.json,$(PN_OOD_DIRS))
	$(PY) -m normrepro.stages.evaluate $(PN_RES)/$* --data $(PN_DATA) $(addprefix --ood ,$(PN_OOD_DIRS))

# The list of runs of this command (written by the plan): the summary is redone when it changes.
# train.json listed too, so it is no intermediate file: a deleted train.json means "train this
# run again".
$(PN_RES)/summary.csv: $(addsuffix /train.json,$(PN_RUNS)) $(PN_FINALS) $(PN_RES)/runs.list $(PN_REPL)/paper.yaml
	$(PY) -m normrepro.stages.summarize --replication $(PN_REPL) --out $@ --runs $(PN_RUNS)

$(PN_FIG): $(PN_RES)/summary.csv $(PN_REPL)/paper.yaml
	$(PY) -m normrepro.stages.plot --replication $(PN_REPL) --summary $< --out-dir $(PN_ROOT)/figures

# The report shows the cross-check (CROSSCHECK_PROFILE's, smoke by default) and this profile's
# bench when they exist; it never builds them.
$(PN_ROOT)/report.md: $(PN_FIG) $(PN_RES)/summary.csv $(PN_REPL)/paper.yaml $(wildcard $(PN_CROSSCHECK) $(PN_BENCH))
	$(PY) -m normrepro.stages.report --replication $(PN_REPL) --results $(PN_ROOT) \
		--crosscheck $(PN_CROSSCHECK) --bench $(PN_BENCH) --out $@

# Cross-check (arm ln, one seed; smoke data unless CROSSCHECK_PROFILE=cpu): fairseq-train/generate vs Lightning. The
# smoke model is widened and trained 300 updates so that BLEU is above zero (about a minute each).
PN_CC_SET := trainer.max_updates=300 trainer.val_every_updates=50 optim.lr=5e-3 optim.warmup_updates=50 \
	model.encoder_embed_dim=64 model.decoder_embed_dim=64 model.encoder_ffn_embed_dim=256 \
	model.decoder_ffn_embed_dim=256 eval.max_len_b=20
PN_CODE := $(addprefix src/normrepro/tasks/translation/,model.py module.py datamodule.py train.py evaluate.py common.py)

# The cross-check and bench rules exist only when they are asked for: the report lists their
# outputs as prerequisites (to pick up new numbers), and must not rebuild them under its own
# PROFILE (the cross-check is defined on the smoke data).
ifneq ($(filter _pn-crosscheck,$(MAKECMDGOALS)),)
_pn-crosscheck: $(PN_CROSSCHECK)

$(PN_CROSSCHECK): $(PN_DATA)/MANIFEST.json $(PN_CODE) src/normrepro/tasks/translation/crosscheck.py \
		$(PN_REPL)/base.yaml $(PN_REPL)/profiles/$(PROFILE).yaml
	$(PY) -m normrepro.tasks.translation.crosscheck --data $(PN_DATA) --repl-dir $(PN_REPL) --profile $(PROFILE) \
		--arm ln --seed 1 --out $@ $(addprefix --set ,$(PN_CC_SET)) $(PN_SET)

endif

# Throughput benchmark on the profile's model and data.
ifneq ($(filter _pn-bench,$(MAKECMDGOALS)),)
_pn-bench: $(PN_BENCH)

$(PN_BENCH): $(PN_DATA)/MANIFEST.json $(PN_CODE) src/normrepro/tasks/translation/bench.py \
		$(PN_REPL)/base.yaml $(PN_REPL)/profiles/$(PROFILE).yaml
	$(PY) -m normrepro.tasks.translation.bench --data $(PN_DATA) --repl-dir $(PN_REPL) --profile $(PROFILE) --out $@
endif
endif

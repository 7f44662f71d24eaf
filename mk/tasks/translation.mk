# Task translation (normrepro.tasks.translation): its data, per-run, cross-check and bench rules,
# used by every replication whose base.yaml names this task (mk/replication.mk).
#
#   data/processed/<data>.<dataset>.options.yaml       plan           (the profile's prepare options,
#                                                                     rewritten only if changed)
#   data/processed/<data>/MANIFEST.json                prepare        (tokenize, BPE, binarize; redone
#                                                                     when a raw file changes)
#   data/processed/<data>/ood-<set>/MANIFEST.json      prepare        (OOD test, training BPE/dict)
#   <run>/train.json                                   train          (the done-marker; resumes if
#                                                                     interrupted)
#   <run>/checkpoints/averaged.pt                      average        (last N snapshots)
#   <run>/checkpoints/running_stats.pt                 recompute_stats (BN/PN running statistics
#                                                                     for the averaged weights)
#   <run>/final.json                                   evaluate       (beam search, BLEU two ways;
#                                                                     recomputed statistics primary,
#                                                                     averaged ones secondary)
#   results/<name>/<profile>/<data>/sweep/...          sweep          (make sweep-<name>, mk/replication.mk)
#   results/<name>/<CROSSCHECK_PROFILE>/crosscheck.json crosscheck    (make crosscheck-<name>)
#   results/bench/<name>-<profile>.json                bench          (make bench-<name>)
#
# <data> is the dataset name, plus "-<variant>" when the profile sets data_variant (smoke). The
# profile's `parallel_runs` runs that many trainings/evaluations at once (the plan passes it to
# the sub-make as -j).

# The cross-check's data: the smoke set by default (minutes); CROSSCHECK_PROFILE=cpu runs the same
# widened small model on the full data instead.
CROSSCHECK_PROFILE ?= smoke

# Data (whenever a plan names it: a translation replication's, or the insights pipeline's).
ifneq ($(TR_DATA),)
$(TR_DATA)/MANIFEST.json: data/processed/$(TR_NAME).$(TR_DATASET).options.yaml \
		data/raw/$(TR_DATASET)/MANIFEST.json $(TR_RAW_FILES)
	$(PY) -m normrepro.stages.prepare --task translation $(TR_DATASET) --raw data/raw/$(TR_DATASET) --out $(TR_DATA) --options $<

$(TR_DATA)/ood-%/MANIFEST.json: data/processed/$(TR_NAME).%.options.yaml data/raw/%/MANIFEST.json \
		$(TR_DATA)/MANIFEST.json $(TR_OOD_RAW_FILES)
	$(PY) -m normrepro.stages.prepare --task translation $* --raw data/raw/$* --codes-from $(TR_DATA) --out $(TR_DATA)/ood-$* \
		--options $<

.SECONDARY: $(addsuffix /MANIFEST.json,$(TR_OOD_DIRS))
endif

ifeq ($(R_TASK),translation)
# What a training needs besides its config (the sweep's runs too, mk/replication.mk).
R_TRAIN_DATA := $(TR_DATA)/MANIFEST.json
TR_CROSSCHECK := results/$(R_NAME)/$(CROSSCHECK_PROFILE)/crosscheck.json
TR_BENCH := results/bench/$(R_NAME)-$(PROFILE).json
TR_CODE := $(addprefix src/normrepro/tasks/translation/,model.py module.py datamodule.py train.py evaluate.py common.py)

# Intermediate files of the pattern chains: keep them (make would delete them after the build).
.SECONDARY: $(foreach r,$(R_RUNS),$(r)/checkpoints/averaged.pt $(r)/checkpoints/running_stats.pt)

$(R_RES)/%/train.json: $(R_RES)/%/config.yaml $(TR_DATA)/MANIFEST.json
	$(PY) -m normrepro.stages.train $(R_RES)/$* --data $(TR_DATA)

$(R_RES)/%/checkpoints/averaged.pt: $(R_RES)/%/train.json
	$(PY) -m normrepro.tasks.translation.average $(R_RES)/$* --last $(TR_KEEP)

# Cheap for LayerNorm runs (no running statistics: no forward pass); forward passes only otherwise.
$(R_RES)/%/checkpoints/running_stats.pt: $(R_RES)/%/checkpoints/averaged.pt
	$(PY) -m normrepro.tasks.translation.recompute_stats $(R_RES)/$* --data $(TR_DATA)

$(R_RES)/%/final.json: $(R_RES)/%/checkpoints/running_stats.pt $(R_RES)/%/checkpoints/averaged.pt \
		$(addsuffix /MANIFEST.json,$(TR_OOD_DIRS))
	$(PY) -m normrepro.stages.evaluate $(R_RES)/$* --data $(TR_DATA) $(addprefix --ood ,$(TR_OOD_DIRS))

# The report shows the cross-check (CROSSCHECK_PROFILE's, smoke by default), this profile's
# bench and its sweep when they exist.
R_REPORT_DEPS := $(wildcard $(TR_CROSSCHECK) $(TR_BENCH) $(R_RES)/sweep/summary.csv)
R_REPORT_ARGS := --crosscheck $(TR_CROSSCHECK) --bench $(TR_BENCH)

# Cross-check (arm ln, one seed; smoke data unless CROSSCHECK_PROFILE=cpu): fairseq-train/generate
# vs Lightning. The smoke model is widened and trained 300 updates so that BLEU is above zero
# (about a minute each). Its rules exist only when asked for: the report lists its output as a
# prerequisite (to pick up new numbers) and must not rebuild it under its own PROFILE.
TR_CC_SET := trainer.max_updates=300 trainer.val_every_updates=50 optim.lr=5e-3 optim.warmup_updates=50 \
	model.encoder_embed_dim=64 model.decoder_embed_dim=64 model.encoder_ffn_embed_dim=256 \
	model.decoder_ffn_embed_dim=256 eval.max_len_b=20

ifneq ($(filter _crosscheck,$(MAKECMDGOALS)),)
_crosscheck: $(TR_CROSSCHECK)

$(TR_CROSSCHECK): $(TR_DATA)/MANIFEST.json $(TR_CODE) src/normrepro/tasks/translation/crosscheck.py \
		$(R_REPL)/base.yaml $(R_REPL)/profiles/$(PROFILE).yaml
	$(PY) -m normrepro.tasks.translation.crosscheck --data $(TR_DATA) --repl-dir $(R_REPL) --profile $(PROFILE) \
		--arm ln --seed 1 --out $@ $(addprefix --set ,$(TR_CC_SET)) $(R_SET)
endif

# Throughput benchmark on the profile's model and data.
ifneq ($(filter _bench,$(MAKECMDGOALS)),)
_bench: $(TR_BENCH)

$(TR_BENCH): $(TR_DATA)/MANIFEST.json $(TR_CODE) src/normrepro/tasks/translation/bench.py \
		$(R_REPL)/base.yaml $(R_REPL)/profiles/$(PROFILE).yaml
	$(PY) -m normrepro.tasks.translation.bench --data $(TR_DATA) --repl-dir $(R_REPL) --profile $(PROFILE) --out $@
endif
endif

"""The stages every replication shares: one CLI each, the same for every replication.

    python -m normrepro.stages.prepare --task TASK DATASET --raw RAW --out OUT [--options F] [--codes-from D]
    python -m normrepro.stages.train RUN [--data DIR]
    python -m normrepro.stages.evaluate RUN [--data DIR] [--ood DIR ...]
    python -m normrepro.stages.summarize --replication R --out SUMMARY [--runs RUN ...]
    python -m normrepro.stages.plot --replication R --summary SUMMARY --out-dir DIR
    python -m normrepro.stages.report --replication R --results ROOT [--datasets D ...] [--out F]
    python -m normrepro.stages.index --results results --replications replications

A run folder's config.yaml (`task:`) or a replication's base.yaml names the task; the stage runs
that task's half (`normrepro.tasks.<task>`), and what the shared stages need to know about a task
is its `SPEC` (`normrepro.tasks.TaskSpec`). Facts about a paper (arms, metric, claims, numbers)
come only from the replication's paper.yaml.
"""

"""The stages every replication shares (one CLI each, the same for every replication).

    python -m normrepro.stages.index    results/README.md, results/index.html, results/summary.png
"""

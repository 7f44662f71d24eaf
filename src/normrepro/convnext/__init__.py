"""The ConvNeXt BatchNorm→LayerNorm replication (Liu et al. 2022): data, model, training, stages.

Each stage is a module run as `python -m normrepro.convnext.<stage>` with explicit inputs and
outputs; `replications/convnext/pipeline.mk` chains them as file targets:

    prepare → train (every arm × seed) → evaluate → summarize → plot → report,  and bench.
"""

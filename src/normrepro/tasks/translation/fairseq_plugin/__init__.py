"""fairseq `--user-dir` plugin: registers the `norm_transformer` model and its architectures.

    fairseq-train DATA --user-dir src/normrepro/tasks/translation/fairseq_plugin \
        --arch norm_transformer_iwslt_de_en --encoder-norm power --encoder-normalize-before ...

The model lives in `normrepro.tasks.translation.model` (the Lightning module builds the same class);
importing it runs fairseq's `register_model` / `register_model_architecture` decorators. fairseq
imports this folder as the top-level module `fairseq_plugin`.
"""

from normrepro.tasks.translation import model  # noqa: F401  (registration happens on import)

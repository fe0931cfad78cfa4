"""panacea_pl: Pareto alignment of language models with Panacea, in PyTorch Lightning.

One model, trained once, follows any preference vector λ over several alignment dimensions at
inference time: λ is injected as singular values of an SVD-LoRA adapter (see `panacea_pl.layers`).
"""

__version__ = "0.1.0"

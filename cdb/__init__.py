"""cdb: contrastive debiasing of causal language models, from a CPU laptop to 70B on GPU clusters."""

__version__ = "0.1.0"

"""Figures of a model on text: losses, perplexity, BLEU/ROUGE-L, the error analysis."""

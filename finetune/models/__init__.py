"""Models and tokenizers: loading, saving, device and precision, batches."""

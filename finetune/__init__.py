"""The pipeline's library, organised by concern: config (the params schema, one module per
section), data (readers, conversations, cleaning, splitting), text (prompts, packing), models,
training, scoring, export, report, and search (`uv run tune`). dvc.yaml never runs it: the
stages/ and commands/ entry points call it."""

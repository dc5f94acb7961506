"""The commands a person runs by hand, not DVC stages: generate, serve, tune, rate. Each is a thin shell over
the code the stages share (stages.models, stages.prompts), registered in pyproject.toml."""

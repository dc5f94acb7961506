"""The commands a person runs by hand, not DVC stages: generate, serve, tune, rate. Each is a thin shell over
the library (finetune/), registered in pyproject.toml."""

from finetune.bytecode import keep_bytecode

keep_bytecode()

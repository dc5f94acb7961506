"""The pipeline's stages, one module per DVC stage, run as `python -m stages.<name>`."""

from finetune.bytecode import keep_bytecode

keep_bytecode()  # every stage is a fresh process importing torch and transformers

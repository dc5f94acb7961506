"""Fine-tuning with the Hugging Face Trainer: methods, checkpoints, progress for the tuner."""

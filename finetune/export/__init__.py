"""The fine-tuned model for other runtimes: GGUF and an Ollama Modelfile."""

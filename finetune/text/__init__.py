"""Text as the model sees it: how a model is asked (prompts, chat templates) and packing."""

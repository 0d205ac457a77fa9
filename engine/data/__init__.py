"""Data: corpus -> tokenizer -> megatron indexed dataset (cached by content) -> GPTDataset."""

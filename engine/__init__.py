"""Training engine: a job spec -> Ray Train -> megatron-core MoE GPT."""

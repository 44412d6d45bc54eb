"""Training: data, the trainer and the transformer baseline."""

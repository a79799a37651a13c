"""Training: the trainer loop, adapters (LoRA/LoKr), EMA, checkpoints, optimizers, validation."""

"""The task-agnostic training loop and its parts (checkpoints, EMA, optimizers, logging)."""

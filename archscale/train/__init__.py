"""Training on Lightning Fabric: the Trainer, checkpoints, run-directory logging."""

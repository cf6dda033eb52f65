"""The training engine: loop, GAN step, losses, checkpoints, distributed runs, faults, logs, optimizers."""

"""The shared training loop, checkpoints and distributed plumbing."""

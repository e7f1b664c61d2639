"""The aggregator: round state machine, update checks, strategies, checkpoints. Knows named tensors, not models."""

"""Flags of a tiny but complete training job (seconds per run on 2 cores), shared by tests."""

TRAIN_FLAGS = [
    "--synthetic_users=400",
    "--synthetic_items=200",
    "--kcore_max_iterations=2",
    "--num_shards=2",
    "--max_len=40",
    "--dim=16",
    "--num_blocks=1",
    "--batch_size=32",
    "--steps_per_epoch=4",
]
TINY_FLAGS = [*TRAIN_FLAGS, "--projector=64-64"]

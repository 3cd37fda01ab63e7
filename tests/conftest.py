import pytest
import torch

from moe.config import load_config


def shrunk(preset: str = "tiny", **overrides):
    """A real preset shrunk to test size (the tests build pieces from presets, not ad-hoc configs)."""
    small = dict(d_model=32, n_layers=2, n_heads=4, d_ff=24, max_seq_len=64, vocab_size=256)
    return load_config(preset, **{**small, **overrides})


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

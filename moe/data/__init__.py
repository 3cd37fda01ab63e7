"""Training text: tokenizers (tokenizer), prepared datasets of memory-mapped token shards (dataset,
written by moe.data.prepare) and the bundled corpus (shakespeare.txt.gz, beside this file)."""

from moe.data.dataset import BUNDLED, CORPUS, TokenArray, TokenDataset, bundled_split, get_batch, open_data
from moe.data.tokenizer import ByteTokenizer, Tokenizer
from moe.data.tokenizer import load as load_tokenizer

__all__ = [
    "BUNDLED",
    "CORPUS",
    "TokenArray",
    "TokenDataset",
    "bundled_split",
    "get_batch",
    "open_data",
    "Tokenizer",
    "ByteTokenizer",
    "load_tokenizer",
]

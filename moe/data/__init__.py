"""Training text: the bundled corpus (shakespeare.txt.gz, beside this file) and its byte tokenizer."""

from moe.data.corpus import CORPUS, decode, encode, get_batch, load_corpus, split_corpus

__all__ = ["CORPUS", "encode", "decode", "load_corpus", "split_corpus", "get_batch"]

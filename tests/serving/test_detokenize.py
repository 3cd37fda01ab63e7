"""TextStream (moe/serving/detokenize.py): text released token by token joins to the whole decode,
never splits a UTF-8 character, stops before a stop string that spans tokens, and keeps the leading
space a SentencePiece decoder drops from a sequence's first token."""

from moe.data import ByteTokenizer
from moe.data.tokenizer import HFTokenizer
from moe.serving.detokenize import TextStream


def feed(stream, ids):
    return [stream.add(t) for t in ids] + [stream.finish()]


def test_released_text_joins_to_the_decode_and_never_splits_a_character():
    ids = list("naïve café ☕ ok".encode())
    pieces = feed(TextStream(ByteTokenizer()), ids)
    assert "".join(pieces) == "naïve café ☕ ok"
    assert not any("\ufffd" in p for p in pieces)  # a half character is held back, not replaced


def test_a_stop_string_across_tokens_ends_the_text_before_it():
    stream = TextStream(ByteTokenizer(), stop=["END", "xyz"])
    pieces = feed(stream, list(b"abc EN") + list(b"D more"))
    assert "".join(pieces) == "abc " and stream.stopped
    assert stream.n_tokens == len(b"abc END")  # the token that completed it counts, nothing after
    held = TextStream(ByteTokenizer(), stop=["END"])
    assert [held.add(t) for t in b"aE"] == ["a", ""]  # "E" may begin the stop string: held back
    assert held.finish() == "E"


def test_context_keeps_the_leading_space_of_the_first_new_token():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    raw = Tokenizer(models.WordLevel({"\u2581The": 0, "\u2581world": 1, "[UNK]": 2}, unk_token="[UNK]"))
    raw.pre_tokenizer, raw.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    tok = HFTokenizer(raw, "hf")
    assert tok.decode([1]) == "world" and tok.decode([0, 1]) == "The world"  # the decoder's first-token rule
    assert "".join(feed(TextStream(tok, context=[0]), [1])) == " world"
    assert "".join(feed(TextStream(tok), [1])) == "world"

"""New tokens -> new text, one token at a time, with stop strings.

A token can end inside a UTF-8 character (the byte tokenizer's do) and a stop string can span
tokens, so text is released only when it is settled: not ending in an unfinished character (which
decodes to U+FFFD) and not the start of a stop string that the next tokens could complete. The
whole text is decoded again at each token (a tokenizer's decode of a piece is not the piece of its
decode), which costs O(n) per token; fine at these lengths. The new tokens are decoded after a few
of the prompt's (`context`), whose text is then cut off: a SentencePiece decoder drops the leading
space of a sequence's first token, which is not the first token of the text being continued.
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"


class TextStream:
    def __init__(self, tokenizer, stop: list[str] = (), context: list[int] = ()):
        self.tokenizer, self.stop = tokenizer, [s for s in stop if s]
        self.context = list(context)
        self._context_text = tokenizer.decode(self.context) if self.context else ""
        self.ids: list[int] = []
        self.text = ""  # the settled text so far (released)
        self.stopped = False  # a stop string was produced: text ends before it, later tokens are ignored
        self.n_tokens = 0  # tokens that made the text (up to and including the one that completed a stop)

    def add(self, token: int) -> str:
        """Take one new token; return the text it settles ('' when held back or after a stop)."""
        if self.stopped:
            return ""
        self.ids.append(token)
        self.n_tokens += 1
        full = self._decode()
        hits = [i for s in self.stop if (i := full.find(s, max(0, len(self.text) - len(s)))) >= 0]
        if hits:
            self.stopped = True
            return self._release(full[: min(hits)])
        settled = full.rstrip(REPLACEMENT)
        for s in self.stop:  # hold back a tail that begins a stop string
            for n in range(min(len(s) - 1, len(settled)), 0, -1):
                if settled.endswith(s[:n]):
                    settled = settled[:-n]
                    break
        return self._release(settled)

    def finish(self) -> str:
        """The text still held back, once generation has ended."""
        if self.stopped:
            return ""
        return self._release(self._decode())

    def _decode(self) -> str:
        """The new tokens' text, read after the context (or alone, where the context's text is not a
        prefix of the whole: a character split across the boundary)."""
        if self.context:
            whole = self.tokenizer.decode(self.context + self.ids)
            if whole.startswith(self._context_text):
                return whole[len(self._context_text) :]
        return self.tokenizer.decode(self.ids)

    def _release(self, text: str) -> str:
        if len(text) <= len(self.text):
            return ""
        new, self.text = text[len(self.text) :], text
        return new

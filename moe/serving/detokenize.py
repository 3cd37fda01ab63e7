"""New tokens -> new text, one token at a time, with stop strings.

A token can end inside a UTF-8 character (the byte tokenizer's do) and a stop string can span
tokens, so text is released only when it is settled: not ending in an unfinished character (which
decodes to U+FFFD) and not the start of a stop string that the next tokens could complete. The
whole text is decoded again at each token (a tokenizer's decode of a piece is not the piece of its
decode), which costs O(n) per token; fine at these lengths.
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"


class TextStream:
    def __init__(self, tokenizer, stop: list[str] = ()):
        self.tokenizer, self.stop = tokenizer, [s for s in stop if s]
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
        full = self.tokenizer.decode(self.ids)
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
        return self._release(self.tokenizer.decode(self.ids))

    def _release(self, text: str) -> str:
        if len(text) <= len(self.text):
            return ""
        new, self.text = text[len(self.text) :], text
        return new

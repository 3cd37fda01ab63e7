"""The KV page pool, with prefix caching: full pages of prompt tokens shared between requests.

A page is free, held (by one or more rows), or cached and idle. With prefix caching, a page that
holds a full page of some prompt is registered under the hash of its tokens and of every token
before them (a chain: key_i = sha256(key_{i-1} + tokens of page i)), so a later prompt that starts
with the same tokens finds the same K/V and skips computing it. Registered pages are reference
counted; when the last row holding one lets go it stays cached, idle, and is evicted least recently
used when the pool needs a page and has no free one.

Only pages wholly inside a prompt are shared, and a row never reuses the page that holds its
prompt's last position, so a shared page is only ever read: the row computes at least its last
prompt token, which gives the logits its first new token is drawn from.
"""

from __future__ import annotations

import collections
import hashlib
from array import array


def prefix_keys(tokens: list[int], page_size: int) -> list[bytes]:
    """The chain of keys of the full pages of `tokens`."""
    keys, key = [], b""
    for i in range(len(tokens) // page_size):
        key = hashlib.sha256(key + array("q", tokens[i * page_size : (i + 1) * page_size]).tobytes()).digest()
        keys.append(key)
    return keys


class PagePool:
    def __init__(self, n_pages: int, prefix_caching: bool = False):
        self.n_pages, self.prefix_caching = n_pages, prefix_caching
        self.free = collections.deque(range(n_pages))
        self._page_of: dict[bytes, int] = {}  # key -> the page holding those tokens' K/V
        self._key_of: dict[int, bytes] = {}
        self._refs: collections.Counter = collections.Counter()  # registered page -> rows holding it
        self._idle: collections.OrderedDict[int, None] = (
            collections.OrderedDict()
        )  # registered, held by none: LRU first
        self.queried_tokens = self.hit_tokens = 0  # prompt tokens looked up, and found (prefix cache hit rate)
        self.evicted = 0  # idle cached pages given to another use

    @property
    def available(self) -> int:
        """Pages a row could take now: the free ones and the idle cached ones (evicted on demand)."""
        return len(self.free) + len(self._idle)

    @property
    def held(self) -> int:
        """Pages rows hold (what /metrics reports as used)."""
        return self.n_pages - self.available

    def take(self, n: int) -> list[int]:
        """n pages for one row (n <= available): free ones first, then the least recently used idle ones."""
        out = []
        for _ in range(n):
            if self.free:
                out.append(self.free.popleft())
            else:
                page, _ = self._idle.popitem(last=False)
                del self._page_of[self._key_of.pop(page)], self._refs[page]
                self.evicted += 1
                out.append(page)
        return out

    def release(self, pages: list[int]) -> None:
        """A row lets go of its pages: registered ones go idle when no other row holds them. The last
        page first, so a prefix's deeper pages are evicted before the ones it starts with (a lookup
        stops at the first missing page: losing the first would strand the rest)."""
        for page in reversed(pages):
            if page in self._key_of:
                self._refs[page] -= 1
                if self._refs[page] == 0:
                    self._idle[page] = None
            else:
                self.free.append(page)

    def lookup(self, keys: list[bytes]) -> list[int]:
        """The cached pages of the longest prefix of `keys`, now held by the caller too."""
        pages = []
        for key in keys:
            page = self._page_of.get(key)
            if page is None:
                break
            pages.append(page)
            self._refs[page] += 1
            self._idle.pop(page, None)
        return pages

    def count_lookup(self, queried: int, hit: int) -> None:
        self.queried_tokens += queried
        self.hit_tokens += hit

    def register(self, key: bytes, page: int) -> None:
        """A row's page now holds the full page of prompt tokens `key` names (a page the row holds)."""
        if key in self._page_of or page in self._key_of:
            return  # another row computed the same prefix at the same time: this copy stays private
        self._page_of[key], self._key_of[page] = page, key
        self._refs[page] = 1

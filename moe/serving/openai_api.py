"""OpenAI's HTTP API as the engine sees it: request bodies checked field by field into engine
Requests, and the response bodies and stream chunks built from what the engine returns.

Every bad field is an APIError naming it (HTTP 400 with OpenAI's envelope
{"error": {"message", "type", "param", "code"}}), raised before anything is submitted.

Supported: /v1/completions (prompt as a string, strings, token ids or lists of them; max_tokens,
temperature, top_p, top_k, seed, stop, stop_token_ids, n, stream, stream_options.include_usage,
logprobs, echo) and /v1/chat/completions (messages, the same sampling fields, logprobs and
top_logprobs). Penalties other than 0, best_of and logit_bias are refused by name rather than
ignored. The checkpoint tokenizer's end-of-text token, where it has one, stops generation unless
ignore_eos is true (vLLM's field, which benchmarks send).

Chat prompts: the checkpoint tokenizer's chat template where it has one (a converted Hugging Face
checkpoint), else the plain one: each message as "role: content" on its own line, then "assistant:"
(moe/data/chat.py).
"""

from __future__ import annotations

import math
import random
import time
import uuid
from dataclasses import dataclass, field

from moe.data import chat
from moe.serving.request import MAX_LOGPROBS, Request, TokenLogprob

MAX_N = 16


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, type: str | None = None, code=None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or {400: "invalid_request_error", 404: "not_found_error", 429: "rate_limit_error"}.get(
            status, "server_error"
        )

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class Choice:
    """One sequence to generate: its request and what its response needs besides the tokens."""

    index: int
    prompt_index: int
    request: Request
    stop: list[str]
    echo_text: str = ""  # the prompt's text, put before the completion (completions' echo)


@dataclass
class Job:
    kind: str  # "completion" or "chat"
    model: str
    choices: list[Choice]
    prompt_lengths: list[int]  # tokens in each distinct prompt (usage counts each once)
    stream: bool
    include_usage: bool
    logprobs: int | None  # top-N per token, None: no logprobs
    echo: bool = False
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:24])
    created: int = field(default_factory=lambda: int(time.time()))


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(body: dict, name: str, default, low: float, high: float, low_open=False) -> float:
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or abs(v) > 1e300 or not math.isfinite(v):
        raise APIError(400, f"{name} must be a finite number, got {str(v)[:40]}", name)
    if v < low or v > high or (low_open and v == low):
        raise APIError(400, f"{name} must be in {'(' if low_open else '['}{low}, {high}], got {v!r}", name)
    return float(v)


def _integer(body: dict, name: str, default, low: int, high: int | None = None):
    v = body.get(name)
    if v is None:
        return default
    if not _is_int(v) or v < low or (high is not None and v > high):
        bound = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
        raise APIError(400, f"{name} must be {bound}, got {v!r}", name)
    return v


def _bool(body: dict, name: str, default: bool = False) -> bool:
    v = body.get(name, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise APIError(400, f"{name} must be true or false, got {v!r}", name)
    return v


def _stop(body: dict) -> list[str]:
    v = body.get("stop")
    if v is None:
        return []
    v = [v] if isinstance(v, str) else v
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise APIError(400, f"stop must be a string or a list of strings, got {v!r}", "stop")
    return v


def _token_list(v, vocab: int, name: str) -> list[int]:
    if not isinstance(v, list) or not all(_is_int(t) for t in v):
        raise APIError(400, f"{name} must be a list of integer token ids", name)
    bad = [t for t in v if not 0 <= t < vocab]
    if bad:
        raise APIError(400, f"{name}: token id {bad[0]} is outside the vocabulary [0, {vocab})", name)
    return v


def _refuse_unsupported(body: dict) -> None:
    for name, neutral in (("presence_penalty", 0), ("frequency_penalty", 0), ("repetition_penalty", 1)):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or value != neutral):
            raise APIError(400, f"{name} is not supported (only its neutral value, {neutral})", name)
    if body.get("best_of") not in (None, 1) or body.get("logit_bias"):
        raise APIError(
            400, "best_of and logit_bias are not supported", "best_of" if "best_of" in body else "logit_bias"
        )


class Protocol:
    """Parses request bodies against one served model: its names, tokenizer and context length."""

    def __init__(self, names: list[str], tokenizer, cfg, capacity: int | None = None):
        """capacity: the positions the engine's page pool holds, which caps a chat's default max_tokens."""
        self.names, self.tokenizer, self.cfg, self.capacity = names, tokenizer, cfg, capacity

    def model(self, body: dict) -> str:
        name = body.get("model")
        if name is None:
            return self.names[0]
        if not isinstance(name, str):
            raise APIError(400, f"model must be a string, got {name!r}", "model")
        if name not in self.names:
            raise APIError(
                404,
                f"the model {name!r} does not exist; this server serves {self.names}",
                "model",
                code="model_not_found",
            )
        return name

    def _sampling(self, body: dict) -> tuple[dict, int | None, int]:
        _refuse_unsupported(body)
        temperature = _number(body, "temperature", 1.0, 0.0, 100.0)
        top_p = _number(body, "top_p", 1.0, 0.0, 1.0, low_open=True)
        top_k = body.get("top_k")
        top_k = None if top_k in (None, -1, 0) else _integer(body, "top_k", None, 1)
        seed = _integer(body, "seed", None, 0, 2**63 - 1)
        n = _integer(body, "n", 1, 1, MAX_N)
        settings = {"temperature": temperature, "top_p": None if top_p == 1.0 else top_p, "top_k": top_k}
        return settings, seed, n

    def _stop_tokens(self, body: dict) -> tuple[int, ...]:
        ids = _token_list(body.get("stop_token_ids") or [], self.cfg.vocab_size, "stop_token_ids")
        eot = None if _bool(body, "ignore_eos") else getattr(self.tokenizer, "eot", None)
        return tuple(ids) + ((eot,) if eot is not None and eot not in ids else ())

    def _max_tokens(self, body: dict, prompt_len: int, default: int | None, name: str = "max_tokens") -> int:
        room = self.cfg.max_seq_len - prompt_len
        if room < 1:
            raise APIError(
                400, f"the prompt is {prompt_len} tokens: this model's context is {self.cfg.max_seq_len}", "prompt"
            )
        v = _integer(body, name, None, 1)
        if v is None and name == "max_tokens" and "max_completion_tokens" in body:
            v = _integer(body, "max_completion_tokens", None, 1)
        if v is None:
            if self.capacity is not None:  # what the pool can hold for it (positions written: prompt + new - 1)
                room = max(1, min(room, self.capacity - prompt_len + 1))
            return min(default, room) if default is not None else room
        if v > room:
            raise APIError(
                400,
                f"the prompt ({prompt_len} tokens) plus {name} ({v}) passes this model's context of "
                f"{self.cfg.max_seq_len} tokens; ask for at most {room}",
                name,
            )
        return v

    def _encode(self, text: str) -> list[int]:
        try:
            ids = self.tokenizer.encode_prompt(text)
        except UnicodeEncodeError:
            raise APIError(400, "the prompt is not valid UTF-8 text", "prompt") from None
        if not ids:
            raise APIError(400, "the prompt is empty", "prompt")
        return ids

    def completion(self, body: dict) -> Job:
        model = self.model(body)
        prompts = self._prompts(body.get("prompt"))
        settings, seed, n = self._sampling(body)
        logprobs = _integer(body, "logprobs", None, 0, MAX_LOGPROBS)
        echo = _bool(body, "echo")
        stream, include_usage = self._stream(body)
        stop, stop_tokens = _stop(body), self._stop_tokens(body)
        if body.get("suffix") is not None:
            raise APIError(400, "suffix is not supported", "suffix")
        choices, lengths = [], []
        for p, (ids, text) in enumerate(prompts):
            max_tokens = self._max_tokens(body, len(ids), 16)
            lengths.append(len(ids))
            for i in range(n):
                request = self._request(ids, max_tokens, settings, stop_tokens, seed, i, logprobs, echo)
                choices.append(Choice(len(choices), p, request, stop, text if echo else ""))
        return Job("completion", model, choices, lengths, stream, include_usage, logprobs, echo)

    def chat(self, body: dict) -> Job:
        model = self.model(body)
        ids = self.chat_prompt(body.get("messages"))
        settings, seed, n = self._sampling(body)
        want = _bool(body, "logprobs")
        top = _integer(body, "top_logprobs", 0, 0, MAX_LOGPROBS)
        if top and not want:
            raise APIError(400, "top_logprobs needs logprobs: true", "top_logprobs")
        logprobs = top if want else None
        stream, include_usage = self._stream(body)
        max_tokens = self._max_tokens(body, len(ids), None)
        stop, stop_tokens = _stop(body), self._stop_tokens(body)
        choices = [
            Choice(i, 0, self._request(ids, max_tokens, settings, stop_tokens, seed, i, logprobs, False), stop)
            for i in range(n)
        ]
        return Job("chat", model, choices, [len(ids)], stream, include_usage, logprobs)

    def chat_prompt(self, messages) -> list[int]:
        """The messages through the tokenizer's chat template (moe/data/chat.py), as token ids."""
        if not isinstance(messages, list) or not messages:
            raise APIError(400, "messages must be a non-empty list of {role, content} objects", "messages")
        plain = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in chat.ROLES:
                raise APIError(400, f"messages[{i}] needs a role: system, developer, user or assistant", "messages")
            content = m.get("content")
            if isinstance(content, list):  # content parts: only text parts
                if not all(
                    isinstance(c, dict) and c.get("type") == "text" and isinstance(c.get("text"), str) for c in content
                ):
                    raise APIError(400, f"messages[{i}].content: only text parts are supported", "messages")
                content = "".join(c["text"] for c in content)
            if not isinstance(content, str):
                raise APIError(400, f"messages[{i}].content must be a string", "messages")
            plain.append({"role": m["role"], "content": content})
        template = getattr(self.tokenizer, "chat_template", None)
        try:
            text = chat.render(template, plain)
        except ValueError as e:
            raise APIError(400, str(e), "messages") from None
        if template is None:
            return self._encode(text)
        ids = self.tokenizer.encode(text)  # the template wrote the special tokens itself
        if not ids:
            raise APIError(400, "the chat template rendered an empty prompt", "messages")
        return ids

    def _stream(self, body: dict) -> tuple[bool, bool]:
        stream = _bool(body, "stream")
        options = body.get("stream_options") or {}
        if not isinstance(options, dict):
            raise APIError(400, "stream_options must be an object", "stream_options")
        return stream, _bool(options, "include_usage")

    def _prompts(self, prompt) -> list[tuple[list[int], str]]:
        """(ids, text) for each prompt of the body's `prompt` field."""
        if isinstance(prompt, str):
            return [(self._encode(prompt), prompt)]
        if isinstance(prompt, list) and prompt:
            if all(isinstance(p, str) for p in prompt):
                return [(self._encode(p), p) for p in prompt]
            if all(_is_int(t) for t in prompt):
                ids = _token_list(prompt, self.cfg.vocab_size, "prompt")
                return [(ids, self.tokenizer.decode(ids))]
            if all(isinstance(p, list) and p for p in prompt):
                return [
                    (ids := _token_list(p, self.cfg.vocab_size, "prompt"), self.tokenizer.decode(ids)) for p in prompt
                ]
        raise APIError(
            400, "prompt must be a string, a list of strings, or (lists of) token ids, and not empty", "prompt"
        )

    def _request(self, ids, max_tokens, settings, stop_tokens, seed, i, logprobs, echo) -> Request:
        seed = random.randrange(2**62) if seed is None else seed + i
        return Request(
            list(ids),
            max_tokens,
            dict(settings),
            stop_tokens,
            seed=seed,
            logprobs=logprobs,
            prompt_logprobs=echo and logprobs is not None,
        )


# --- responses -------------------------------------------------------------------------------------


def usage(job: Job, completion_tokens: int) -> dict:
    prompt = sum(job.prompt_lengths)
    return {"prompt_tokens": prompt, "completion_tokens": completion_tokens, "total_tokens": prompt + completion_tokens}


class LogprobText:
    """Token ids as the text pieces logprobs report (each token decoded alone)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def piece(self, token: int) -> str:
        """A token that is not text alone (a byte inside a UTF-8 character) reads "token_id:N", as vLLM's."""
        text = self.tokenizer.decode([token])
        return f"token_id:{token}" if "\ufffd" in text else text

    def completion(self, entries: list[TokenLogprob | None], tokens: list[int], offset: int) -> dict:
        """The legacy completions form: tokens, token_logprobs, top_logprobs, text_offset."""
        out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for t, e in zip(tokens, entries):
            piece = self.piece(t)
            out["tokens"].append(piece)
            out["token_logprobs"].append(None if e is None else e.logprob)
            out["top_logprobs"].append(None if e is None else {self.piece(i): lp for i, lp in e.top})
            out["text_offset"].append(offset)
            offset += len(piece)
        return out

    def chat(self, entries: list[TokenLogprob]) -> dict:
        def one(token, lp):
            piece = self.piece(token)
            return {"token": piece, "logprob": lp, "bytes": list(piece.encode("utf-8", "replace"))}

        return {
            "content": [{**one(e.token, e.logprob), "top_logprobs": [one(i, lp) for i, lp in e.top]} for e in entries]
        }

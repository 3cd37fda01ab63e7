"""What a caller asks of the serving engine and what it gets back, and the checks a request passes
before it runs (shared by the engine and by `generate`, its reference)."""

from __future__ import annotations

from dataclasses import dataclass, field

from moe.serving.sampling import SamplingParams


def _token_id(t) -> bool:
    """An int that is not a bool (True is an int to Python, but neither a token nor a count)."""
    return isinstance(t, int) and not isinstance(t, bool)


class RequestError(ValueError):
    """A request the engine refuses; the engine keeps serving the others."""


@dataclass
class Request:
    prompt: list[int]
    max_new_tokens: int
    sampling: SamplingParams | dict | None = None  # see SamplingParams; a dict's unknown keys are an error
    stop_tokens: tuple[int, ...] = ()  # generation ends after emitting one of these
    seed: int = 0
    images: list = field(default_factory=list)  # a vision model's: one [C, H, W] image per placeholder in the prompt
    logprobs: int | None = None  # record each new token's log-probability and the top-N (0..MAX_LOGPROBS) beside it
    prompt_logprobs: bool = False  # ... and the prompt's (its first token has none)


MAX_LOGPROBS = 20  # as OpenAI's API allows


@dataclass
class TokenLogprob:
    """A token's log-probability under the model (log_softmax of its logits, before temperature,
    top-k or top-p) and the `top` most likely tokens there as (id, log-probability), best first."""

    token: int
    logprob: float
    top: list[tuple[int, float]]


@dataclass
class Result:
    tokens: list[int] = field(default_factory=list)  # new tokens, without the prompt
    finish_reason: str | None = None  # "stop" (a stop token), "length" (max_new_tokens), "cancelled"
    t_arrival: float = 0.0
    t_admitted: float | None = None  # when it left the queue for a row
    token_times: list[float] = field(default_factory=list)  # when each token was emitted
    draft_proposed: int = 0
    draft_accepted: int = 0
    target_forwards: int = 0  # steps this request took part in
    preemptions: int = 0  # times it gave its pages back and was recomputed
    logprobs: list[TokenLogprob] = field(default_factory=list)  # one per new token, when asked for
    prompt_logprobs: list[TokenLogprob | None] = field(default_factory=list)  # one per prompt token, when asked

    @property
    def ttft(self) -> float:
        return self.token_times[0] - self.t_arrival


def token_ids(value, what: str) -> list[int]:
    """`value` (a list, tuple, range or bytes of ids) as a list, or a ValueError naming `what`."""
    if not isinstance(value, (list, tuple, range, bytes)):
        hint = " (call .tolist() on a tensor)" if hasattr(value, "tolist") else ""
        raise ValueError(f"{what} must be a list of token ids (integers), got {type(value).__name__}{hint}")
    return list(value)


def check_seed(seed) -> None:
    if not _token_id(seed) or not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")


def check_logprobs(logprobs, prompt_logprobs) -> None:
    if logprobs is not None and (not _token_id(logprobs) or not 0 <= logprobs <= MAX_LOGPROBS):
        raise ValueError(f"logprobs must be an integer in [0, {MAX_LOGPROBS}] or None, got {logprobs!r}")
    if not isinstance(prompt_logprobs, bool):
        raise ValueError(f"prompt_logprobs must be true or false, got {prompt_logprobs!r}")


def check_request(cfg, prompt, max_new_tokens, stop_tokens=()) -> list[int]:
    """The errors a request can have before it runs, shared with the serving engine; returns the
    prompt as a list. Every wrong type or value is a ValueError naming the field."""
    prompt = token_ids(prompt, "the prompt")
    if not prompt:
        raise ValueError("the prompt is empty: give at least one token")
    if any(not _token_id(t) or not 0 <= t < cfg.vocab_size for t in prompt):
        raise ValueError(f"prompt tokens must be integers in [0, {cfg.vocab_size}) (not bools)")
    if not _token_id(max_new_tokens) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    stop = token_ids(stop_tokens, "stop_tokens")
    if any(not _token_id(t) or not 0 <= t < cfg.vocab_size for t in stop):
        raise ValueError(f"stop_tokens must be token ids in [0, {cfg.vocab_size}) (integers, not bools), got {stop!r}")
    if len(prompt) > cfg.max_seq_len:
        raise ValueError(f"prompt of {len(prompt)} tokens is longer than max_seq_len {cfg.max_seq_len}")
    if len(prompt) + max_new_tokens > cfg.max_seq_len:
        raise ValueError(
            f"prompt ({len(prompt)}) + max_new_tokens ({max_new_tokens}) exceeds max_seq_len "
            f"{cfg.max_seq_len}; ask for at most {cfg.max_seq_len - len(prompt)} new tokens"
        )
    return prompt

"""The serving wing: sampling, one-sequence generation, and the continuous-batching engine.

request   Request, Result, RequestError and the checks a request passes
sampling  SamplingParams, inverse-CDF sampling, the speculative acceptance rule
generate  generate(): one sequence through the contiguous KV cache (the engine's reference)
engine    Engine: continuous batching over a paged KV cache, speculative decoding, expert counts
replay    `serve-bench`: Poisson arrivals replayed through the engine; latency and expert batches
threaded  the engine stepping on its own thread, for a server
server    `serve`: the OpenAI HTTP API (FastAPI): openai_api (bodies), detokenize (text, stop
          strings), metrics (Prometheus)
"""

from moe.serving.engine import Engine, StepStats
from moe.serving.generate import generate, sample_next
from moe.serving.request import Request, RequestError, Result, check_request
from moe.serving.sampling import SamplingParams, accept_draft, probabilities, sample

__all__ = [
    "Engine",
    "StepStats",
    "generate",
    "sample_next",
    "Request",
    "RequestError",
    "Result",
    "check_request",
    "SamplingParams",
    "accept_draft",
    "probabilities",
    "sample",
]

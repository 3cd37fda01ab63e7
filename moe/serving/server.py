"""An OpenAI-compatible HTTP server over the engine (FastAPI on uvicorn): python -m moe serve.

    POST /v1/completions, /v1/chat/completions   (moe/serving/openai_api.py: fields, bodies)
    GET  /v1/models, /health (503 while the model loads), /metrics (moe/serving/metrics.py)

The engine steps on its own thread (moe/serving/threaded.py); each request's new tokens reach its
handler on the event loop as the step that made them ends, and stream out as server-sent events.
A handler whose client has gone, or whose request passed --request-timeout, cancels its requests
in the engine, which frees their pages at once. Errors use OpenAI's envelope: 400 for a bad field
or body, 404 for an unknown model, 429 when --max-queued requests already wait, 504 on timeout
(inside a stream: an error event, then the stream closes), 503 while loading or shutting down.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from moe.serving.detokenize import TextStream
from moe.serving.metrics import Metrics
from moe.serving.openai_api import APIError, Choice, Job, LogprobText, Protocol, usage
from moe.serving.request import RequestError
from moe.serving.threaded import ThreadedEngine, Update

CONTEXT = 8  # prompt tokens decoded before the new ones, so a tokenizer's first-token rules do not apply to them


class ClientGone(Exception):
    """The HTTP client disconnected before its response was ready."""


@dataclass
class Settings:
    names: list[str]  # the served model name(s): the first is what responses report
    max_queued: int = 256  # requests waiting for a row before new ones get 429
    request_timeout: float = 600.0  # seconds from arrival to the last token before a 504


@dataclass
class Served:
    """What a loaded server holds: the engine on its thread, the tokenizer, the request parser."""

    threaded: ThreadedEngine
    tokenizer: object
    protocol: Protocol
    text: LogprobText


@dataclass
class _Seq:
    """One choice in flight: its engine id, text so far and how it ended."""

    choice: Choice
    stream: TextStream
    rid: int | None = None
    tokens: int = 0  # completion tokens that count (up to a stop string)
    logprobs: list = field(default_factory=list)
    finish_reason: str | None = None
    done: bool = False  # its last update has come
    result: object = None  # the engine's Result, with the last update
    offset: int = 0  # streamed logprobs: where the next token's text starts


def build_app(load: Callable[[Metrics], tuple], settings: Settings) -> FastAPI:
    """load(metrics) -> (engine, tokenizer), run on a thread at startup while /health says 503."""
    metrics = Metrics()
    state: dict = {"served": None, "error": None}

    def loader():
        try:
            engine, tokenizer = load(metrics)
            # Everything made so far (modules, the model, the app: some 300k objects) lives as long as
            # the server: out of the collector's sight, its full collections no longer stall every
            # request for 100-200 ms, as they did measured every few seconds under load.
            gc.freeze()
            metrics.watch(engine)
            threaded = ThreadedEngine(engine, on_step=metrics.step).start()
            state["served"] = Served(
                threaded,
                tokenizer,
                Protocol(settings.names, tokenizer, engine.model.cfg, engine.n_pages * engine.page_size),
                LogprobText(tokenizer),
            )
        except Exception as e:  # reported by /health and every endpoint
            state["error"] = e

    @contextlib.asynccontextmanager
    async def lifespan(app):
        thread = threading.Thread(target=loader, name="moe-load", daemon=True)
        thread.start()
        yield
        thread.join()
        if state["served"] is not None:
            state["served"].threaded.close()

    app = FastAPI(title="moe", lifespan=lifespan)

    def served() -> Served:
        if state["error"] is not None:
            raise APIError(503, f"the model failed to load: {state['error']}")
        if state["served"] is None:
            raise APIError(503, "the model is still loading")
        if state["served"].threaded.error is not None:
            raise APIError(500, f"the engine failed: {state['served'].threaded.error!r}")
        return state["served"]

    @app.exception_handler(APIError)
    async def api_error(_, e: APIError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_, e: RequestValidationError):
        return JSONResponse(APIError(400, f"bad request: {e.errors()[0].get('msg')}").body(), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(_, e: HTTPException):
        return JSONResponse(APIError(e.status_code, str(e.detail)).body(), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def any_error(_, e: Exception):  # a bug: still a JSON body, never a bare traceback page
        return JSONResponse(APIError(500, f"internal error: {type(e).__name__}: {e}").body(), status_code=500)

    @app.get("/health")
    async def health():
        served()
        return {"status": "ok"}

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def models():
        s = served()
        return {
            "object": "list",
            "data": [
                {
                    "id": n,
                    "object": "model",
                    "created": 0,
                    "owned_by": "moe",
                    "max_model_len": s.protocol.cfg.max_seq_len,
                }
                for n in settings.names
            ],
        }

    async def body_of(request: Request) -> dict:
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError) as e:
            raise APIError(400, f"the body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise APIError(400, "the body must be a JSON object")
        return body

    @app.post("/v1/completions")
    async def completions(request: Request):
        s = served()
        return await respond(s, s.protocol.completion(await body_of(request)), request)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        s = served()
        return await respond(s, s.protocol.chat(await body_of(request)), request)

    async def respond(s: Served, job: Job, request: Request):
        if len(job.choices) > settings.max_queued:
            raise APIError(400, f"{len(job.choices)} choices are more than --max-queued {settings.max_queued}", "n")
        if s.threaded.n_waiting + len(job.choices) > settings.max_queued:
            raise APIError(
                429, f"{s.threaded.n_waiting} requests are already waiting (--max-queued {settings.max_queued})"
            )
        events: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        seqs = [_Seq(c, TextStream(s.tokenizer, c.stop, context=c.request.prompt[-CONTEXT:])) for c in job.choices]
        deadline = time.monotonic() + settings.request_timeout

        def listener_for(i: int, n_prompt: int):
            def listener(update: Update):  # on the engine thread
                if update.finish_reason is not None:
                    metrics.finished_request(update.result, n_prompt)
                loop.call_soon_threadsafe(events.put_nowait, (i, update))

            return listener

        for i, seq in enumerate(seqs):
            listener = listener_for(i, len(seq.choice.request.prompt))

            try:
                seq.rid = await asyncio.wrap_future(s.threaded.submit(seq.choice.request, listener))
            except (RequestError, RuntimeError) as e:
                cancel(s, seqs)
                raise APIError(400 if isinstance(e, RequestError) else 503, str(e), "prompt") from None
        if job.stream:
            return StreamingResponse(stream(s, job, seqs, events, deadline), media_type="text/event-stream")
        try:
            async for _ in updates(s, seqs, events, deadline, request):
                pass
        except ClientGone:
            return Response(status_code=499)  # nobody is listening; nginx's code for it
        except TimeoutError:
            cancel(s, seqs)
            raise APIError(
                504, f"the request passed --request-timeout ({settings.request_timeout:g} s)", type="timeout"
            ) from None
        if any(q.finish_reason == "error" for q in seqs):
            raise APIError(500, "the engine failed while serving this request")
        return whole(s, job, seqs)

    async def updates(s: Served, seqs: list[_Seq], events: asyncio.Queue, deadline: float, request: Request | None):
        """Each choice index whose text grew, as its updates arrive, until every choice is done.
        TimeoutError past the deadline; ClientGone (after cancelling) when the client has left,
        checked at least every quarter second whether or not tokens are arriving."""
        checked = time.monotonic()
        while not all(q.done for q in seqs):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            if request is not None and time.monotonic() - checked > 0.25:
                checked = time.monotonic()
                if await request.is_disconnected():
                    cancel(s, seqs)
                    raise ClientGone
            try:
                i, update = await asyncio.wait_for(events.get(), min(left, 0.25))
            except TimeoutError:
                continue
            seq, delta, lps = seqs[i], "", []
            if seq.finish_reason is None:
                tokens = update.tokens
                ended_by_token = (
                    update.finish_reason == "stop" and tokens and tokens[-1] in seq.choice.request.stop_tokens
                )
                before = seq.stream.n_tokens
                delta = "".join(seq.stream.add(t) for t in (tokens[:-1] if ended_by_token else tokens))
                used = seq.stream.n_tokens - before + (1 if ended_by_token and not seq.stream.stopped else 0)
                lps = update.logprobs[:used]  # none past a stop string; the stop token's own, yes
                seq.logprobs += lps
                seq.tokens += used  # the stop token counts as generated, though its text is not shown
                if seq.stream.stopped:
                    seq.finish_reason = "stop"
                    s.threaded.cancel(seq.rid, "stop")
                elif update.finish_reason is not None:
                    seq.finish_reason = update.finish_reason
                    delta += seq.stream.finish()
            if update.finish_reason is not None:
                seq.done = True
                seq.result = update.result
            yield i, delta, lps

    async def stream(s: Served, job: Job, seqs: list[_Seq], events, deadline):
        try:
            try:
                if job.kind == "chat":
                    for q in seqs:
                        yield sse(chunk(job, q.choice.index, {"role": "assistant", "content": ""}))
                for q in seqs:
                    if job.echo:
                        q.offset = len(q.choice.echo_text)
                        yield sse(chunk(job, q.choice.index, q.choice.echo_text))
                async for i, delta, lps in updates(s, seqs, events, deadline, None):
                    q = seqs[i]
                    if delta or lps:
                        yield sse(chunk(job, q.choice.index, piece(job, delta), logprobs(s, job, q, lps)))
                    if q.done:
                        yield sse(chunk(job, q.choice.index, piece(job, ""), None, q.finish_reason))
            except TimeoutError:
                cancel(s, seqs)
                yield sse(
                    APIError(
                        504, f"the request passed --request-timeout ({settings.request_timeout:g} s)", type="timeout"
                    ).body()
                )
                return
            if job.include_usage:
                yield sse({**head(job), "choices": [], "usage": usage(job, sum(q.tokens for q in seqs))})
            yield "data: [DONE]\n\n"
        finally:  # the client went away (the generator was cancelled) or it ended: nothing left running
            cancel(s, [q for q in seqs if not q.done])

    def piece(job: Job, text: str):
        return {"content": text} if job.kind == "chat" else text

    def logprobs(s: Served, job: Job, q: _Seq, entries: list):
        if job.logprobs is None or not entries:
            return None
        if job.kind == "chat":
            return s.text.chat(entries)
        out = s.text.completion(entries, [e.token for e in entries], q.offset)
        q.offset = out["text_offset"][-1] + len(out["tokens"][-1])
        return out

    def whole(s: Served, job: Job, seqs: list[_Seq]) -> dict:
        choices = []
        for q in seqs:
            text = q.stream.text
            if job.kind == "chat":
                lp = s.text.chat(q.logprobs) if job.logprobs is not None else None
                choices.append(
                    {
                        "index": q.choice.index,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": lp,
                        "finish_reason": q.finish_reason,
                    }
                )
                continue
            lp = None
            if job.logprobs is not None:
                entries, tokens = list(q.logprobs), [e.token for e in q.logprobs]
                if job.echo:
                    prompt = q.choice.request.prompt
                    entries, tokens = list(q.result.prompt_logprobs) + entries, list(prompt) + tokens
                lp = s.text.completion(entries, tokens, 0)
            choices.append(
                {
                    "index": q.choice.index,
                    "text": q.choice.echo_text + text,
                    "logprobs": lp,
                    "finish_reason": q.finish_reason,
                }
            )
        return {**head(job), "choices": choices, "usage": usage(job, sum(q.tokens for q in seqs))}

    return app


def head(job: Job) -> dict:
    kind = "chat.completion" if job.kind == "chat" else "text_completion"
    prefix = "chatcmpl-" if job.kind == "chat" else "cmpl-"
    return {
        "id": prefix + job.id,
        "object": kind + ("" if not job.stream else ".chunk" if job.kind == "chat" else ""),
        "created": job.created,
        "model": job.model,
    }


def chunk(job: Job, index: int, content, logprobs=None, finish_reason=None) -> dict:
    key = "delta" if job.kind == "chat" else "text"
    return {
        **head(job),
        "choices": [{"index": index, key: content, "logprobs": logprobs, "finish_reason": finish_reason}],
    }


def sse(data: dict) -> str:
    return f"data: {json.dumps(data)}\n\n"


def cancel(s: Served, seqs: list[_Seq]) -> None:
    for q in seqs:
        if q.rid is not None and not q.done:
            s.threaded.cancel(q.rid)

"""The engine on a thread of its own, for callers on other threads (an HTTP server's event loop).

    threaded = ThreadedEngine(Engine(model)).start()
    rid = threaded.submit(request, listener).result()   # listener(update) on the engine thread
    threaded.cancel(rid)                                 # wherever it is; its pages return at once
    threaded.close()

The engine is touched by its own thread only: submit and cancel are commands it runs between steps,
and they return concurrent.futures.Future objects (asyncio.wrap_future awaits one). After every step
each watched request whose result grew is told, once, what is new (an Update); a finished request
is told last with its finish_reason and is then forgotten (the engine keeps no result of it, and
no step statistics once on_step has had them).
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from moe.serving.engine import Engine, StepStats
from moe.serving.request import Request, Result, TokenLogprob


@dataclass
class Update:
    tokens: list[int]  # new since the last update
    logprobs: list[TokenLogprob] = field(default_factory=list)  # theirs, when the request asked
    finish_reason: str | None = None  # set on the last update: "stop", "length", "cancelled" or "error"
    result: Result | None = None  # the whole result, on the last update


Listener = Callable[[Update], None]


class ThreadedEngine:
    def __init__(self, engine: Engine, on_step: Callable[[Engine, StepStats], None] | None = None):
        """on_step(engine, stats) runs on the engine thread after every step (metrics)."""
        self.engine, self.on_step = engine, on_step
        self.error: BaseException | None = None  # what broke a step, if one did (then every request failed)
        self._commands: queue.Queue = queue.Queue()
        self._watched: dict[int, tuple[Listener, int]] = {}  # rid -> (listener, tokens already told)
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="moe-engine", daemon=True)

    def start(self) -> ThreadedEngine:
        self._thread.start()
        return self

    @property
    def n_waiting(self) -> int:
        """Requests not yet in a row: in the engine's queue or still on their way to it."""
        return len(self.engine.queue) + self._commands.qsize()

    def call(self, fn: Callable[[Engine], object]) -> concurrent.futures.Future:
        """Run fn(engine) on the engine thread between steps; the future holds what it returned or raised."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        if self._closing.is_set():
            future.set_exception(RuntimeError("the engine is shutting down"))
        else:
            self._commands.put((fn, future))
        return future

    def submit(self, request: Request, listener: Listener) -> concurrent.futures.Future:
        """Queue a request; the future holds its id (or the RequestError that refused it)."""

        def submit(engine: Engine) -> int:
            rid = engine.submit(request)
            self._watched[rid] = (listener, 0)
            return rid

        return self.call(submit)

    def cancel(self, rid: int, reason: str = "cancelled") -> concurrent.futures.Future:
        """Take a request out wherever it is; its listener is told `reason` (unless it had finished)."""

        def cancel(engine: Engine) -> bool:
            cancelled = engine.cancel(rid, reason)
            self._tell(rid)
            return cancelled

        return self.call(cancel)

    def close(self, timeout: float = 10.0) -> None:
        """Cancel everything still queued or running and stop the thread."""
        self._closing.set()
        self._commands.put((None, None))  # wakes an idle loop
        self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._closing.is_set():
            self._run_commands(block=not self.engine.has_work())
            if self._closing.is_set() or not self.engine.has_work():
                self.engine.idle()
                continue
            try:
                stats = self.engine.step()
                for rid in list(self._watched):
                    self._tell(rid)
                if stats is not None and self.on_step is not None:
                    self.on_step(self.engine, stats)
                self.engine.steps.clear()  # reported: a server that runs for days keeps no history
            except Exception as e:  # a bug: fail every request rather than leave clients waiting
                self.error = e
                self._fail_all()
        self._run_commands(block=False)
        for rid in list(self._watched):
            self.engine.cancel(rid)
            self._tell(rid)
        self.engine.close()

    def _run_commands(self, block: bool) -> None:
        try:
            item = self._commands.get(timeout=0.5) if block else self._commands.get_nowait()
        except queue.Empty:
            return
        while True:
            fn, future = item
            if fn is not None and future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(self.engine))
                except Exception as e:
                    future.set_exception(e)
            try:
                item = self._commands.get_nowait()
            except queue.Empty:
                return

    def _tell(self, rid: int) -> None:
        """Hand a watched request's new tokens to its listener; forget it once it has finished."""
        if rid not in self._watched:
            return
        listener, told = self._watched[rid]
        result = self.engine.results[rid]
        done = result.finish_reason is not None
        if len(result.tokens) == told and not done:
            return
        update = Update(result.tokens[told:], result.logprobs[told:])
        if done:
            update.finish_reason, update.result = result.finish_reason, result
            del self._watched[rid], self.engine.results[rid]
        else:
            self._watched[rid] = (listener, len(result.tokens))
        listener(update)

    def _fail_all(self) -> None:
        for rid in list(self._watched):
            self.engine.cancel(rid)
            listener, told = self._watched.pop(rid)
            result = self.engine.results.pop(rid)
            result.finish_reason = "error"
            listener(Update(result.tokens[told:], result.logprobs[told:], "error", result))

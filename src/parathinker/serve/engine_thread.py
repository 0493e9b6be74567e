"""One thread that steps the engine; the asyncio web app submits requests and reads their deltas.

The engine's step API (``add_request`` / ``step`` / ``abort``) lets one thread step while others
add and abort. This class is that stepping thread: between steps it hands each step's
``RequestDelta``s to the asyncio queue of the HTTP request that owns them, all of a step's deltas
in one ``loop.call_soon_threadsafe``. With nothing to do it sleeps on an event that
``submit`` sets. If ``step`` raises, the engine has dropped its running requests (and stays
usable): every open request gets an ``EngineDead`` item and is aborted, and stepping goes on.
After ``max_failures`` failed steps in a row the engine is considered dead: ``alive`` turns false
(``/health`` answers 503, new requests 503) and the thread ends.

Kept apart from the web app so another front (a Ray Serve replica, a test) can drive it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("parathinker.serve")


@dataclass
class EngineDead:
    """Queued to an open request that the engine can no longer finish (a failed step, or shutdown).

    ``fatal``: the engine thread is gone (503 to the caller); else only this request failed (500).
    """

    message: str
    fatal: bool = True


@dataclass
class Stream:
    """Where one engine request's deltas go: an asyncio queue (possibly shared by the n runs of one call).

    The queue receives, per step, a list of that step's deltas for its requests, or an ``EngineDead``.
    """

    request_id: int
    queue: asyncio.Queue
    loop: asyncio.AbstractEventLoop
    tag: Any = None  # the caller's label (e.g. the choice index)


class EngineThread:
    """Steps ``llm.engine`` on a daemon thread; thread-safe ``submit`` / ``abort``.

    ``llm`` provides ``engine`` (the step API), ``request_spec`` and ``default_params`` (the
    prompt and parameter resolution of ``LLM``). ``stall_s``: ``healthy`` turns false when no
    step or idle tick happened for that long (a hung step).
    """

    def __init__(self, llm: Any, *, stall_s: float = 120.0, idle_tick_s: float = 0.5, max_failures: int = 3):
        self.llm = llm
        self.max_failures = max_failures
        self.failures = 0  # failed steps in a row
        self.engine = llm.engine
        self.stall_s = stall_s
        self.idle_tick_s = idle_tick_s
        self.error: str | None = None
        self.steps = 0
        self.last_beat = time.monotonic()
        self._lock = threading.Lock()  # guards _streams; held around add_request so no delta precedes its stream
        self._streams: dict[int, Stream] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> EngineThread:
        """Start stepping (idempotent)."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="parathinker-engine", daemon=True)
                self._thread.start()
        return self

    @property
    def started(self) -> bool:
        return self._thread is not None

    @property
    def alive(self) -> bool:
        """The thread runs and the engine has not failed."""
        return self._thread is not None and self._thread.is_alive() and self.error is None and not self._stop.is_set()

    @property
    def healthy(self) -> bool:
        """Alive, and stepping (or idling) recently."""
        return self.alive and time.monotonic() - self.last_beat < self.stall_s

    def stop(self, timeout: float = 10.0) -> None:
        """Abort what is still open (its callers get ``EngineDead``), stop the thread and join it."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self._fail_all("the server is shutting down", abort=True)

    # ------------------------------------------------------------------ requests
    def submit(self, spec: Any, prompt: str, queue: asyncio.Queue, loop: asyncio.AbstractEventLoop,
               tag: Any = None, stream_paths: bool = True) -> Stream:
        """Add a request to the engine (its typed errors propagate); its deltas go to ``queue``.
        ``stream_paths`` off: the paths' deltas come at their first token and their end only
        (``Engine.add_request``)."""
        if not self.alive:
            raise EngineUnavailable(self.error or "the engine is not running")
        with self._lock:
            rid = self.engine.add_request(spec, prompt, stream_paths=stream_paths)
            stream = Stream(rid, queue, loop, tag)
            self._streams[rid] = stream
        self._wake.set()
        return stream

    def abort(self, request_id: int) -> bool:
        """Abort a request (its pages return before the next step); no more deltas reach its queue."""
        with self._lock:
            open_ = self._streams.pop(request_id, None) is not None
        if not open_:
            return False
        try:
            return bool(self.engine.abort(request_id))
        except Exception:  # an engine that already failed: nothing left to free
            log.exception("abort of request %s failed", request_id)
            return False

    @property
    def num_open(self) -> int:
        with self._lock:
            return len(self._streams)

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        engine = self.engine
        while not self._stop.is_set():
            self.last_beat = time.monotonic()
            if not engine.has_unfinished():
                self._wake.wait(self.idle_tick_s)
                self._wake.clear()
                continue
            try:
                deltas = engine.step()
            except Exception as e:  # noqa: BLE001 - the engine dropped its running requests; tell their callers
                self.failures += 1
                message = f"the engine failed on a step: {type(e).__name__}: {e}"
                if self.failures >= self.max_failures:
                    log.exception("engine step failed %d times in a row; the server stops taking requests",
                                  self.failures)
                    self.error = message
                    self._fail_all(message, abort=True)
                    return
                log.exception("engine step failed; its requests are dropped")
                self._fail_all(message, abort=True, fatal=False)
                self._stop.wait(0.05 * self.failures)  # no tight loop over a step that keeps failing
                continue
            self.failures = 0
            self.steps += 1
            if deltas:
                self._dispatch(deltas)

    def _dispatch(self, deltas: list[Any]) -> None:
        """A step's deltas to their queues: one list per queue, one wake-up per event loop."""
        dispatch(deltas, self._streams, self._lock)

    def _fail_all(self, message: str, *, abort: bool, fatal: bool = True) -> None:
        with self._lock:
            streams = list(self._streams.values())
            self._streams.clear()
        if abort:
            for st in streams:
                with contextlib.suppress(Exception):  # best effort while stopping
                    self.engine.abort(st.request_id)
        fail(streams, EngineDead(message, fatal))


class EngineUnavailable(RuntimeError):
    """The engine thread is not running (failed or stopped)."""


def dispatch(deltas: list[Any], streams: dict[int, Stream], lock: threading.Lock) -> None:
    """A step's deltas to the queues of ``streams`` (by request id; a finished request's stream is removed):
    one list per queue, one wake-up per event loop. Deltas of requests without a stream (aborted) are dropped."""
    per_queue: dict[int, tuple[Stream, list[Any]]] = {}
    with lock:
        for d in deltas:
            stream = streams.get(d.request_id)
            if stream is None:  # aborted meanwhile
                continue
            if d.finished:
                del streams[d.request_id]
            per_queue.setdefault(id(stream.queue), (stream, []))[1].append(d)
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, Any]]] = {}
    for stream, items in per_queue.values():
        by_loop.setdefault(stream.loop, []).append((stream.queue, items))
    for loop, batch in by_loop.items():
        _post(loop, batch)


def fail(streams: list[Stream], item: EngineDead) -> None:
    """Tell the callers of ``streams`` that their requests end with ``item``."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, Any]]] = {}
    for st in streams:
        by_loop.setdefault(st.loop, []).append((st.queue, item))
    for loop, items in by_loop.items():
        _post(loop, items)


def _deliver(items: list[tuple[asyncio.Queue, Any]]) -> None:
    for q, item in items:
        q.put_nowait(item)


def _post(loop: asyncio.AbstractEventLoop, items: list[tuple[asyncio.Queue, Any]]) -> None:
    with contextlib.suppress(RuntimeError):  # a closed loop: nobody is listening any more
        loop.call_soon_threadsafe(_deliver, items)

"""Data-parallel engines: N engine processes behind one server (``--data-parallel-size N``, vLLM's name).

On the CPU one engine is bound by the Python around its torch ops: a second thread stepping half the
batch in the same process gains little (the two share the GIL; measured in ``docs/serving.md``). A
second *process* does not share it. ``EngineProcesses`` starts N processes; each loads the model
and steps its own engine (the step API) in a loop, and the server's process keeps the HTTP front,
the prompts' tokenizing and the requests' checks (on its own ``LLM``, which never steps). Each
request goes to the process with the fewest open requests; a reader thread per process hands the
deltas that come back to the asyncio queues, as ``EngineThread`` does.

The same surface as ``EngineThread`` (``start``, ``submit``, ``abort``, ``alive``, ``healthy``,
``error``, ``stop``, ``engine`` for the gauges, ``llm``), so the app does not know which it has.
Tokens do not depend on the process a request lands on: each request draws from its own
generator, seeded by the request. A process that fails a step drops the requests it ran (their
callers get ``EngineDead``, not fatal) and goes on; after ``max_failures`` in a row, or if it
exits, the server turns unhealthy (503), as with one engine thread.

Pipe protocol (pickled tuples). To a process: ``("add", gid, spec, stream_paths)``,
``("abort", gid)``, ``("stop",)``. From it: ``("ready",)`` or ``("error", message)`` once
loaded; then ``("step", deltas, stats)`` after each step with deltas, ``("stats", stats)`` while
idle (a heartbeat), ``("failed", gids, message, fatal)``. ``stats`` = (running, waiting, KV pages
used, in the pool, and that requests may have). Request ids (gid) are the server's, unique over all processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

import torch

from ..engine.engine import spare_core
from .engine_thread import EngineDead, EngineUnavailable, Stream, dispatch, fail

log = logging.getLogger("parathinker.serve")

IDLE_TICK_S = 0.5  # an idle process reports its gauges this often (its heartbeat)
START_TIMEOUT_S = 600.0  # loading the model in a process may take this long


@dataclass
class CoreArgs:
    """What a process needs to load the same model as the server's ``LLM`` (plain data: pickled to it)."""

    model: str
    device: str
    dtype: Any
    threads: int
    cache: dict[str, Any]
    decode: dict[str, Any]
    max_failures: int = 3

    @classmethod
    def of(cls, llm: Any, size: int, max_failures: int = 3, decode_config: Any = None) -> CoreArgs:
        """The server's model and settings (``decode_config`` over the ``LLM``'s own) for one of ``size``
        processes. Each process's prefill thread (a core left free by torch's threads) stays on only if
        every process has such a core."""
        engine = llm.engine
        threads = torch.get_num_threads()
        decode = dataclasses.asdict(decode_config or engine.decode_config)
        if not spare_core((os.cpu_count() or 1) / size):
            decode["prefill_thread"] = False
        return cls(str(llm.path), str(llm.model.device), llm.model.dtype, threads,
                   dataclasses.asdict(engine.cache_config), decode, max_failures)


# ---------------------------------------------------------------------- the engine process
def core_main(args: CoreArgs, conn: Any) -> None:
    """An engine process: load the model, then take requests and step until told to stop or the server goes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the server drains us
    try:
        from ..engine.llm import LLM

        llm = LLM.from_settings(args.model, args.device, args.dtype, args.threads, args.cache, args.decode)
    except BaseException as e:  # noqa: BLE001 - reported to the server, which stops with one line
        conn.send(("error", f"{type(e).__name__}: {e}"))
        return
    conn.send(("ready",))
    with contextlib.suppress(EOFError, OSError):  # the server is gone
        _Core(llm.engine, conn, args.max_failures).run()


class _Core:
    """The loop of an engine process: commands from the pipe between steps, deltas back after each."""

    def __init__(self, engine: Any, conn: Any, max_failures: int):
        self.engine, self.conn, self.max_failures = engine, conn, max_failures
        self.gid: dict[int, int] = {}  # engine request id -> the server's id
        self.rid: dict[int, int] = {}  # the server's id -> engine request id

    def stats(self) -> tuple[int, int, int, int, int]:
        e = self.engine
        return e.num_running, e.num_waiting, e.kv_pages_used, e.kv_pages_total, e.kv_pages_capacity

    def run(self) -> None:
        engine, conn = self.engine, self.conn
        failures = 0
        while True:
            busy = engine.has_unfinished()
            while conn.poll(0 if busy else IDLE_TICK_S):
                if not self._command(conn.recv()):
                    return
                busy = engine.has_unfinished()
            if not busy:
                conn.send(("stats", self.stats()))
                continue
            try:
                deltas = engine.step()
            except Exception as e:  # noqa: BLE001 - the engine dropped its running requests; tell their callers
                failures += 1
                fatal = failures >= self.max_failures
                log.exception("engine step failed%s", "; this engine stops" if fatal else "; its requests are dropped")
                gids = list(self.rid)
                for rid in self.rid.values():
                    engine.abort(rid)
                self.gid.clear()
                self.rid.clear()
                conn.send(("failed", gids, f"the engine failed on a step: {type(e).__name__}: {e}", fatal))
                if fatal:
                    return
                time.sleep(0.05 * failures)  # no tight loop over a step that keeps failing
                continue
            failures = 0
            out = []
            for d in deltas:
                gid = self.gid.get(d.request_id)
                if gid is None:
                    continue
                if d.finished:
                    del self.gid[d.request_id], self.rid[gid]
                d.request_id = gid
                out.append(d)
            conn.send(("step", out, self.stats()))

    def _command(self, msg: tuple) -> bool:
        """Carry out one command; False: stop."""
        kind = msg[0]
        if kind == "add":
            _, gid, spec, stream_paths = msg
            try:
                rid = self.engine.add_request(spec, "", stream_paths=stream_paths)
            except Exception as e:  # noqa: BLE001 - the server checked it already; this one request fails
                self.conn.send(("failed", [gid], f"{type(e).__name__}: {e}", False))
                return True
            self.gid[rid], self.rid[gid] = gid, rid
        elif kind == "abort":
            rid = self.rid.pop(msg[1], None)
            if rid is not None:
                del self.gid[rid]
                self.engine.abort(rid)
        elif kind == "stop":
            return False
        return True


# ---------------------------------------------------------------------- the server's side
class _Member:
    """One engine process as the server sees it: its pipe, its open requests, its last gauges."""

    def __init__(self, index: int, ctx: Any, args: CoreArgs):
        self.index = index
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=core_main, args=(args, child), name=f"parathinker-engine-{index}", daemon=True)
        self._child = child
        self.streams: dict[int, Stream] = {}
        self.requests = 0  # requests sent to it
        self.lock = threading.Lock()  # guards streams
        self.send_lock = threading.Lock()  # submit (worker threads) and abort (the event loop) both send
        self.stats = (0, 0, 0, 1, 1)
        self.last_beat = time.monotonic()
        self.error: str | None = None
        self.reader: threading.Thread | None = None

    def send(self, msg: tuple) -> None:
        with self.send_lock:
            self.conn.send(msg)

    def take_streams(self, gids: list[int] | None = None) -> list[Stream]:
        with self.lock:
            if gids is None:
                gids = list(self.streams)
            return [s for g in gids if (s := self.streams.pop(g, None)) is not None]


class EngineProcesses:
    """N engine processes (data parallel) behind one server; thread-safe ``submit`` / ``abort``.

    ``llm``: the server's own ``LLM`` (prompts, parameters, checks; it never steps); each process
    loads the same checkpoint with the same settings (``CoreArgs.of``), ``decode`` (a ``DecodeConfig``)
    over the ``LLM``'s: the CLI builds the server's ``LLM`` without the decode step's fused and packed
    weight copies, which only the processes use. ``stall_s``: ``healthy`` turns false when a process
    reported nothing for that long.
    """

    def __init__(self, llm: Any, size: int, *, decode: Any = None, stall_s: float = 120.0, max_failures: int = 3):
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.llm = llm
        self.size = size
        self.stall_s = stall_s
        self.args = CoreArgs.of(llm, size, max_failures, decode)
        self.engine = _Gauges(self)
        self.members: list[_Member] = []
        self._where: dict[int, _Member] = {}  # open request id -> its process
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._started = False
        self._stopping = False

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> EngineProcesses:
        """Start the processes and wait until each has loaded the model (idempotent). A process that
        fails to load raises ``EngineUnavailable`` with its reason, after stopping the others."""
        with self._lock:
            if self._started:
                return self
            self._started = True
        ctx = mp.get_context("spawn")  # not fork: torch's thread pools do not survive a fork
        self.members = [_Member(i, ctx, self.args) for i in range(self.size)]
        for m in self.members:
            m.proc.start()
            m._child.close()
        try:
            for m in self.members:
                self._wait_ready(m)
        except BaseException:
            self.stop()
            raise
        for m in self.members:
            m.last_beat = time.monotonic()
            m.reader = threading.Thread(target=self._read, args=(m,), name=f"parathinker-engine-{m.index}-reader",
                                        daemon=True)
            m.reader.start()
        log.info("%d engine processes ready (pids %s)", self.size, ", ".join(str(m.proc.pid) for m in self.members))
        return self

    def _wait_ready(self, m: _Member) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not m.conn.poll(0.2):
            if not m.proc.is_alive():
                raise EngineUnavailable(f"engine process {m.index} exited with code {m.proc.exitcode} while loading")
            if time.monotonic() > deadline:
                raise EngineUnavailable(f"engine process {m.index} did not load the model within {START_TIMEOUT_S:.0f} s")
        try:
            msg = m.conn.recv()
        except (EOFError, OSError):  # it exited before a word (its traceback is on stderr)
            m.proc.join(5)
            raise EngineUnavailable(f"engine process {m.index} exited with code {m.proc.exitcode} while loading "
                                    "(its error is printed above)") from None
        if msg[0] != "ready":
            raise EngineUnavailable(f"engine process {m.index} could not load the model: {msg[1]}")

    @property
    def started(self) -> bool:
        return self._started

    @property
    def error(self) -> str | None:
        return next((m.error for m in self.members if m.error), None)

    @property
    def alive(self) -> bool:
        """Every process runs and none has failed for good."""
        return (self._started and not self._stopping and bool(self.members) and self.error is None
                and all(m.proc.is_alive() for m in self.members))

    @property
    def healthy(self) -> bool:
        """Alive, and every process reported recently."""
        now = time.monotonic()
        return self.alive and all(now - m.last_beat < self.stall_s for m in self.members)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the processes (what is still open gets ``EngineDead``) and wait for them."""
        self._stopping = True
        for m in self.members:
            with contextlib.suppress(OSError, ValueError):  # already gone
                m.send(("stop",))
        deadline = time.monotonic() + timeout
        for m in self.members:
            if m.proc.pid is None:
                continue
            m.proc.join(max(0.0, deadline - time.monotonic()))
            if m.proc.is_alive():
                m.proc.terminate()
                m.proc.join(1.0)
        for m in self.members:
            fail(m.take_streams(), EngineDead("the server is shutting down", True))

    # ------------------------------------------------------------------ requests
    def submit(self, spec: Any, prompt: str, queue: asyncio.Queue, loop: asyncio.AbstractEventLoop,
               tag: Any = None, stream_paths: bool = True) -> Stream:
        """Check a request here (typed errors, as the engine would raise them) and send it to the process
        with the fewest open requests; its deltas go to ``queue``."""
        if not self.alive:
            raise EngineUnavailable(self.error or "the engine processes are not running")
        self.llm.engine.check(spec)
        with self._lock:
            m = min(self.members, key=lambda x: len(x.streams))
            m.requests += 1
            gid = next(self._ids)
            self._where[gid] = m
        stream = Stream(gid, queue, loop, tag)
        with m.lock:
            m.streams[gid] = stream  # before the send: no delta can come before its stream
        try:
            m.send(("add", gid, spec, stream_paths))
        except (OSError, ValueError) as e:
            m.take_streams([gid])
            raise EngineUnavailable(f"engine process {m.index} is gone ({e})") from None
        return stream

    def abort(self, request_id: int) -> bool:
        """Abort a request: no more deltas reach its queue; its process frees its pages before its next step."""
        with self._lock:
            m = self._where.pop(request_id, None)
        if m is None or not m.take_streams([request_id]):
            return False
        with contextlib.suppress(OSError, ValueError):  # the process is gone: nothing left to free
            m.send(("abort", request_id))
        return True

    @property
    def num_open(self) -> int:
        return sum(len(m.streams) for m in self.members)

    # ------------------------------------------------------------------ the reader threads
    def _read(self, m: _Member) -> None:
        """Hand a process's deltas to their queues until it exits."""
        while True:
            try:
                msg = m.conn.recv()
            except (EOFError, OSError):
                break
            m.last_beat = time.monotonic()
            kind = msg[0]
            if kind == "step":
                _, deltas, m.stats = msg
                self._forget(d.request_id for d in deltas if d.finished)
                dispatch(deltas, m.streams, m.lock)
            elif kind == "stats":
                m.stats = msg[1]
            elif kind == "failed":
                _, gids, message, fatal = msg
                self._forget(gids)
                if fatal:
                    m.error = message
                    log.error("engine process %d stopped: %s", m.index, message)
                fail(m.take_streams(gids), EngineDead(message, fatal))
        if not self._stopping:
            m.proc.join(2.0)  # its pipe closes as it exits: reap it for the exit code
            m.error = m.error or f"engine process {m.index} exited (code {m.proc.exitcode})"
            log.error("%s", m.error)
        fail(m.take_streams(), EngineDead(m.error or "the server is shutting down", True))

    def _forget(self, gids: Any) -> None:
        with self._lock:
            for g in gids:
                self._where.pop(g, None)


class _Gauges:
    """The processes' last reported gauges, summed: what ``ServerMetrics`` and ``--max-waiting`` read."""

    def __init__(self, group: EngineProcesses):
        self.group = group

    def _sum(self, k: int) -> int:
        return sum(m.stats[k] for m in self.group.members)

    @property
    def num_running(self) -> int:
        return self._sum(0)

    @property
    def num_waiting(self) -> int:
        return self._sum(1)

    @property
    def kv_pages_used(self) -> int:
        return self._sum(2)

    @property
    def kv_pages_total(self) -> int:
        return max(self._sum(3), 1)

    @property
    def kv_pages_capacity(self) -> int:
        return max(self._sum(4), 1)

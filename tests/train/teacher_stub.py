"""A deterministic OpenAI-compatible teacher for the data-generation tests (stdlib HTTP server).

Binds 127.0.0.1 on a free port, serves ``GET /v1/models`` and ``POST /v1/chat/completions``.
What it answers is fixed per problem and path slot (``Case``): the slot is recovered from the
request's seed (``datagen.path_seed``), so a request's content never depends on timing or on
what was asked before; only the *first* attempt at a key may fail (429, 500, slow), so retries
succeed. A watchdog stops the server after ``lifetime`` seconds whatever the test does.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from parathinker.train.datagen import path_seed

MODEL = "stub-teacher"


@dataclass
class Case:
    """One problem as the stub sees it. ``slots``: right | wrong | trunc | dup | empty | boxed-cut per slot.

    ``fmt``: where the reasoning goes: reasoning_content | reasoning | think (``<think>..</think>``
    in content) | open (``..</think>`` in content, as when the template opened the block).
    ``first``: what the first attempt at each of this problem's keys gets: ok | 429 | 500 | slow.
    ``always_500``: every request fails. ``summary``: right | wrong (teacher summaries).
    """

    pid: str
    problem: str
    answer: str | None
    slots: list[str]
    wrong: str = "999"
    fmt: str = "reasoning_content"
    first: str = "ok"
    always_500: bool = False
    summary: str = "right"
    right_text: str | None = None  # the boxed form of a right answer (default: the gold)


@dataclass
class Stub:
    cases: list[Case]
    base_seed: int = 0
    supports_n: str = "yes"  # yes | reject (HTTP 400 for n > 1) | ignore (one choice whatever n)
    delay: float = 0.0  # every response waits this long
    slow: float = 1.0  # a "slow" first attempt waits this long
    lifetime: float = 120.0
    served: Counter = field(default_factory=Counter)  # (pid, slot) -> successful choices served
    attempts: Counter = field(default_factory=Counter)  # request key -> attempts seen
    requests: Counter = field(default_factory=Counter)  # "chat" / "models" / status codes
    log: list = field(default_factory=list)  # (pid, slot) of every choice served, in order

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._by_seed: dict[int, tuple[Case, int | str]] = {}
        for c in self.cases:
            for s in range(len(c.slots)):
                self._by_seed[path_seed(self.base_seed, c.pid, s)] = (c, s)
            self._by_seed[path_seed(self.base_seed, c.pid, "summary")] = (c, "summary")

    # -- content ----------------------------------------------------------------------------------
    def choice(self, case: Case, slot: int) -> tuple[str, str, str]:
        """(reasoning, content, finish_reason) of one path slot."""
        kind = case.slots[slot]
        right = case.right_text or case.answer
        if kind == "dup":
            return self.choice(case, 0)
        if kind == "right":
            return (f"Path {slot}: work through {case.pid} step by step, then check it.",
                    f"So the answer is \\boxed{{{right}}}.", "stop")
        if kind == "wrong":
            return (f"Path {slot}: a careless attempt at {case.pid}.", f"The answer is \\boxed{{{case.wrong}}}.", "stop")
        if kind == "trunc":
            return (f"Path {slot}: a long attempt at {case.pid} that never", "", "length")
        if kind == "boxed-cut":  # cut off, but it had boxed the right answer in its reasoning
            return (f"Path {slot}: I get \\boxed{{{right}}} so far, and I keep checking", "", "length")
        if kind == "empty":
            return ("", "", "stop")
        raise ValueError(kind)

    def message(self, case: Case, reasoning: str, content: str) -> dict:
        if case.fmt == "reasoning_content":
            return {"role": "assistant", "content": content, "reasoning_content": reasoning}
        if case.fmt == "reasoning":
            return {"role": "assistant", "content": content, "reasoning": reasoning}
        if case.fmt == "think":
            return {"role": "assistant", "content": f"<think>\n{reasoning}\n</think>\n\n{content}"}
        if case.fmt == "open":
            return {"role": "assistant", "content": f"{reasoning}\n</think>\n\n{content}"}
        raise ValueError(case.fmt)

    # -- one request --------------------------------------------------------------------------
    def answer(self, body: dict) -> tuple[int, dict, float]:
        """(status, JSON body, seconds to wait first) for one chat request."""
        n = int(body.get("n") or 1)
        seed = body.get("seed")
        if seed not in self._by_seed:
            return 400, {"error": {"message": f"unknown seed {seed}"}}, 0.0
        case, slot = self._by_seed[seed]
        with self._lock:
            self.attempts[(seed, n)] += 1
            first = self.attempts[(seed, n)] == 1
        if case.always_500:
            return 500, {"error": {"message": "boom"}}, self.delay
        if first and case.first in ("429", "500"):
            return int(case.first), {"error": {"message": "try later"}}, self.delay
        wait = self.slow if first and case.first == "slow" else self.delay
        if slot == "summary":
            text = f"\\boxed{{{case.answer}}}" if case.summary == "right" else f"\\boxed{{{case.wrong}}}"
            msg = {"role": "assistant", "content": f"Attempts 1 and 2 agree; the answer is {text}.",
                   "reasoning_content": "comparing the attempts"}
            return 200, _completion([(msg, "stop")], 20), wait
        if n > 1 and self.supports_n == "reject":
            return 400, {"error": {"message": "n > 1 is not supported by this server", "param": "n"}}, wait
        count = 1 if self.supports_n == "ignore" else n
        choices = []
        for i in range(count):
            r, c, fin = self.choice(case, slot + i)
            choices.append((self.message(case, r, c), fin))
            with self._lock:
                self.served[(case.pid, slot + i)] += 1
                self.log.append((case.pid, slot + i))
        return 200, _completion(choices, 30 * count), wait

    # -- server ---------------------------------------------------------------------------------
    def start(self) -> str:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: object) -> None:
                pass

            def _send(self, status: int, obj: dict) -> None:
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                stub.requests["models"] += 1
                if self.path.rstrip("/") == "/v1/models":
                    return self._send(200, {"object": "list", "data": [{"id": MODEL, "object": "model"}]})
                self._send(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path.rstrip("/") != "/v1/chat/completions":
                    return self._send(404, {"error": {"message": "not found"}})
                status, obj, wait = stub.answer(body)
                stub.requests["chat"] += 1
                stub.requests[status] += 1
                if wait:
                    time.sleep(wait)
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                    self._send(status, obj)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        self._watchdog = threading.Timer(self.lifetime, self.server.shutdown)
        self._watchdog.daemon = True
        self._watchdog.start()
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def stop(self) -> None:
        self._watchdog.cancel()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


def _completion(choices: list[tuple[dict, str]], completion_tokens: int) -> dict:
    return {
        "id": "chatcmpl-stub", "object": "chat.completion", "created": 0, "model": MODEL,
        "choices": [{"index": i, "message": m, "finish_reason": f} for i, (m, f) in enumerate(choices)],
        "usage": {"prompt_tokens": 10, "completion_tokens": completion_tokens, "total_tokens": 10 + completion_tokens},
    }


"""The OpenAI-compatible web app: ``build_app(llm_or_engine_thread, config) -> FastAPI``.

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``,
``GET /health``, ``GET /metrics``. Each HTTP call becomes n engine requests (one per choice,
seed + i) whose deltas arrive on one asyncio queue from the ``EngineThread``. A client that goes
away (streaming or not) aborts its requests at once. Errors use OpenAI's shape
``{"error": {"message", "type", "param", "code"}}``; no input gives a 500 with a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import ConfigError, ParaThinkerError
from .choices import ChoiceState
from .config import BUNDLED_MODEL_NAME, ServeConfig
from .engine_procs import EngineProcesses
from .engine_thread import EngineDead, EngineThread, EngineUnavailable
from .metrics import CONTENT_TYPE, ServerMetrics
from .protocol import (
    PARALLEL_FIELDS,
    SAMPLING_FIELDS,
    ApiError,
    ChatCompletionRequest,
    CommonFields,
    CompletionRequest,
    bad_request,
    engine_error,
    param_of,
)
from .sse import CallStream, ClientGone, EngineFailed

log = logging.getLogger("parathinker.serve")

class Server:
    """What the routes share: the engine thread (or processes: ``--data-parallel-size``), the settings, the metrics."""

    def __init__(self, source: Any, config: ServeConfig):
        self.config = config
        self.owns_thread = not isinstance(source, (EngineThread, EngineProcesses))
        if not self.owns_thread:
            self.thread = source
        elif config.data_parallel_size > 1:
            self.thread = EngineProcesses(source, config.data_parallel_size)
        else:
            self.thread = EngineThread(source)
        self.llm = self.thread.llm
        self.model_name = config.served_model_name or _default_name(self.llm)
        self.metrics = ServerMetrics(self.thread.engine, self.model_name)
        self.draining = False

    # ------------------------------------------------------------------ request -> engine requests
    def params(self, body: CommonFields, budget: int | None) -> tuple[Any, Any]:
        """The request's ParallelParams and SamplingParams: what it set > the checkpoint's > the library's."""
        dp, ds = self.llm.default_params()
        pset = {k: getattr(body, k) for k in PARALLEL_FIELDS if getattr(body, k) is not None}
        if budget is not None:  # max_tokens: the budget of what becomes the content
            mode = pset.get("mode", dp.mode)
            pset.setdefault("max_path_tokens" if mode == "sequential" else "summary_max_tokens", budget)
        sset = {k: getattr(body, k) for k in SAMPLING_FIELDS if getattr(body, k) is not None}
        if sset.get("top_k") == -1:  # vLLM's "off"
            sset["top_k"] = 0
        try:
            pp = replace(dp, **pset)
        except (ConfigError, TypeError, ValueError) as e:
            raise bad_request(str(e), param_of(str(e), PARALLEL_FIELDS)) from None
        try:
            sp = replace(ds, **sset)
        except (ConfigError, TypeError, ValueError) as e:
            raise bad_request(str(e), param_of(str(e), SAMPLING_FIELDS)) from None
        return pp, sp

    def check_call(self, body: CommonFields) -> None:
        if body.model is not None and body.model != self.model_name:
            raise ApiError(404, f"The model `{body.model}` does not exist (this server serves `{self.model_name}`).",
                           "invalid_request_error", "model_not_found", "model")
        if not 1 <= body.n <= self.config.max_n:
            raise bad_request(f"n must be within 1..{self.config.max_n}, got {body.n}", "n")
        if self.draining or not self.thread.alive:
            raise unavailable(self.thread.error)
        mw = self.config.max_waiting
        if mw is not None and self.thread.engine.num_waiting >= mw:
            raise ApiError(429, f"{self.thread.engine.num_waiting} requests already wait for the engine "
                           f"(--max-waiting {mw}); retry later", "rate_limit_error", "rate_limit_exceeded")

    async def start_call(self, request: Request, prompts: list[tuple[Any, bool]], body: CommonFields,
                         budget: int | None) -> Call:
        """Submit len(prompts) * n engine requests; errors before anything runs become 400/503."""
        self.check_call(body)
        pp, sp = self.params(body, budget)
        stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        call = Call(self, asyncio.get_running_loop(), pp.mode)
        call.stream_paths = body.stream_paths  # else the paths are sent whole once they end: no per-token pieces
        jobs = []
        for p, (prompt, raw) in enumerate(prompts):
            for j in range(body.n):
                spj = sp if sp.seed is None else replace(sp, seed=sp.seed + j)
                jobs.append((ChoiceState(p * body.n + j, pp.mode, stops), prompt, raw, pp, spj, j == 0))
        try:
            await asyncio.to_thread(call.submit_all, jobs)
        except ParaThinkerError as e:
            call.close()
            raise engine_error(e) from None
        except EngineUnavailable as e:
            call.close()
            raise unavailable(str(e)) from None
        except BaseException:
            call.close()
            raise
        call.watch(request)
        return call


def unavailable(reason: str | None) -> ApiError:
    msg = "the server is not taking requests" + (f": {reason}" if reason else " (shutting down)")
    return ApiError(503, msg, "service_unavailable_error", "engine_unavailable")


class Call:
    """One HTTP call's engine requests, their shared delta queue, and their cleanup."""

    def __init__(self, server: Server, loop: asyncio.AbstractEventLoop, mode: str):
        self.server, self.loop, self.mode = server, loop, mode
        self.queue: asyncio.Queue = asyncio.Queue()
        self.choices: dict[int, ChoiceState] = {}  # by engine request id
        self.prompt_tokens = 0
        self.stream_paths = True
        self.t0 = time.perf_counter()
        self.closed = False
        self._lock = threading.Lock()
        self._watcher: asyncio.Task | None = None

    def submit_all(self, jobs: list) -> None:
        """(worker thread) Build each spec and add it; stops early when the call was closed meanwhile."""
        t = self.server.thread
        for state, prompt, raw, pp, sp, counts in jobs:
            spec = self.server.llm.request_spec(prompt, pp, sp, raw=raw)
            state.prompt_tokens = len(spec.prompt_ids)
            with self._lock:
                if self.closed:
                    return
                stream = t.submit(spec, "", self.queue, self.loop, tag=state, stream_paths=self.stream_paths)
                state.request_id = stream.request_id
                self.choices[stream.request_id] = state
            if counts:
                self.prompt_tokens += state.prompt_tokens

    def watch(self, request: Request) -> None:
        """Abort everything as soon as the client disconnects."""

        async def watcher() -> None:
            while True:
                message = await request.receive()
                if message["type"] == "http.disconnect":
                    break
            if not self.finished:
                self.close(aborted=True)
                self.queue.put_nowait(Disconnected())

        self._watcher = asyncio.ensure_future(watcher())

    @property
    def finished(self) -> bool:
        return all(c.done for c in self.choices.values())

    def abort(self, state: ChoiceState) -> None:
        if self.server.thread.abort(state.request_id):
            self.server.metrics.request_aborted.labels(self.server.model_name).inc()

    def close(self, aborted: bool = False) -> None:
        """Abort every unfinished engine request (idempotent)."""
        with self._lock:
            self.closed = True
            open_ = [c for c in self.choices.values() if not c.done]
        for c in open_:
            self.abort(c)
        if self._watcher is not None and not aborted:
            self._watcher.cancel()

    def record(self, state: ChoiceState) -> None:
        """Metrics of a finished choice."""
        m, name = self.server.metrics, self.server.model_name
        m.prompt_tokens.labels(name).inc(state.prompt_tokens)
        m.generation_tokens.labels(name).inc(state.completion_tokens())
        m.reasoning_tokens.labels(name).inc(state.reasoning_tokens())
        m.request_success.labels(name, state.finish_reason or "stop").inc()
        if state.t_first_token is not None:
            m.ttft.labels(name).observe(state.t_first_token - self.t0)
        if state.t_first_content is not None:
            m.ttfc.labels(name).observe(state.t_first_content - self.t0)
        m.e2e.labels(name).observe(time.perf_counter() - self.t0)

    async def events(self, timeout: float | None = None) -> AsyncIterator[tuple[ChoiceState | None, tuple]]:
        """(choice, event) until every choice is done; (None, ("keepalive",)) after ``timeout`` idle seconds.

        Raises ``EngineUnavailable`` when the engine dies, ``ClientGone`` when the client left.
        """
        while not self.finished:
            try:
                item = await _get(self.queue, timeout)
            except asyncio.TimeoutError:
                yield None, ("keepalive",)
                continue
            if isinstance(item, EngineDead):
                raise (EngineUnavailable if item.fatal else EngineFailed)(item.message)
            if isinstance(item, Disconnected):
                raise ClientGone()
            for d in item:  # one step's deltas of this call's requests
                state = self.choices.get(d.request_id)
                if state is None or state.done:
                    continue
                for ev in state.on_delta(d):
                    if ev[0] == "done":
                        if state.stopped:
                            self.abort(state)
                        self.record(state)
                    yield state, ev

    def usage(self) -> dict[str, Any]:
        completion = sum(c.completion_tokens() for c in self.choices.values())
        reasoning = sum(c.reasoning_tokens() for c in self.choices.values())
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion,
                "completion_tokens_details": {"reasoning_tokens": reasoning}}


async def _get(queue: asyncio.Queue, timeout: float | None) -> Any:
    """``queue.get()`` with a timeout, without a task per call where ``asyncio.timeout`` exists (3.11+)."""
    if timeout is None:
        return await queue.get()
    if hasattr(asyncio, "timeout"):
        async with asyncio.timeout(timeout):
            return await queue.get()
    return await asyncio.wait_for(queue.get(), timeout)


class Disconnected:
    """Queued when the client's connection closed."""


def _default_name(llm: Any) -> str:
    from ..assets import DEFAULT_MODEL

    path = getattr(llm, "path", None)
    if path is None or str(path) == str(DEFAULT_MODEL):
        return BUNDLED_MODEL_NAME
    return getattr(llm, "model_name", None) or str(path)


# ---------------------------------------------------------------------- the app
def build_app(llm_or_engine_thread: Any, config: ServeConfig | None = None) -> FastAPI:
    """The FastAPI app over an ``LLM`` (the app owns its engine thread) or a running ``EngineThread``."""
    server = Server(llm_or_engine_thread, config or ServeConfig())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(server.thread.start)  # engine processes load the model first
        yield
        server.draining = True
        if server.owns_thread:
            await asyncio.to_thread(server.thread.stop)

    app = FastAPI(title="parathinker", lifespan=lifespan)
    app.state.server = server

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError) -> JSONResponse:
        server.metrics.http_errors.labels(server.model_name, str(e.status)).inc()
        return e.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        errs = e.errors()
        first = errs[0] if errs else {}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        param = ".".join(loc) or None
        msg = f"{param}: {first.get('msg', 'invalid value')}" if param else str(first.get("msg", "invalid request body"))
        if first.get("type") == "json_invalid":
            msg = "the request body is not valid JSON"
        return await _api_error(request, bad_request(msg, param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException) -> JSONResponse:
        type_ = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return await _api_error(request, ApiError(e.status_code, str(e.detail), type_, str(e.status_code)))

    @app.exception_handler(Exception)
    async def _internal(request: Request, e: Exception) -> JSONResponse:
        log.exception("internal error on %s", request.url.path)
        return await _api_error(request, ApiError(500, f"internal error: {type(e).__name__}", "internal_server_error",
                                                  "internal_error"))

    async def auth(request: Request) -> None:
        key = server.config.api_key
        if key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), key.encode()):
            raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'",
                           "invalid_request_error", "invalid_api_key")

    @app.get("/health")
    async def health() -> Response:
        if server.thread.healthy and not server.draining:
            return Response(status_code=200)
        raise unavailable(server.thread.error)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(server.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models", dependencies=[Depends(auth)])
    async def models() -> dict[str, Any]:
        card: dict[str, Any] = {"id": server.model_name, "object": "model", "created": int(time.time()),
                                "owned_by": "parathinker", "root": str(getattr(server.llm, "path", server.model_name))}
        cfg = getattr(getattr(server.llm, "model", None), "config", None)
        if cfg is not None:
            card["max_model_len"] = cfg.max_position_embeddings
        control = getattr(server.llm, "control", None)
        card["max_paths"] = control.max_paths if control is not None else 0
        return {"object": "list", "data": [card]}

    @app.post("/v1/chat/completions", dependencies=[Depends(auth)])
    async def chat(body: ChatCompletionRequest, request: Request) -> Response:
        if not body.messages:
            raise bad_request("messages must not be empty: send at least one {'role': 'user', 'content': ...}",
                              "messages")
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        prompt: Any = messages
        if body.as_question:
            if len(messages) != 1 or messages[0]["role"] != "user":
                raise bad_request("as_question needs exactly one user message (the question)", "messages")
            prompt = messages[0]["content"]
        budget = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        call = await server.start_call(request, [(prompt, False)], body, budget)
        return await _respond(server, call, body, chat=True)

    @app.post("/v1/completions", dependencies=[Depends(auth)])
    async def completions(body: CompletionRequest, request: Request) -> Response:
        p = body.prompt
        if isinstance(p, str) or (isinstance(p, list) and p and isinstance(p[0], int)):
            prompts = [p]
        else:
            prompts = list(p)
        if not prompts or any(len(x) == 0 for x in prompts):
            raise bad_request("prompt must not be empty", "prompt")
        raw = not (body.as_question and all(isinstance(x, str) for x in prompts))
        call = await server.start_call(request, [(x, raw) for x in prompts], body, body.max_tokens)
        return await _respond(server, call, body, chat=False)

    return app


async def _respond(server: Server, call: Call, body: CommonFields, *, chat: bool) -> Response:
    stream = CallStream(server, call, body, chat=chat)
    if body.stream:
        return StreamingResponse(stream.sse(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    try:
        async for _ in call.events():
            pass
    except EngineUnavailable as e:
        raise unavailable(str(e)) from None
    except EngineFailed as e:
        raise ApiError(500, str(e), "internal_server_error", "engine_error") from None
    except ClientGone:
        return Response(status_code=499)
    finally:
        call.close()
    return JSONResponse(stream.full_response())

"""Response bodies: the non-streamed JSON and the SSE stream of one call (chat or completions).

Stream (``data: {chunk}`` ... ``data: [DONE]``): a role chunk per choice (chat); during thinking,
with ``stream_paths``, ``{"reasoning", "reasoning_content", "path_index"}`` deltas (a path's first
piece opens with ``<think i>``, its last closes with ``</think i>\\n`` and carries
``path_finish_reason``); without it, ``: keep-alive`` comments while the paths run and each path
whole once thinking ends; then the content pieces; a final chunk per choice with
``finish_reason`` (and ``paths`` / ``votes`` / ``answer``); the usage chunk (``choices: []``) with
``stream_options.include_usage``. An engine failure mid-stream is an ``{"error": ...}`` event,
then ``[DONE]``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from .choices import ChoiceState
from .engine_thread import EngineUnavailable
from .protocol import CommonFields, error_json

if TYPE_CHECKING:
    from .app import Call, Server


class EngineFailed(RuntimeError):
    """The engine dropped this call's requests (a failed step); the engine goes on."""


class ClientGone(Exception):
    """The client disconnected; its engine requests are aborted."""

KEEPALIVE = ": keep-alive\n\n"


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


class CallStream:
    def __init__(self, server: Server, call: Call, body: CommonFields, *, chat: bool):
        self.server, self.call, self.body, self.chat = server, call, body, chat
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.held: dict[int, list[dict[str, Any]]] = {}  # unstreamed reasoning, per choice, until thinking ends

    # ------------------------------------------------------------------ non-streamed
    def full_response(self) -> dict[str, Any]:
        choices = []
        for c in sorted(self.call.choices.values(), key=lambda c: c.index):
            f = c.final_fields(self.body.return_paths)
            extra = {k: f[k] for k in ("answer", "paths", "votes") if k in f}
            if self.chat:
                message = {"role": "assistant", "content": f["content"], "reasoning": f["reasoning"],
                           "reasoning_content": f["reasoning"], **extra}
                choices.append({"index": c.index, "message": message, "finish_reason": c.finish_reason,
                                "logprobs": None})
            else:
                choices.append({"index": c.index, "text": f["content"], "reasoning": f["reasoning"], **extra,
                                "finish_reason": c.finish_reason, "logprobs": None})
        return {"id": self.id, "object": "chat.completion" if self.chat else "text_completion",
                "created": self.created, "model": self.server.model_name, "choices": choices,
                "usage": self.call.usage()}

    # ------------------------------------------------------------------ streamed
    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> str:
        return _sse({"id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion",
                     "created": self.created, "model": self.server.model_name, "choices": choices, **extra})

    def _choice(self, index: int, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        if self.chat:
            return {"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        text = delta.pop("content", "")
        return {"index": index, "text": text, **delta, "finish_reason": finish_reason, "logprobs": None}

    def _reasoning(self, piece: str, path: int, path_finish: str | None) -> dict[str, Any]:
        d: dict[str, Any] = {"reasoning": piece, "reasoning_content": piece, "path_index": path}
        if path_finish:
            d["path_finish_reason"] = path_finish
        return d

    def _release_held(self, c: ChoiceState) -> list[str]:
        """The reasoning held back (no stream_paths): each path whole, in index order."""
        held = self.held.pop(c.index, None)
        if not held:
            return []
        by_path: dict[int, dict[str, Any]] = {}
        for d in held:
            p = by_path.setdefault(d["path_index"], {"reasoning": "", "path_index": d["path_index"]})
            p["reasoning"] += d["reasoning"]
            if "path_finish_reason" in d:
                p["path_finish_reason"] = d["path_finish_reason"]
        out = []
        for i in sorted(by_path):
            d = by_path[i]
            d["reasoning_content"] = d["reasoning"]
            out.append(self._chunk([self._choice(c.index, d)]))
        return out

    def _on_event(self, c: ChoiceState, ev: tuple) -> list[str]:
        kind = ev[0]
        if kind == "reasoning":
            d = self._reasoning(ev[2], ev[1], ev[3])
            if self.body.stream_paths:
                return [self._chunk([self._choice(c.index, d)])]
            self.held.setdefault(c.index, []).append(d)
            return []
        out = self._release_held(c)
        if kind == "content":
            out.append(self._chunk([self._choice(c.index, {"content": ev[1]})]))
        elif kind == "done":
            f = c.final_fields(self.body.return_paths)
            extra = {k: f[k] for k in ("answer", "paths", "votes") if k in f}
            out.append(self._chunk([self._choice(c.index, extra, c.finish_reason)]))
        return out

    async def sse(self) -> AsyncIterator[str]:
        call = self.call
        try:
            if self.chat:
                for c in sorted(call.choices.values(), key=lambda c: c.index):
                    yield self._chunk([self._choice(c.index, {"role": "assistant", "content": ""})])
            async for c, ev in call.events(timeout=self.server.config.keepalive_s):
                if c is None:
                    yield KEEPALIVE
                    continue
                for s in self._on_event(c, ev):
                    yield s
            opts = self.body.stream_options
            if opts is not None and opts.include_usage:
                yield self._chunk([], usage=call.usage())
        except ClientGone:
            return  # its requests are aborted; nobody reads any more
        except EngineUnavailable as e:
            yield _sse(error_json(f"the engine stopped: {e}", "service_unavailable_error", "engine_unavailable"))
        except EngineFailed as e:
            yield _sse(error_json(str(e), "internal_server_error", "engine_error"))
        finally:
            call.close()
        yield "data: [DONE]\n\n"

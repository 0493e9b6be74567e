"""ParaThinker onto the OpenAI API: one engine request -> one choice.

``message.content`` is what the user reads: the summary (parathinker / reprefill modes), the one
sample (sequential), or the voted ``\\boxed{answer}`` (majority). The paths are the reasoning,
each as ``<think i>...</think i>\\n`` in index order, under both ``reasoning`` and
``reasoning_content`` (clients are split between the names).

``ChoiceState`` turns a request's ``RequestDelta``s into stream events; ``final_fields`` builds
the non-streamed choice from the finished ``RequestOutput`` (or, after a stop string, from what
was streamed). Concatenating a stream's pieces gives the non-streamed fields.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ..answers import last_boxed

FINISH = {"end": "stop", "length": "length", "cut": "length", "stop": "stop"}


def think_open(i: int) -> str:
    return f"<think{i}>"


def think_close(i: int) -> str:
    return f"</think{i}>\n"


def majority_content(answer: str | None) -> str:
    return f"\\boxed{{{answer}}}" if answer else ""


class StopBuffer:
    """Holds back the tail of a text that could still become a stop string; finds the first stop."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.keep = max((len(s) for s in self.stops), default=1) - 1
        self.pending = ""
        self.text = ""  # everything released so far
        self.hit = False

    def feed(self, piece: str) -> str:
        """Add a piece; return the text now safe to release (all of it when there are no stops)."""
        if self.hit:
            return ""
        if not self.stops:
            self.text += piece
            return piece
        buf = self.pending + piece
        cut = min((k for k in (buf.find(s) for s in self.stops) if k >= 0), default=-1)
        if cut >= 0:
            self.hit, self.pending = True, ""
            out = buf[:cut]
        else:
            n = max(len(buf) - self.keep, 0)
            out, self.pending = buf[:n], buf[n:]
        self.text += out
        return out

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        self.text += out
        return out


@dataclass
class PathState:
    index: int
    text: str = ""
    tokens: int = 0
    finish_reason: str | None = None


@dataclass
class ChoiceState:
    """One choice of one call: the engine request's deltas as they arrive."""

    index: int
    mode: str
    stops: list[str]
    prompt_tokens: int = 0
    request_id: int = -1
    paths: dict[int, PathState] = field(default_factory=dict)
    content_tokens: int = 0
    done: bool = False
    stopped: bool = False  # ended by a stop string (the engine request was aborted)
    finish_reason: str | None = None
    output: Any = None  # the finished RequestOutput
    t_first_token: float | None = None
    t_first_content: float | None = None

    def __post_init__(self) -> None:
        self.stop = StopBuffer(self.stops if self.mode in ("parathinker", "reprefill", "sequential") else [])

    def is_content(self, part: str) -> bool:
        return part == "summary" or (part == "sample" and self.mode == "sequential")

    def on_delta(self, d: Any) -> list[tuple]:
        """Events: ("reasoning", i, piece, path_finish_reason | None), ("content", piece), ("done",)."""
        now = time.perf_counter()
        ev: list[tuple] = []
        if d.token_ids and self.t_first_token is None:
            self.t_first_token = now
        if self.is_content(d.part):
            self.content_tokens += len(d.token_ids)
            if d.text and self.t_first_content is None:
                self.t_first_content = now
            out = self.stop.feed(d.text)
            if out:
                ev.append(("content", out))
            if self.stop.hit:
                self.stopped, self.done, self.finish_reason = True, True, "stop"
                return [*ev, ("done",)]
            if d.finish_reason:
                self.finish_reason = FINISH.get(d.finish_reason, "stop")
        else:
            p = self.paths.get(d.index)
            first = p is None
            if first:
                p = self.paths[d.index] = PathState(d.index)
            p.text += d.text
            p.tokens += len(d.token_ids)
            piece = (think_open(d.index) if first else "") + d.text
            if d.finish_reason:
                p.finish_reason = d.finish_reason
                piece += think_close(d.index)
            if piece:
                ev.append(("reasoning", d.index, piece, d.finish_reason))
        if d.finished:
            self.done, self.output = True, d.output
            rest = self.stop.flush()
            if rest:
                ev.append(("content", rest))
            if self.mode == "majority":
                ev.append(("content", majority_content(d.output.answer if d.output else None)))
                self.finish_reason = "stop"
            self.finish_reason = self.finish_reason or "stop"
            ev.append(("done",))
        return ev

    # ------------------------------------------------------------------ final fields
    def reasoning_tokens(self) -> int:
        if self.output is not None:
            return 0 if self.mode == "sequential" else sum(p.num_tokens for p in self.output.paths)
        return 0 if self.mode == "sequential" else sum(p.tokens for p in self.paths.values())

    def completion_tokens(self) -> int:
        if self.output is not None:
            o = self.output
            return sum(p.num_tokens for p in o.paths) + (o.summary.num_tokens if o.summary else 0)
        return self.content_tokens + sum(p.tokens for p in self.paths.values())

    def final_fields(self, return_paths: bool) -> dict[str, Any]:
        """``content``, ``reasoning``, ``answer`` (+ ``paths``, ``votes``), from the output when there is one."""
        o = self.output
        if o is not None:
            paths = [(p.index, p.text, p.finish_reason, p.num_tokens) for p in sorted(o.paths, key=lambda p: p.index)]
            if self.mode == "sequential":
                content, paths_shown = (o.paths[0].text if o.paths else ""), []
            elif self.mode == "majority":
                content, paths_shown = majority_content(o.answer), paths
            else:
                content, paths_shown = (o.summary.text if o.summary else ""), paths
            answer, votes = o.answer, dict(o.votes)
        else:  # stopped: what was released before the stop string
            paths_shown = [(p.index, p.text, p.finish_reason or "cut", p.tokens) for p in sorted(self.paths.values(), key=lambda p: p.index)]
            content, votes = self.stop.text, {}
            answer = last_boxed(content) or None
            if self.mode == "sequential":
                paths_shown = []
        if self.stopped and o is not None:
            content = self.stop.text
            answer = last_boxed(content) or None
        reasoning = "".join(think_open(i) + t + think_close(i) for i, t, _, _ in paths_shown) or None
        out: dict[str, Any] = {"content": content, "reasoning": reasoning, "answer": answer}
        if return_paths:
            out["paths"] = [{"index": i, "text": t, "finish_reason": r, "tokens": n} for i, t, r, n in paths_shown]
        if self.mode == "majority":
            out["votes"] = votes
        return out

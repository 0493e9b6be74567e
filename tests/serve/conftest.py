"""Servers for the serve tests: the app on uvicorn in a thread, bound to 127.0.0.1 on a free port."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from parathinker.serve.app import build_app  # noqa: E402
from parathinker.serve.config import ServeConfig  # noqa: E402
from parathinker.serve.server import ServerThread  # noqa: E402


@contextmanager
def running(llm, **config) -> Iterator[ServerThread]:  # noqa: ANN001
    cfg = ServeConfig(port=0, **config)
    with ServerThread(build_app(llm, cfg), cfg, log_level="error") as s:
        yield s


def client(server: ServerThread, **kw):  # noqa: ANN201
    import openai

    return openai.OpenAI(base_url=server.url + "/v1", api_key=kw.pop("api_key", "none"), max_retries=0,
                         timeout=kw.pop("timeout", 60), **kw)


def async_client(server: ServerThread, **kw):  # noqa: ANN201
    import openai

    return openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=kw.pop("api_key", "none"), max_retries=0,
                              timeout=kw.pop("timeout", 60), **kw)


def collect_stream(chunks) -> dict:  # noqa: ANN001
    """A chat stream folded per choice: content, reasoning (pieces grouped by path, in index order), extras."""
    out: dict[int, dict] = {}
    usage = None
    for ch in chunks:
        d = ch.model_dump() if hasattr(ch, "model_dump") else ch
        if d.get("usage"):
            usage = d["usage"]
        for c in d["choices"]:
            o = out.setdefault(c["index"], {"content": "", "by_path": {}, "finish_reason": None, "extra": {}})
            delta = c.get("delta", c)
            piece = delta.get("content") if "delta" in c else delta.get("text")
            o["content"] += piece or ""
            if delta.get("reasoning"):
                assert delta["reasoning"] == delta["reasoning_content"]
                i = delta["path_index"]
                o["by_path"][i] = o["by_path"].get(i, "") + delta["reasoning"]
            for k in ("answer", "paths", "votes"):
                if delta.get(k) is not None:
                    o["extra"][k] = delta[k]
            if c.get("finish_reason"):
                o["finish_reason"] = c["finish_reason"]
    for o in out.values():
        o["reasoning"] = "".join(o["by_path"][i] for i in sorted(o["by_path"])) or None
    return {"choices": out, "usage": usage}

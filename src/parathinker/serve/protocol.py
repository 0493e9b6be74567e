"""Request bodies of the OpenAI-compatible API (pydantic), with the ParaThinker fields.

Unknown fields are ignored, as vLLM does, so clients that send more of OpenAI's API (``logprobs``,
``presence_penalty``, ``user``, ...) still work. Values are checked by the engine's own parameter
dataclasses (one-line messages), not here: these models only fix the JSON types. Errors go out in
OpenAI's shape (``ApiError``); ``engine_error`` maps the engine's typed errors to 400s naming the field.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from ..errors import OutOfPagesError, ParaThinkerError, PromptTooLongError


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Body):
    include_usage: bool = False


class ParaThinkerFields(_Body):
    """What an ``openai`` client sends in ``extra_body``; unset fields take the checkpoint's defaults."""

    num_paths: int | None = None
    termination: str | int | None = None
    max_path_tokens: int | None = None
    summary_max_tokens: int | None = None
    mode: str | None = None
    top_k: int | None = None
    return_paths: bool = False
    stream_paths: bool = False
    # the prompt is a question: formatted exactly as `parathinker generate QUESTION` / LLM.generate do
    # (the checkpoint's chat template and instruction), e.g. for `parathinker eval --base-url`
    as_question: bool = False


class CommonFields(ParaThinkerFields):
    model: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    n: int = 1
    max_tokens: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None


class TextPart(_Body):
    type: str = "text"
    text: str = ""


class ChatMessage(_Body):
    role: str
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content if p.type == "text")


class ChatCompletionRequest(CommonFields):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None


class CompletionRequest(CommonFields):
    # one prompt (text or token ids) or several; several give len(prompts) * n choices
    prompt: str | list[str] | list[int] | list[list[int]] = Field(union_mode="left_to_right")


class ErrorBody(_Body):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


def error_json(message: str, type_: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": ErrorBody(message=message, type=type_, param=param, code=code).model_dump()}


PARALLEL_FIELDS = ("num_paths", "termination", "max_path_tokens", "summary_max_tokens", "mode")
SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "seed")


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param

    def response(self) -> JSONResponse:
        return JSONResponse(error_json(self.message, self.type, self.code, self.param), status_code=self.status)


def bad_request(message: str, param: str | None = None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, "invalid_request_error", code, param)


def param_of(message: str, names: tuple[str, ...]) -> str | None:
    """The field a message is about: the one it starts with, else the first it names before its colon."""
    head = message.split(":")[0]
    return next((n for n in names if message.startswith(n)), None) or next((n for n in names if f" {n}" in head), None)


def engine_error(e: ParaThinkerError) -> ApiError:
    """The engine's typed one-line errors as 400s."""
    msg = str(e)
    if isinstance(e, PromptTooLongError):
        return bad_request(msg, "messages", "context_length_exceeded")
    too_large = isinstance(e, OutOfPagesError)
    return bad_request(msg, None if too_large else param_of(msg, PARALLEL_FIELDS + SAMPLING_FIELDS),
                       "request_too_large" if too_large else "invalid_value")

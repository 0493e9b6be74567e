"""Prompt formatting shared by inference and training (both must tokenize prompts identically).

A checkpoint may carry ``parathinker.json`` with its own prompting defaults:
``{"instruction": str | null, "chat_template": bool, "summary_prefix": str,
"parallel": {ParallelParams fields}, "sampling": {SamplingParams fields}}``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import CheckpointError
from .params import ParallelParams, SamplingParams, resolve

# the released model's forced summary opening (``ParallelParams.summary_prefix`` defaults to it)
RELEASED_SUMMARY_PREFIX = (
    "By analyzing multiple reasoning processes above, I concluded that: The final answer is"
)

RELEASED_INSTRUCTION = (
    "You FIRST think about the reasoning process as an internal monologue and then summarize the reasoning "
    "process to get the final answer. The summary process MUST BE enclosed within <summary> </summary> tags. "
    "The final answer MUST BE put in \\boxed{}."
)


@dataclass
class PromptStyle:
    """How a question becomes the model's prompt."""

    instruction: str | None = RELEASED_INSTRUCTION
    chat_template: bool = True
    summary_prefix: str = RELEASED_SUMMARY_PREFIX
    parallel: dict[str, Any] = field(default_factory=dict)
    sampling: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> PromptStyle:
        f = Path(path) / "parathinker.json"
        if not f.is_file():
            return cls()
        try:
            raw = json.loads(f.read_text())
            return cls(**raw)
        except (OSError, ValueError, TypeError) as e:
            raise CheckpointError(f"cannot read {f}: {e}") from None

    def resolve(
        self, parallel: ParallelParams | None = None, sampling: SamplingParams | None = None
    ) -> tuple[ParallelParams, SamplingParams]:
        """The parameters a request runs with: what the caller set > this checkpoint's defaults
        (``parallel`` / ``sampling`` / ``summary_prefix``) > the library's (``params.resolve``).
        ``LLM`` (generate, score, request specs), ``parathinker generate`` and ``parathinker eval``
        all come through here."""
        pp = resolve(ParallelParams, parallel, self.parallel)
        if pp.summary_prefix is None:
            pp = replace(pp, summary_prefix=self.summary_prefix)
        return pp, resolve(SamplingParams, sampling, self.sampling)


Prompt = str | Sequence[Mapping[str, str]]  # a question, or chat messages ({"role", "content"})


def _templated(tokenizer: Any, prompt: Prompt, style: PromptStyle | None, raw: bool) -> bool:
    """Whether the prompt goes through the tokenizer's chat template (messages: whenever it has one)."""
    if raw or not getattr(tokenizer, "chat_template", None):
        return False
    return not isinstance(prompt, str) or (style or PromptStyle()).chat_template


def format_prompt(tokenizer: Any, prompt: Prompt, style: PromptStyle | None = None, raw: bool = False) -> str:
    """The text sent to the model for ``prompt``.

    A question (str): the chat template over one user turn "question\ninstruction", or the
    question (+ instruction) as is when ``style.chat_template`` is off or the tokenizer has no
    template; ``raw``: the question as is. Chat messages (a list of ``{"role", "content"}``, as in
    training data): used verbatim (no instruction added) with the chat template; without a template
    or with ``raw``, their contents joined by newlines. A templated prompt always opens the
    assistant turn with ``<think>`` when the vocabulary has it, as the released prompt does.
    """
    if isinstance(prompt, str):
        if raw:
            return prompt
        style = style or PromptStyle()
        content = f"{prompt}\n{style.instruction}" if style.instruction else prompt
        messages = [{"role": "user", "content": content}]
    else:
        messages = [dict(m) for m in prompt]
        content = "\n".join(m["content"] for m in messages)
    if not _templated(tokenizer, prompt, style, raw):
        return content
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if "<think>" in tokenizer.get_vocab() and not text.rstrip().endswith("<think>"):
        text += "<think>\n"  # the released prompt opens the assistant turn with <think>
    return text


def encode_prompt(tokenizer: Any, prompt: Prompt, style: PromptStyle | None = None, raw: bool = False) -> list[int]:
    """Token ids of the prompt. Chat-templated text already carries its BOS; plain text gets the tokenizer's."""
    text = format_prompt(tokenizer, prompt, style, raw)
    return list(tokenizer.encode(text, add_special_tokens=not _templated(tokenizer, prompt, style, raw)))

"""Prompt formatting shared by inference and training (both must tokenize prompts identically).

A checkpoint may carry ``parathinker.json`` with its own prompting defaults:
``{"instruction": str | null, "chat_template": bool, "summary_prefix": str,
"parallel": {ParallelParams fields}, "sampling": {SamplingParams fields}}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from .params import RELEASED_SUMMARY_PREFIX

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


def format_prompt(tokenizer: Any, question: str, style: PromptStyle | None = None, raw: bool = False) -> str:
    """The text sent to the model for ``question``: chat template + instruction, or ``question`` as is."""
    if raw:
        return question
    style = style or PromptStyle()
    content = f"{question}\n{style.instruction}" if style.instruction else question
    if style.chat_template and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
        )
        if "<think>" in tokenizer.get_vocab() and not text.rstrip().endswith("<think>"):
            text += "<think>\n"  # the released prompt opens the assistant turn with <think>
        return text
    return content


def encode_prompt(tokenizer: Any, question: str, style: PromptStyle | None = None, raw: bool = False) -> list[int]:
    """Token ids of the prompt. Chat-templated text already carries its BOS; plain text gets the tokenizer's."""
    text = format_prompt(tokenizer, question, style, raw)
    templated = not raw and (style or PromptStyle()).chat_template and getattr(tokenizer, "chat_template", None)
    return list(tokenizer.encode(text, add_special_tokens=not templated))

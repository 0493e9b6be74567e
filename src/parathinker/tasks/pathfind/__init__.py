"""Path finding in a tree: the task of the bundled ParaThinker model (see docs/task.md).

Modules: ``problem`` (generator, canonical form, verifier), ``teacher`` (search traces and
summaries), ``tokenizer`` (word-level tokenizer), ``data`` (dataset writer), ``stats``
(teacher statistics), ``cli`` (``python -m parathinker.tasks.pathfind``).
"""

from __future__ import annotations

from .problem import GenConfig, Problem, format_prompt, generate, parse_route, verify
from .teacher import Trace, extract_boxed, majority, summarize, walk

__all__ = [
    "GenConfig",
    "Problem",
    "Trace",
    "extract_boxed",
    "format_prompt",
    "generate",
    "majority",
    "parse_route",
    "summarize",
    "verify",
    "walk",
]

"""Options of ``parathinker data generate`` (the CLI is built from ``DataGenConfig``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError

DEFAULT_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclass
class DataGenConfig:
    """Multi-path SFT data from a teacher behind an OpenAI-compatible endpoint."""

    problems: str = field(default="", metadata={"help": "problems: .jsonl/.json/.parquet/.csv file or a hub dataset id"})
    model: str = field(default="", metadata={"help": "the teacher's model name on the server"})
    out: str = field(default="", metadata={"help": "output JSONL (the raw log and manifest go beside it)"})
    base_urls: tuple[str, ...] = field(default=(), metadata={"cli": False})
    paths: int = field(default=6, metadata={"help": "paths sampled per problem"})
    temperature: float = field(default=0.8, metadata={"help": "teacher sampling temperature (paper: 0.8)"})
    top_p: float = field(default=1.0, metadata={"help": "teacher nucleus mass"})
    max_tokens: int | None = field(default=None, metadata={"help": "teacher token budget per path (default: the server's)"})
    concurrency: int = field(default=32, metadata={"help": "HTTP requests in flight over all URLs"})
    summary: Literal["template", "teacher"] = field(
        default="template", metadata={"help": "template = released prefix + boxed answer; teacher = a second call"})
    summary_max_tokens: int = field(default=4096, metadata={"help": "token budget of a teacher summary"})
    min_correct: int = field(default=1, metadata={"help": "correct kept paths a problem needs to be kept"})
    drop_truncated: bool = field(default=False, metadata={"help": "drop paths cut by the token budget"})
    wrong_paths: Literal["keep", "drop"] = field(default="keep", metadata={"help": "keep or drop paths with a wrong answer"})
    path_text: Literal["both", "reasoning", "content"] = field(
        default="both", metadata={"help": "a path's body: reasoning then answer text, or one of them"})
    decontaminate: str | None = field(default=None, metadata={"help": "folder of benchmark files: drop problems sharing a 13-gram"})
    limit: int | None = field(default=None, metadata={"help": "use only the first N problems"})
    extra_body: str | None = field(default=None, metadata={"help": "JSON object added to every request's body"})
    id_field: str = field(default="id", metadata={"help": "id field ('' = hash of the problem text)"})
    problem_field: str = field(default="problem", metadata={"help": "problem text field"})
    answer_field: str = field(default="answer", metadata={"help": "gold answer field"})
    split: str = field(default="train", metadata={"help": "split of a hub dataset"})
    instruction: str = field(default=DEFAULT_INSTRUCTION, metadata={"help": "appended to each problem sent to the teacher"})
    seed: int = field(default=0, metadata={"help": "base of the per-path seeds sent to the teacher; -1 = send none"})
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={"help": "environment variable holding the API key"})
    timeout: float = field(default=600.0, metadata={"help": "seconds before a request is abandoned and retried"})
    max_retries: int = field(default=6, metadata={"help": "retries of a failed request (429, 5xx, timeouts)"})
    backoff: float = field(default=1.0, metadata={"help": "first retry wait in seconds (doubles, jittered, max 60)"})
    tokenizer: str | None = field(default=None, metadata={"help": "tokenizer dir: path lengths in tokens"})
    grade_workers: int = field(default=2, metadata={"help": "grading processes (0 = threads, no math-verify timeouts)"})

    def __post_init__(self) -> None:
        for name, flag in (("problems", "--problems FILE"), ("model", "--model NAME"), ("out", "--out FILE")):
            if not str(getattr(self, name) or "").strip():
                raise ConfigError(f"give {flag}")
        self.base_urls = tuple(self.base_urls or ())
        if not self.base_urls:
            raise ConfigError("give --base-url URL (repeat it for several replicas)")
        checks = [
            (self.paths >= 1, f"--paths must be >= 1, got {self.paths}"),
            (self.temperature >= 0, f"--temperature must be >= 0, got {self.temperature}"),
            (0 < self.top_p <= 1, f"--top-p must be in (0, 1], got {self.top_p}"),
            (self.max_tokens is None or self.max_tokens >= 1, f"--max-tokens must be >= 1, got {self.max_tokens}"),
            (self.concurrency >= 1, f"--concurrency must be >= 1, got {self.concurrency}"),
            (self.summary_max_tokens >= 1, f"--summary-max-tokens must be >= 1, got {self.summary_max_tokens}"),
            (0 <= self.min_correct <= self.paths,
             f"--min-correct must be in 0..--paths ({self.paths}), got {self.min_correct}"),
            (self.limit is None or self.limit >= 1, f"--limit must be >= 1, got {self.limit}"),
            (self.seed >= -1, f"--seed must be >= 0 (or -1 for none), got {self.seed}"),
            (self.timeout > 0, f"--timeout must be > 0, got {self.timeout}"),
            (self.max_retries >= 0, f"--max-retries must be >= 0, got {self.max_retries}"),
            (self.backoff >= 0, f"--backoff must be >= 0, got {self.backoff}"),
            (self.grade_workers >= 0, f"--grade-workers must be >= 0, got {self.grade_workers}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)
        self.extra()  # validates --extra-body

    def extra(self) -> dict[str, Any]:
        """``--extra-body`` parsed (an empty dict when not given)."""
        if not self.extra_body:
            return {}
        try:
            obj = json.loads(self.extra_body)
        except json.JSONDecodeError as e:
            raise ConfigError(f"--extra-body is not valid JSON ({e.msg}); give an object like '{{\"top_k\": 20}}'") from None
        if not isinstance(obj, dict):
            raise ConfigError(f"--extra-body must be a JSON object, got {type(obj).__name__}")
        return obj

    def request(self) -> dict[str, Any]:
        """What decides the teacher's answers: a log made with other values cannot be resumed."""
        return {"model": self.model, "temperature": self.temperature, "top_p": self.top_p,
                "max_tokens": self.max_tokens, "extra_body": self.extra(), "instruction": self.instruction,
                "seed": self.seed, "summary_max_tokens": self.summary_max_tokens}

    @property
    def log_path(self) -> Path:
        return _beside(self.out, ".raw.jsonl")

    @property
    def manifest_path(self) -> Path:
        return _beside(self.out, ".manifest.json")


def _beside(out: str, suffix: str) -> Path:
    p = Path(out)
    stem = p.name[: -len(".jsonl")] if p.name.endswith(".jsonl") else p.name
    return p.with_name(stem + suffix)



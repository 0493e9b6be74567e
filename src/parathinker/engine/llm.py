"""The public entry point: ``LLM(model_dir).generate(prompts, ParallelParams(...), SamplingParams(...))``."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, TokenizerError
from ..layout import IGNORE_INDEX, pack
from ..model import load_model
from ..params import ParallelParams, SamplingParams
from ..prompting import Prompt, PromptStyle, encode_prompt, format_prompt
from ..tokens import ControlTokens, load_tokenizer
from .decode.config import DecodeConfig
from .engine import Engine
from .kv_cache import CacheConfig
from .outputs import RequestOutput, ScoreOutput, build_output
from .sequence import Request, RequestSpec


def resolve_model_path(model: str | Path | None) -> Path:
    """A checkpoint directory; ``None`` means the bundled default model."""
    if model is None:
        from ..assets import default_model_dir

        return default_model_dir()
    from ..model.gguf import resolve_alias

    alias = resolve_alias(str(model)) if not Path(str(model)).exists() else None
    return alias or Path(model).expanduser()


class LLM:
    """A ParaThinker (or plain) checkpoint loaded for inference.

    >>> llm = LLM("path/to/checkpoint", device="cpu")
    >>> out = llm.generate(["What is 2+3?"], ParallelParams(num_paths=4), SamplingParams(seed=0))[0]
    >>> out.answer, out.summary.text, out.paths[0].text, out.stats
    """

    def __init__(
        self,
        model: str | Path | None = None,
        device: str = "cpu",
        dtype: str | torch.dtype = "auto",
        cache: CacheConfig | None = None,
        prompt_style: PromptStyle | None = None,
        threads: int | str | None = None,
        decode: DecodeConfig | None = None,
    ):
        """``threads``: torch CPU threads; None leaves torch's setting, "auto" uses 1 for small models
        on the CPU (their ops are too short to gain from threads, and threads that wait on each
        other make a busy machine many times slower). ``cache``: KV memory; ``decode``: how decode steps run."""
        path = resolve_model_path(model)
        self.path = path
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} requested but CUDA is not available here; use device=cpu")
        self.model = load_model(path, dtype=dtype, device=device)
        _set_threads(threads, self.model)
        self.tokenizer = load_tokenizer(path)
        # the engine checks every request against the model's context with a clear error; the
        # tokenizer's own length warning (its model_max_length, not the model's) only misleads
        self.tokenizer.model_max_length = int(1e30)
        self.style = prompt_style or PromptStyle.from_checkpoint(path)
        eos = _eos_ids(path, self.tokenizer)
        try:
            self.control: ControlTokens | None = ControlTokens.from_tokenizer(self.tokenizer, eos)
        except TokenizerError:
            self.control = None
        self.eos_ids = eos
        self.engine = Engine(self.model, self.control, eos, cache, tokenizer=self.tokenizer, decode=decode)

    @classmethod
    def from_settings(cls, model: str | None, device: str, dtype: Any, threads: Any, cache: dict[str, Any],
                      decode: dict[str, Any]) -> LLM:
        """An ``LLM`` from plain settings (``CacheConfig`` / ``DecodeConfig`` fields as dicts): what a process
        or a Ray replica receives to load the server's model with the server's settings."""
        return cls(model, device=device, dtype=dtype, cache=CacheConfig(**cache), decode=DecodeConfig(**decode),
                   threads=threads)

    # ------------------------------------------------------------------ prompting
    def format_prompt(self, question: Prompt, raw: bool = False) -> str:
        return format_prompt(self.tokenizer, question, self.style, raw)

    def encode_prompt(self, question: Prompt, raw: bool = False) -> list[int]:
        ids = encode_prompt(self.tokenizer, question, self.style, raw)
        _warn_unknown(self.tokenizer, question, ids)
        return ids

    def default_params(self) -> tuple[ParallelParams, SamplingParams]:
        """The checkpoint's defaults (``parathinker.json``) over the library's."""
        return self._resolve(None, None)

    def _resolve(
        self, parallel: ParallelParams | None, sampling: SamplingParams | None
    ) -> tuple[ParallelParams, SamplingParams]:
        """What the caller set > the checkpoint's parathinker.json > the library (``PromptStyle.resolve``)."""
        return self.style.resolve(parallel, sampling)

    def check(
        self, prompt: Prompt | Sequence[int], parallel: ParallelParams | None = None,
        sampling: SamplingParams | None = None, *, raw: bool = False,
    ) -> None:
        """Raise the error ``generate`` would raise for this request (control tokens, paths, context,
        pages), without running it: ``parathinker eval`` checks every method x P before its first sample."""
        self.engine.check(self.request_spec(prompt, parallel, sampling, raw=raw))

    def _encode_text(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False)) if text else []

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    # ------------------------------------------------------------------ requests
    def request_spec(
        self,
        prompt: Prompt | Sequence[int],
        parallel: ParallelParams | None = None,
        sampling: SamplingParams | None = None,
        *,
        raw: bool = False,
    ) -> RequestSpec:
        """One request for the engine: a question, chat messages or token ids (used as is), with its
        parameters resolved as ``generate`` resolves them."""
        parallel, sampling = self._resolve(parallel, sampling)
        ids = list(prompt) if _is_token_ids(prompt) else self.encode_prompt(prompt, raw)  # type: ignore[arg-type]
        return RequestSpec(ids, parallel, sampling, self._encode_text(parallel.summary_prefix or ""))

    def add_request(
        self,
        prompt: Prompt | Sequence[int],
        parallel: ParallelParams | None = None,
        sampling: SamplingParams | None = None,
        *,
        raw: bool = False,
        stream_paths: bool = True,
    ) -> int:
        """Queue one request on the engine (``llm.engine.step()`` runs it and streams its deltas); its id.
        ``stream_paths`` off: each path's deltas at its first token and its end only (``Engine.add_request``)."""
        spec = self.request_spec(prompt, parallel, sampling, raw=raw)
        text = prompt if isinstance(prompt, str) else self._decode(spec.prompt_ids)
        return self.engine.add_request(spec, text, stream_paths=stream_paths)

    def generate(
        self,
        prompts: str | Sequence[str | Sequence[int]],
        parallel: ParallelParams | None = None,
        sampling: SamplingParams | None = None,
        *,
        raw: bool = False,
        progress: bool = False,
    ) -> list[RequestOutput]:
        """Think in parallel about each prompt; all requests decode together.

        A prompt is a question (formatted with the chat template and instruction unless ``raw``),
        chat messages, or a list of token ids used as is (e.g. a formatted prompt plus a forced
        start of the answer, without a text round trip).
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        parallel, sampling = self._resolve(parallel, sampling)
        prefix = self._encode_text(parallel.summary_prefix or "")
        specs = []
        for i, p in enumerate(prompts):
            sp = sampling if sampling.seed is None else replace(sampling, seed=sampling.seed + i)
            ids = list(p) if _is_token_ids(p) else self.encode_prompt(p, raw)  # type: ignore[arg-type]
            specs.append(RequestSpec(ids, parallel, sp, prefix))
        prompts = [self._decode(p) if _is_token_ids(p) else p for p in prompts]  # type: ignore[arg-type]
        if not progress:
            reqs = self.engine.run(specs)
        elif len(specs) > 1:
            from tqdm import tqdm

            with tqdm(total=len(specs), desc="requests", unit="req") as bar:
                reqs = self.engine.run(specs, on_finish=lambda r: bar.update(1))
        else:
            reqs = self._run_one_with_progress(specs[0], parallel)
        return [build_output(p, r, self._decode) for p, r in zip(prompts, reqs)]

    def _run_one_with_progress(self, spec: RequestSpec, parallel: ParallelParams) -> list[Request]:
        """One request: a bar over its longest path's tokens, then its summary (ETA from the budgets)."""
        from tqdm import tqdm

        budget = parallel.max_path_tokens + (parallel.summary_max_tokens if parallel.mode in ("parathinker", "reprefill") else 0)
        with tqdm(total=budget, desc="thinking", unit="tok", leave=False) as bar:
            def step(active: list[Request]) -> None:
                for r in active:
                    done = max((len(s.body) for s in r.seqs), default=0)
                    if r.summary is not None:
                        bar.set_description("summary")
                        done = parallel.max_path_tokens + len(r.summary.body)
                    bar.update(max(0, done - bar.n))

            reqs = self.engine.run([spec], on_step=step)
            bar.update(bar.total - bar.n)  # done: unused budget (First-Finish, an early summary end) is not left at 76%
            bar.refresh()
            return reqs

    # ------------------------------------------------------------------ score
    def score(
        self,
        prompt: str | Sequence[int],
        paths: Sequence[str | Sequence[int]],
        summary: str | Sequence[int],
        parallel: ParallelParams | None = None,
        *,
        raw: bool = False,
        path_logprobs: bool = True,
    ) -> ScoreOutput:
        """Teacher-forced log-probs of ``prompt | paths | summary`` through the engine's own path.

        The prompt is prefilled once, the paths are decoded as one batch token by token, the
        summary reads their KV in place (or re-prefills, with ``mode="reprefill"``). Strings are
        tokenized (the prompt formatted as in ``generate`` unless ``raw``); id lists are used as is.
        ``path_logprobs=False``: each path body goes in as one prefill chunk instead (fast for long
        paths; the bodies' log-probs are NaN, their close tokens' and the summary's are computed).
        """
        c = self.control
        if c is None:
            raise TokenizerError("scoring a ParaThinker layout needs the control tokens: run `parathinker prepare`")
        prompt_ids = self.encode_prompt(prompt, raw) if isinstance(prompt, str) else list(prompt)
        bodies = [self._encode_text(p) if isinstance(p, str) else list(p) for p in paths]
        summary_ids = self._encode_text(summary) if isinstance(summary, str) else list(summary)
        control = set(c.all_ids)
        for what, ids in [*((f"path {i}", b) for i, b in enumerate(bodies, 1)), ("the summary", summary_ids)]:
            bad = next((t for t in ids if t in control), None)
            if bad is not None:
                raise ConfigError(
                    f"{what} contains the control token {self.tokenizer.convert_ids_to_tokens(bad)!r} (id {bad}): "
                    "give path and summary bodies without <thinkN>/</thinkN>/<summary>/</summary> (score adds them)"
                )
        parallel = self._resolve(parallel, None)[0]  # the checkpoint's layout ablations, unless set
        parallel = replace(parallel, num_paths=len(bodies), termination="last", summary_prefix="")
        packed = pack(prompt_ids, bodies, summary_ids, c, config=parallel.layout)
        spec = RequestSpec(
            prompt_ids, parallel, SamplingParams(temperature=0.0), [],
            forced_paths=[[*b, c.think_close[i]] for i, b in enumerate(bodies)],
            forced_summary=[*summary_ids, c.summary_close],
            prefill_forced=not path_logprobs,
        )
        t0 = time.perf_counter()
        (req,) = self.engine.run([spec])
        lp = [math.nan] * len(packed)
        for s, (a, b) in zip(req.seqs, packed.path_spans):
            lp[a : b - 1] = [*s.logprobs, s.end_logprob]
        assert req.summary is not None and packed.summary_span is not None
        a, b = packed.summary_span
        lp[a : b - 1] = [*req.summary.logprobs, req.summary.end_logprob]
        for k, lab in enumerate(packed.labels):
            if lab == IGNORE_INDEX:
                lp[k] = math.nan
        stats = dict(req.stats, time_total=time.perf_counter() - t0)
        return ScoreOutput(packed, lp, stats)


def _eos_ids(path: Path, tokenizer: Any) -> tuple[int, ...]:
    ids: list[int] = []
    gen = path / "generation_config.json"
    if gen.is_file():
        try:
            e = json.loads(gen.read_text()).get("eos_token_id")
            ids += e if isinstance(e, list) else ([e] if e is not None else [])
        except (OSError, ValueError):
            pass
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return tuple(dict.fromkeys(int(i) for i in ids))


SMALL_MODEL_PARAMS = 20_000_000


def _set_threads(threads: int | str | None, model: torch.nn.Module) -> None:
    if threads is None:
        return
    if threads == "auto":
        small = sum(p.numel() for p in model.parameters()) < SMALL_MODEL_PARAMS
        if model.device.type == "cpu" and small:
            torch.set_num_threads(1)
        return
    try:
        n = int(threads)
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(f"threads must be a number >= 1 or 'auto', got {threads!r}")
    torch.set_num_threads(n)


def _warn_unknown(tokenizer: Any, prompt: object, ids: Sequence[int]) -> None:
    """A prompt the vocabulary cannot spell (a task model given free text) is answered blindly: say so."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None and unk in ids:
        import warnings

        warnings.warn(  # one message text: shown once however many prompts have it
            f"a prompt has words unknown to this model's vocabulary (read as {tokenizer.unk_token}): "
            "the model cannot read it as written and its answer means little (the bundled model knows "
            "only its path-finding task: `parathinker task sample` prints a problem)",
            stacklevel=3,
        )


def _is_token_ids(p: object) -> bool:
    return isinstance(p, (list, tuple)) and len(p) > 0 and all(isinstance(x, int) for x in p)

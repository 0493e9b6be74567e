"""Datasets and teacher statistics of the path-finding task.

``make_data`` writes, into one folder:

- ``train.jsonl``: multi-path SFT examples ``{"id", "prompt", "paths", "summary", "answer"}``;
  ``paths`` are path bodies without ``<think i>`` tags, ``summary`` the body without
  ``<summary>`` tags, ``answer`` the true route (the summary's may differ when every path
  failed).
- ``train_seq.jsonl``: the sequential baseline's data, one line per teacher trace of the same
  problems: ``{"id", "prompt", "completion", "answer"}`` (completion = trace ending in \\boxed{}).
- ``test.jsonl``: held-out problems ``{"id", "prompt", "answer", "start", "goal", "edges",
  "tries"}``; no test problem is a relabelled copy of a training one (canonical forms).
- ``tokenizer/``: the task tokenizer (``AutoTokenizer.from_pretrained`` loads it).
- ``meta.json``: the configuration and counts.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import ConfigError, DataError
from .problem import GenConfig, Problem, generate, verify
from .teacher import MAX_TRIES, extract_boxed, summarize, walk

MAX_MISSES = 5000  # consecutive duplicate draws before a split is declared exhausted


@dataclass(frozen=True)
class DataConfig:
    """How many traces per problem and the teacher's budget."""

    tries: int = field(default=4, metadata={"help": "tries (walks) per path before it gives up and guesses"})
    commit: float = field(
        default=0.8, metadata={"help": "chance a later try repeats the first try's first move"}
    )
    min_paths: int = field(default=1, metadata={"help": "fewest teacher paths per training example"})
    max_paths: int = field(default=6, metadata={"help": "most teacher paths per training example"})

    def __post_init__(self) -> None:
        if not 1 <= self.tries <= MAX_TRIES:
            raise ConfigError(f"tries must be in 1..{MAX_TRIES}, got {self.tries}")
        if not 0 <= self.commit <= 1:
            raise ConfigError(f"commit must be in [0, 1], got {self.commit}")
        if not 1 <= self.min_paths <= self.max_paths <= 8:
            raise ConfigError(
                f"need 1 <= min_paths <= max_paths <= 8, got {self.min_paths}, {self.max_paths}"
            )


def problems(seed: int, split: str, gen: GenConfig, exclude: set[str] | None = None) -> Iterator[Problem]:
    """Endless stream of distinct problems of one split; canonical forms in ``exclude`` are skipped.

    ``exclude`` is updated with every problem yielded, so passing one set to two streams keeps
    them disjoint.
    """
    rng = random.Random(f"pathfind-{split}-{seed}")
    seen = exclude if exclude is not None else set()
    misses = 0
    while True:
        p = generate(rng, gen)
        c = p.canonical()
        if c in seen:
            misses += 1
            if misses > MAX_MISSES:
                raise ConfigError(
                    f"found no new distinct problem in {MAX_MISSES} draws after {len(seen)}: these "
                    "settings allow too few problems; raise max_depth, choices or dead_end_jitter"
                )
            continue
        misses = 0
        seen.add(c)
        yield p


def trace_rng(seed: int, split: str, index: int) -> random.Random:
    return random.Random(f"pathfind-trace-{split}-{seed}-{index}")


def make_example(pid: str, problem: Problem, rng: random.Random, cfg: DataConfig) -> dict:
    """One multi-path SFT example: independent teacher traces plus the teacher summary."""
    n = rng.randint(cfg.min_paths, cfg.max_paths)
    paths = [walk(problem, rng, cfg.tries, cfg.commit).text for _ in range(n)]
    summary, _ = summarize(paths)
    return {"id": pid, "prompt": problem.prompt, "paths": paths, "summary": summary, "answer": problem.answer}


def test_record(pid: str, problem: Problem, cfg: DataConfig) -> dict:
    return {
        "id": pid,
        "prompt": problem.prompt,
        "answer": problem.answer,
        **problem.to_json(),
        "tries": cfg.tries,
        "commit": cfg.commit,
    }


def split_problems(
    seed: int, n_train: int, n_test: int, gen: GenConfig
) -> tuple[list[Problem], list[Problem]]:
    """Held-out problems first, then training problems that are none of them (nor each other)."""
    seen: set[str] = set()
    test_stream = problems(seed, "test", gen, seen)
    test = [next(test_stream) for _ in range(n_test)]
    train_stream = problems(seed, "train", gen, seen)
    train = [next(train_stream) for _ in range(n_train)]
    return train, test


def make_data(out: str | Path, n_train: int, n_test: int, seed: int, gen: GenConfig, cfg: DataConfig) -> dict:
    """Write the dataset folder (see the module docstring); returns the meta record."""
    from .tokenizer import save_tokenizer

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train, test = split_problems(seed, n_train, n_test, gen)
    n_paths = n_ok = 0
    with open(out / "train.jsonl", "w") as f, open(out / "train_seq.jsonl", "w") as fs:
        for i, p in enumerate(train):
            ex = make_example(f"pf-train-{i}", p, trace_rng(seed, "train", i), cfg)
            f.write(json.dumps(ex) + "\n")
            for k, body in enumerate(ex["paths"]):
                fs.write(
                    json.dumps(
                        {
                            "id": f"{ex['id']}-{k}",
                            "prompt": ex["prompt"],
                            "completion": body,
                            "answer": ex["answer"],
                        }
                    )
                    + "\n"
                )
                n_paths += 1
                n_ok += " found " in f" {body} "
    with open(out / "test.jsonl", "w") as f:
        for i, p in enumerate(test):
            f.write(json.dumps(test_record(f"pf-test-{i}", p, cfg)) + "\n")
    save_tokenizer(out / "tokenizer")
    meta = {
        "task": "pathfind",
        "seed": seed,
        "train": n_train,
        "test": n_test,
        "train_paths": n_paths,
        "train_path_success": round(n_ok / max(n_paths, 1), 4),
        "gen": dataclasses.asdict(gen),
        "data": dataclasses.asdict(cfg),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def load_test(path: str | Path) -> list[tuple[dict, Problem]]:
    """Records of a test.jsonl with their problems (for ``verify``)."""
    out = []
    for where, rec in _jsonl(path):
        try:
            out.append((rec, Problem.from_json(rec)))
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{where}: not a test.jsonl problem ({type(e).__name__}: {e})") from None
    return out


def _jsonl(path: str | Path) -> list[tuple[str, dict]]:
    """``(file:line, object)`` for each non-blank line; DataError (file:line) on a bad line."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as e:
            raise DataError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        if not isinstance(rec, dict):
            raise DataError(f"{path}:{n}: expected a JSON object, got {type(rec).__name__}")
        out.append((f"{path}:{n}", rec))
    return out


def check_predictions(test_path: str | Path, predictions_path: str | Path) -> dict[str, float | int]:
    """Score predictions ``{"id", "answer"}`` against a test.jsonl: accuracy over the WHOLE test set
    (a problem without a prediction counts as wrong; an id predicted twice, or unknown, is an error)."""
    test = {str(rec.get("id")): prob for rec, prob in load_test(test_path)}
    if not test:
        raise DataError(f"{test_path}: no problems")
    seen: set[str] = set()
    ok = 0
    for where, pred in _jsonl(predictions_path):
        if "id" not in pred:
            raise DataError(f"{where}: a prediction needs an \"id\" (and an \"answer\")")
        pid = str(pred["id"])
        if pid not in test:
            raise DataError(f"{where}: id {pred['id']!r} is not in {test_path}")
        if pid in seen:
            raise DataError(f"{where}: id {pred['id']!r} predicted twice")
        seen.add(pid)
        ok += verify(test[pid], pred.get("answer"))
    return {"n": len(test), "predicted": len(seen), "correct": ok, "accuracy": ok / len(test)}


def verify_record(record: dict, answer: str | None) -> bool:
    """Check a claimed answer against one test.jsonl record."""
    return verify(Problem.from_json(record), answer)


def grade(record: dict, output: str) -> bool:
    """Grade a model's output text (a summary or a sequential completion): its last \\boxed{} verified."""
    return verify_record(record, extract_boxed(output))

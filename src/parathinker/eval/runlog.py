"""Crash-safe JSONL logs: one record per finished sample, appended, flushed and fsynced at once.

A killed process can leave at most one partial last line; opening the log drops it (it was a
sample in flight). Records are identified by a key (a tuple of fields); a rerun skips keys done.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Hashable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ..errors import DataError

Record = dict[str, Any]
KeyFn = Callable[[Record], Hashable]


def read_records(path: str | Path, *, repair: bool = False) -> list[Record]:
    """Complete records of a log. A partial last line is ignored (and cut off when ``repair``)."""
    p = Path(path)
    if not p.exists():
        return []
    data = p.read_bytes()
    end = data.rfind(b"\n") + 1  # bytes after the last newline belong to a write that was cut
    if end < len(data):
        warnings.warn(f"{p}: dropping a partial last record ({len(data) - end} bytes)", stacklevel=2)
        if repair:
            with p.open("r+b") as f:
                f.truncate(end)
                f.flush()
                os.fsync(f.fileno())
    out: list[Record] = []
    for lineno, line in enumerate(data[:end].splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{p}:{lineno}: corrupt log record ({e.msg}); remove the line to resume") from None
        out.append(rec)
    return out


def read_logs(paths: Iterable[str | Path], key: KeyFn) -> list[Record]:
    """Records of several logs (e.g. one per shard), first occurrence of each key kept."""
    seen: set[Hashable] = set()
    out: list[Record] = []
    for p in paths:
        for rec in read_records(p):
            k = key(rec)
            if k not in seen:
                seen.add(k)
                out.append(rec)
    return out


class AppendLog:
    """An append-only JSONL log; ``append`` returns once the record is on disk."""

    def __init__(self, path: str | Path, key: KeyFn) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.key = key
        self.records = read_records(self.path, repair=True)
        self.done: set[Hashable] = {key(r) for r in self.records}
        self._f = self.path.open("a", encoding="utf-8")

    def append(self, rec: Record) -> None:
        """Write one record as one line, flush and fsync: after this it survives a kill."""
        self._f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())
        self.done.add(self.key(rec))
        self.records.append(rec)

    def close(self) -> None:
        """Close the file (records already appended are on disk either way)."""
        self._f.close()

    def __enter__(self) -> AppendLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

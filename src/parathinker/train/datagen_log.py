"""The raw log of ``data generate``: every teacher response, appended and fsynced as it arrives.

One JSON object per line. The first is a header with the request parameters (a rerun with other
parameters is refused: the log would mix teachers). Then ``paths`` records (one response: the
problem id, the path slots it covers, its choices), ``summary`` records (a teacher summary of a
set of paths) and ``failed`` records (audit only: a rerun asks again). A killed run leaves at
most a partial last line, cut off when the log is opened. Records are read back by byte offset,
so a run over thousands of long paths keeps only offsets in memory.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError

Record = dict[str, Any]
VERSION = 1


class RawLog:
    """Append-only JSONL with reads by offset. ``scan()`` yields ``(offset, record)`` of the log."""

    def __init__(self, path: str | Path, request: dict[str, Any]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repair()
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._w = self.path.open("ab")
        self._r = self.path.open("rb")
        if new:
            self.append({"kind": "header", "version": VERSION, "request": request})
        else:
            header = next(self.scan(), (0, {}))[1]
            if header.get("kind") != "header":
                raise DataError(f"{self.path}: not a data-generate log (no header line); move it away")
            if header.get("request") != request:
                diff = sorted(k for k in set(request) | set(header.get("request", {}))
                              if request.get(k) != header.get("request", {}).get(k))
                raise ConfigError(
                    f"{self.path} was made with other request settings ({', '.join(diff)} differ); "
                    "rerun with the same options to resume, or write to another --out"
                )

    def _repair(self) -> None:
        if not self.path.exists():
            return
        size = self.path.stat().st_size
        with self.path.open("r+b") as f:
            tail = b""
            pos = size
            while pos > 0 and b"\n" not in tail:  # find the last newline without reading the whole log
                step = min(pos, 1 << 16)
                pos -= step
                f.seek(pos)
                tail = f.read(step) + tail
            end = pos + tail.rfind(b"\n") + 1 if b"\n" in tail else 0
            if end < size:
                warnings.warn(f"{self.path}: dropping a partial last record ({size - end} bytes)", stacklevel=3)
                f.truncate(end)
                f.flush()
                os.fsync(f.fileno())

    def append(self, rec: Record) -> int:
        """Write one record as one line, flushed and fsynced; returns its offset."""
        off = self._w.tell()
        self._w.write((json.dumps(rec, ensure_ascii=False) + "\n").encode())
        self._w.flush()
        os.fsync(self._w.fileno())
        return off

    def read(self, offset: int) -> Record:
        """The record at ``offset``."""
        self._r.seek(offset)
        return json.loads(self._r.readline())

    def scan(self) -> Iterator[tuple[int, Record]]:
        """Every record with its offset, in file order."""
        with self.path.open("rb") as f:
            off = 0
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield off, json.loads(line)
                    except json.JSONDecodeError as e:
                        raise DataError(f"{self.path}:{n}: corrupt record ({e.msg}); remove the line to resume") from None
                off += len(line)

    def close(self) -> None:
        """Close both handles (everything appended is on disk already)."""
        self._w.close()
        self._r.close()

"""KV page bookkeeping: plain Python, no torch, unit-testable alone.

The pool owns ``num_pages`` pages of ``page_size`` token slots (page 0 is reserved as a sink
for padding writes and never handed out). A ``Run`` is a contiguous stretch of one
sequence's tokens stored in a list of pages, filled from offset 0. Sequences *read* a list
of runs and *write* only their own last run:

    path i    reads [prompt run, own run]
    summary   reads [prompt run, path_1 run, ..., path_P run, own run]

so forking a path is a reference to the prompt's run and merging for the summary is a list
concatenation; no K/V is ever copied. Runs are reference-counted and their pages return to
the pool when the last reader releases them. Requests reserve their worst-case page count on
admission, so a running request can never run out of pages mid-way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import OutOfPagesError

NULL_PAGE = 0


@dataclass(eq=False)
class Run:
    """Tokens ``0..length-1`` of one stretch of KV, stored page by page."""

    page_size: int
    pages: list[int] = field(default_factory=list)
    length: int = 0
    refs: int = 1
    slot_list: list[int] = field(default_factory=list)  # flat slots of tokens 0..length-1, kept in step

    @property
    def capacity(self) -> int:
        return len(self.pages) * self.page_size

    def slot(self, i: int) -> int:
        """Flat cache slot of token ``i`` of this run."""
        return self.pages[i // self.page_size] * self.page_size + i % self.page_size


class PagePool:
    """Free list + per-request reservations over ``num_pages`` pages."""

    def __init__(self, num_pages: int, page_size: int, max_pages: int | None = None):
        """``max_pages``: what the pool may grow to (``grow``); None: it stays at ``num_pages``."""
        if num_pages < 2:
            raise OutOfPagesError(f"the KV pool needs at least 2 pages, got {num_pages}: raise the KV memory budget")
        self.num_pages = num_pages
        self.max_pages = max(num_pages, max_pages or num_pages)
        self.page_size = page_size
        # free pages: a stack (pop() hands out low ids first, then the most recently freed) and a flag per page.
        # ``take_block`` finds its block in the flags and leaves the block's stack entries behind as stale
        # (skipped when popped, dropped when they pile up): no pass over the whole free list per admission.
        self._free: list[int] = list(range(num_pages - 1, NULL_PAGE, -1))
        self._is_free = bytearray(num_pages)
        self._is_free[NULL_PAGE + 1 :] = b"\x01" * (num_pages - 1)
        self._num_free = num_pages - 1
        self._reserved: dict[int, int] = {}  # request id -> pages still reserved for it

    # -- accounting ---------------------------------------------------------------------
    @property
    def usable_pages(self) -> int:
        return self.num_pages - 1

    @property
    def num_in_use(self) -> int:
        """Pages held by runs or reserved for running requests."""
        return self.usable_pages - self.num_unreserved

    @property
    def num_free(self) -> int:
        return self._num_free

    @property
    def num_unreserved(self) -> int:
        return self._num_free - sum(self._reserved.values())

    def free_pages(self) -> list[int]:
        """The free pages, ascending (tests, debugging)."""
        return [p for p in range(self.num_pages) if self._is_free[p]]

    def pages_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.page_size)

    def can_admit(self, pages: int) -> bool:
        return pages <= self.num_unreserved

    def check_fits(self, pages: int) -> None:
        """Raise if a request of ``pages`` could never fit, even in an empty pool grown to its limit."""
        if pages > self.max_pages - 1:
            fixed = self.max_pages == self.num_pages
            raise OutOfPagesError(
                f"a request needs up to {pages} KV pages of {self.page_size} tokens but the pool "
                + (f"has {self.max_pages - 1}: raise kv_cache_memory (GiB) or lower the "
                   if fixed else f"can grow to {self.max_pages - 1} (half of the free memory): lower the ")
                + "token budgets (max_path_tokens, summary_max_tokens) or the number of paths"
            )

    def grow(self, num_pages: int) -> None:
        """Add pages ``self.num_pages .. num_pages - 1`` (the KV tensor was enlarged to match); handed out last."""
        if not self.num_pages < num_pages <= self.max_pages:
            raise ValueError(f"cannot grow a pool of {self.num_pages} pages to {num_pages} (limit {self.max_pages})")
        added = num_pages - self.num_pages
        self._free[:0] = range(num_pages - 1, self.num_pages - 1, -1)  # pop() takes from the end: low ids first
        self._is_free.extend(b"\x01" * added)
        self._num_free += added
        self.num_pages = num_pages

    def admit(self, request_id: int, pages: int) -> None:
        """Reserve ``pages`` for a request (it must fit now: see ``can_admit``)."""
        self.check_fits(pages)
        if not self.can_admit(pages):
            raise OutOfPagesError(f"only {self.num_unreserved} unreserved pages left, request needs {pages}")
        self._reserved[request_id] = pages

    def finish(self, request_id: int) -> None:
        """Drop whatever a finished request had reserved but not used."""
        self._reserved.pop(request_id, None)

    # -- runs ---------------------------------------------------------------------------
    def new_run(self, pages: list[int] | None = None) -> Run:
        """An empty run; ``pages``: pages it fills first (from ``take_block``), before asking the pool for more."""
        return Run(self.page_size, list(pages or ()))

    def take_block(self, n: int, request_id: int) -> list[int] | None:
        """``n`` consecutive free pages (the lowest such) out of the request's reservation; None if no ``n``
        free pages lie in a row (the caller then lets its runs take pages one by one).

        A request's paths filled from one block each, the blocks side by side, keep every path's K/V in
        consecutive slots at a fixed stride: CPU attention reads them in place instead of gathering them.
        """
        if n <= 0 or self._reserved.get(request_id, 0) < n:
            return None
        start = self._is_free.find(b"\x01" * n)  # the lowest n free pages in a row (a C-speed scan of the flags)
        if start < 0:
            return None
        self._is_free[start : start + n] = bytes(n)
        self._num_free -= n
        self._reserved[request_id] -= n
        if len(self._free) > 2 * self._num_free + 64:  # many stale entries: keep each free page's top entry
            self._compact()
        return list(range(start, start + n))

    def _pop(self) -> int:
        """The next free page off the stack (stale entries of pages a block took are skipped)."""
        while True:
            p = self._free.pop()
            if self._is_free[p]:
                self._is_free[p] = 0
                self._num_free -= 1
                return p

    def _compact(self) -> None:
        """The stack without stale entries, in the same order (a page freed again keeps its latest entry)."""
        keep, seen = [], set()
        for p in reversed(self._free):
            if self._is_free[p] and p not in seen:
                seen.add(p)
                keep.append(p)
        keep.reverse()
        self._free = keep

    def extend(self, run: Run, n: int, request_id: int) -> list[int]:
        """Append ``n`` tokens to ``run`` (allocating pages from the request's reservation); return their slots."""
        start = run.length
        ps = run.page_size
        if n == 1 and start < len(run.pages) * ps:  # a decode step's token in a page the run has (the common case)
            slot = run.pages[start // ps] * ps + start % ps
            run.slot_list.append(slot)
            run.length = start + 1
            return [slot]
        while run.capacity < start + n:
            left = self._reserved.get(request_id, 0)
            if left <= 0 or not self._num_free:
                raise OutOfPagesError(f"request {request_id} exceeded its reserved KV pages (a budget bug)")
            self._reserved[request_id] = left - 1
            run.pages.append(self._pop())
        new = [run.pages[i // ps] * ps + i % ps for i in range(start, start + n)]
        run.slot_list.extend(new)
        run.length = start + n
        return new

    def shrink(self, run: Run, n: int) -> None:
        """Drop the last ``n`` tokens of ``run`` (their pages stay with it: the next ``extend`` reuses the slots)."""
        if not 0 <= n <= run.length:
            raise ValueError(f"cannot drop {n} tokens of a run of {run.length}")
        run.length -= n
        del run.slot_list[run.length :]

    def share(self, run: Run) -> Run:
        """Another reader of ``run`` (a forked path reading the prompt): no copy, one more reference."""
        run.refs += 1
        return run

    def release(self, run: Run) -> None:
        """One reader is done; the pages go back to the pool with the last one."""
        run.refs -= 1
        if run.refs == 0:
            self._free.extend(reversed(run.pages))
            for p in run.pages:
                self._is_free[p] = 1
            self._num_free += len(run.pages)
            run.pages = []
            run.slot_list = []
            run.length = 0
        elif run.refs < 0:
            raise RuntimeError("run released more often than shared")

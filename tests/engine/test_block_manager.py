"""Page bookkeeping alone (no torch)."""

from __future__ import annotations

import random

import pytest

from parathinker.engine.block_manager import NULL_PAGE, PagePool, Run
from parathinker.errors import OutOfPagesError


def test_extend_slots_share_release():
    pool = PagePool(num_pages=10, page_size=4)
    pool.admit(1, 5)
    prompt = pool.new_run()
    slots = pool.extend(prompt, 6, 1)  # 2 pages
    assert len(prompt.pages) == 2 and NULL_PAGE not in prompt.pages
    assert slots == [prompt.pages[0] * 4 + i for i in range(4)] + [prompt.pages[1] * 4 + i for i in range(2)]
    paths = [pool.new_run() for _ in range(3)]
    reads = [[pool.share(prompt), p] for p in paths]
    for p in paths:
        pool.extend(p, 1, 1)
    assert prompt.refs == 4 and pool.num_free == 9 - 5
    # the shared prompt keeps its pages until its last reader lets go
    for r in reads:
        for run in r:
            pool.release(run)
    assert pool.num_free == 9 - 2
    pool.release(prompt)
    assert pool.num_free == 9
    pool.finish(1)
    assert pool.num_unreserved == 9


def test_reservations_guard_admission():
    pool = PagePool(num_pages=6, page_size=2)
    pool.admit(1, 3)
    assert pool.can_admit(2) and not pool.can_admit(3)
    with pytest.raises(OutOfPagesError):
        pool.admit(2, 6)  # bigger than the whole pool: a clear error, never a hang
    run = pool.new_run()
    pool.extend(run, 6, 1)
    with pytest.raises(OutOfPagesError):
        pool.extend(run, 1, 1)  # beyond its reservation


def test_no_page_handed_out_twice():
    pool = PagePool(num_pages=50, page_size=3)
    pool.admit(7, 49)
    runs = [pool.new_run() for _ in range(7)]
    for i, r in enumerate(runs):
        pool.extend(r, 3 * i + 1, 7)
    pages = [p for r in runs for p in r.pages]
    assert len(pages) == len(set(pages))
    slots = [s for r in runs for s in r.slot_list]
    assert len(slots) == len(set(slots))


def test_shrink_gives_the_slots_back_to_the_next_extend():
    """A rolled-back token (overlapped decoding): its slot goes to the token fed instead, no page moves."""
    pool = PagePool(num_pages=10, page_size=4)
    pool.admit(1, 2)
    run = pool.new_run()
    first = pool.extend(run, 5, 1)  # a second page for the 5th token
    pages, free = list(run.pages), pool.num_free
    pool.shrink(run, 2)
    assert run.length == 3 and run.slot_list == first[:3] and run.pages == pages and pool.num_free == free
    assert pool.extend(run, 2, 1) == first[3:]
    with pytest.raises(ValueError, match="cannot drop 6 tokens of a run of 5"):
        pool.shrink(run, 6)


def test_take_block_hands_out_consecutive_pages_from_the_reservation():
    pool = PagePool(12, 4)
    pool.admit(0, 9)
    scattered = [pool.new_run() for _ in range(3)]
    for r in scattered:
        pool.extend(r, 4, 0)  # pages 1, 2, 3
    pool.release(scattered[1])  # page 2 free again: 2, 4..11 free
    block = pool.take_block(5, 0)
    assert block == [4, 5, 6, 7, 8]  # the lowest 5 in a row (not 2, 4, 5, ...)
    assert pool.take_block(2, 0) is None  # only 1 page of the reservation left
    run = pool.new_run(block[:2])
    assert pool.extend(run, 6, 0) == [16, 17, 18, 19, 20, 21] and run.pages == [4, 5]
    pool.release(run)
    assert pool.free_pages() == [2, 4, 5, 9, 10, 11] and pool.num_unreserved == 6 - 1
    pool.admit(1, 3)
    assert pool.take_block(3, 1) == [9, 10, 11] and pool.take_block(1, 1) is None


def test_pages_handed_out_as_a_sorted_free_list_would():
    """Random admissions, blocks, extensions and releases: every page handed out is the one a plain free list
    gives (a stack, and a block found by sorting the whole list, what the pool did before it kept flags),
    and the pool's counts agree, whatever stale entries the blocks left behind."""
    rng = random.Random(11)
    pool = PagePool(300, 4)
    free = list(range(299, 0, -1))  # the plain model: pop() hands out low ids first

    def block(n: int) -> list[int] | None:
        start, count, prev = -1, 0, -2
        for p in sorted(free):
            start, count = (start, count + 1) if p == prev + 1 else (p, 1)
            prev = p
            if count == n:
                free[:] = [q for q in free if not start <= q < start + n]
                return list(range(start, start + n))
        return None

    compactions = []
    real = pool._compact
    pool._compact = lambda: compactions.append(len(pool._free)) or real()
    pool.admit(0, 299)
    runs: list[Run] = []
    for _ in range(3000):
        op = rng.random()
        if op < 0.3 and pool.num_free:
            n = rng.randrange(1, 9)
            want = block(n) if n <= pool.num_free else None
            got = pool.take_block(n, 0)
            assert got == want
            if got:
                runs.append(pool.new_run(got))
                pool.extend(runs[-1], rng.randrange(1, 4 * n + 1), 0)
        elif op < 0.6 and pool.num_free:
            r = pool.new_run()
            k = rng.randrange(1, min(pool.num_free, 6) + 1)
            want = [free.pop() for _ in range(k)]
            pool.extend(r, 4 * k, 0)
            assert r.pages == want
            runs.append(r)
        elif runs:
            r = runs.pop(rng.randrange(len(runs)))
            free.extend(reversed(r.pages))
            pool.release(r)
        pool.finish(0)
        pool.admit(0, pool.num_free)
        assert pool.num_free == len(free) and pool.free_pages() == sorted(free)
    assert compactions  # stale entries were dropped along the way


def test_a_grown_pool_hands_out_its_new_pages_by_block_and_one_by_one():
    pool = PagePool(num_pages=4, page_size=2, max_pages=12)
    pool.admit(1, 3)
    run = pool.new_run()
    pool.extend(run, 6, 1)  # all 3 usable pages
    assert pool.num_free == 0 and pool.free_pages() == []
    pool.grow(12)
    assert pool.num_free == 8 and pool.num_unreserved == 8 and pool.free_pages() == list(range(4, 12))
    pool.admit(2, 8)
    assert pool.take_block(5, 2) == [4, 5, 6, 7, 8]  # the new pages are free in the flags too
    other = pool.new_run()
    pool.extend(other, 6, 2)  # 3 pages one by one: the rest of the new ones, never a page in use
    assert sorted(other.pages) == [9, 10, 11] and pool.num_free == 0
    for r in (run, other):
        pool.release(r)
    assert pool.num_free == 6 and set(pool.free_pages()) == {1, 2, 3, 9, 10, 11}

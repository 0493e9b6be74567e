"""Generator determinism, canonical form and the exact verifier of the path-finding task."""

from __future__ import annotations

import random

import pytest

from parathinker.errors import ConfigError
from parathinker.tasks.pathfind.data import problems
from parathinker.tasks.pathfind.problem import GenConfig, Problem, find_route, generate, verify


def _brute_force_routes(p: Problem) -> list[list[str]]:
    """Every simple start->goal route, by exhaustive enumeration (independent of find_route)."""
    kids = p.children
    out = []

    def go(route):
        if route[-1] == p.goal:
            out.append(route)
            return
        for c in kids.get(route[-1], []):
            if c not in route:
                go([*route, c])

    go([p.start])
    return out


def test_same_seed_same_problems_and_different_seeds_differ():
    a = [generate(random.Random(7)) for _ in range(3)]
    b = [generate(random.Random(7)) for _ in range(3)]
    assert a == b
    s1 = problems(1, "train", GenConfig())
    s2 = problems(1, "train", GenConfig())
    s3 = problems(2, "train", GenConfig())
    first = [next(s1) for _ in range(20)]
    assert first == [next(s2) for _ in range(20)]
    assert first != [next(s3) for _ in range(20)]


@pytest.mark.parametrize("cfg", [GenConfig(), GenConfig(min_depth=2, max_depth=6, choices=(4, 12, 27))])
def test_problems_have_one_route_with_the_requested_branching(cfg):
    rng = random.Random(0)
    for _ in range(200):
        p = generate(rng, cfg)
        routes = _brute_force_routes(p)
        assert routes == [list(p.route)]
        assert find_route(p.start, p.goal, p.edges) == list(p.route)
        assert cfg.min_depth <= len(p.route) - 1 <= cfg.max_depth
        kids = p.children
        choices = 1
        for n in p.route[:-1]:
            choices *= len(kids[n])
        assert choices in cfg.choices  # 1 / P(one uniform random walk reaches the goal)
        assert len(kids[p.start]) >= 2  # a walker commits at the very first step
        assert len({v for _, v in p.edges}) == len(p.edges)  # a tree: one parent per node
        assert len(p.edges) + 1 <= cfg.max_nodes


def test_verifier_accepts_the_route_and_rejects_wrong_answers():
    p = generate(random.Random(3))
    r = list(p.route)
    assert verify(p, p.answer)
    assert verify(p, " > ".join(r))  # separators are tolerated
    other = next(v for u, v in p.edges if v not in r)
    bad = [
        None,
        "",
        "none",
        " ".join(r[:-1]),  # stops short
        " ".join(r[1:]),  # does not start at the start
        " ".join([*r[:-1], other, p.goal]),  # leaves the route through a non-edge
        " ".join([r[0], p.goal]),  # jumps
        " ".join(reversed(r)),
        p.answer + " " + other,  # overshoots
    ]
    for ans in bad:
        assert not verify(p, ans), ans


def test_canonical_form_ignores_names_and_edge_order():
    p = generate(random.Random(5))
    names = sorted({x for e in p.edges for x in e})
    rename = dict(zip(names, reversed(names)))
    edges = [(rename[u], rename[v]) for u, v in p.edges]
    random.Random(0).shuffle(edges)
    q = Problem(rename[p.start], rename[p.goal], tuple(edges), tuple(rename[x] for x in p.route))
    assert q.canonical() == p.canonical()
    assert verify(q, q.answer)
    assert Problem.from_json(q.to_json()) == q


def test_bad_configs_are_refused():
    with pytest.raises(ConfigError):
        GenConfig(min_depth=5, max_depth=3)
    with pytest.raises(ConfigError):
        GenConfig(choices=(7,))  # a prime above max_branch
    with pytest.raises(ConfigError):
        GenConfig(max_nodes=500)

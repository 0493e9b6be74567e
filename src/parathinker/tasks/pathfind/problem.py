"""Path-finding problems: seeded generator, canonical form and exact verifier.

A problem is a rooted tree given as a shuffled edge list. Exactly one route leads from the
start (the root) to the goal; every other branch ends in a dead end. Every step of a
search is a look-up in the prompt ("which edges leave node x?"), so a tiny model can learn
it, while a random walker commits to one branch at every fork and, at a wrong fork, walks
into a dead end: the task's tunnel vision.

Difficulty knobs (`GenConfig`): the route length, the number of choices a walker faces on
the route (the product of branchings, i.e. 1 / the chance that one walk succeeds), and how
far dead ends reach below or beyond the goal's depth.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from ...errors import ConfigError

NODE_NAMES: tuple[str, ...] = tuple(str(i) for i in range(10, 100))  # 90 one-token node names


@dataclass(frozen=True)
class GenConfig:
    """How hard the generated problems are."""

    min_depth: int = field(default=3, metadata={"help": "shortest start-to-goal route (edges)"})
    max_depth: int = field(default=4, metadata={"help": "longest start-to-goal route (edges)"})
    choices: tuple[int, ...] = field(
        default=(6, 8, 9),
        metadata={"help": "allowed products of branchings along the route (1/P(one walk succeeds))"},
    )
    max_branch: int = field(default=3, metadata={"help": "most children of any node"})
    dead_end_jitter: int = field(default=1, metadata={"help": "dead ends end at goal depth +- this"})
    subtree_fork: float = field(default=0.3, metadata={"help": "chance that a dead-end corridor node forks"})
    max_nodes: int = field(default=40, metadata={"help": "most nodes per problem (<= 90 names)"})

    def __post_init__(self) -> None:
        if not 1 <= self.min_depth <= self.max_depth:
            raise ConfigError(f"need 1 <= min_depth <= max_depth, got {self.min_depth}, {self.max_depth}")
        if self.max_branch < 2:
            raise ConfigError(f"max_branch must be >= 2, got {self.max_branch}")
        if not self.choices or any(c < 2 for c in self.choices):
            raise ConfigError(f"choices must be products >= 2, got {self.choices}")
        if not 0 <= self.subtree_fork < 1:
            raise ConfigError(f"subtree_fork must be in [0, 1), got {self.subtree_fork}")
        if not 8 <= self.max_nodes <= len(NODE_NAMES):
            raise ConfigError(f"max_nodes must be in 8..{len(NODE_NAMES)}, got {self.max_nodes}")
        for c in self.choices:
            if not _factorizations(c, self.max_depth, self.max_branch):
                raise ConfigError(
                    f"choices {c} cannot be written as a product of <= {self.max_depth} branchings "
                    f"in 2..{self.max_branch}"
                )


@dataclass(frozen=True)
class Problem:
    """One path-finding problem. ``edges`` are in prompt order; ``route`` is the unique answer."""

    start: str
    goal: str
    edges: tuple[tuple[str, str], ...]
    route: tuple[str, ...]

    @property
    def children(self) -> dict[str, list[str]]:
        """Node -> its children, in prompt order (the order a reader of the prompt sees them)."""
        out: dict[str, list[str]] = {}
        for u, v in self.edges:
            out.setdefault(u, []).append(v)
        return out

    @property
    def prompt(self) -> str:
        return format_prompt(self.start, self.goal, self.edges)

    @property
    def answer(self) -> str:
        return " ".join(self.route)

    def canonical(self) -> str:
        """Structure up to node names and edge order: equal for relabelled copies of one problem."""
        kids = self.children

        def enc(n: str) -> str:
            mark = "G" if n == self.goal else ""
            return "(" + mark + "".join(sorted(enc(c) for c in kids.get(n, []))) + ")"

        return enc(self.start)

    def to_json(self) -> dict:
        return {"start": self.start, "goal": self.goal, "edges": [list(e) for e in self.edges]}

    @classmethod
    def from_json(cls, d: dict) -> Problem:
        edges = tuple((str(u), str(v)) for u, v in d["edges"])
        p = cls(start=str(d["start"]), goal=str(d["goal"]), edges=edges, route=())
        return cls(p.start, p.goal, p.edges, tuple(find_route(p.start, p.goal, edges)))


def format_prompt(start: str, goal: str, edges) -> str:
    """``graph : 12 > 47 , 47 > 90 , ... ; find path 12 to 85`` (single spaces between tokens)."""
    body = " , ".join(f"{u} > {v}" for u, v in edges)
    return f"graph : {body} ; find path {start} to {goal}"


def find_route(start: str, goal: str, edges) -> list[str]:
    """The route from start to goal by exhaustive search ([] when there is none)."""
    kids: dict[str, list[str]] = {}
    for u, v in edges:
        kids.setdefault(u, []).append(v)
    stack, seen = [(start, [start])], {start}
    while stack:
        node, route = stack.pop()
        if node == goal:
            return route
        for c in kids.get(node, []):
            if c not in seen:
                seen.add(c)
                stack.append((c, [*route, c]))
    return []


def parse_route(text: str) -> list[str]:
    """Node names of a claimed route; tolerant of ``>`` / ``,`` separators and extra spaces."""
    return text.replace(">", " ").replace(",", " ").split()


def verify(problem: Problem, answer: str | None) -> bool:
    """True iff ``answer`` names a route that starts at the start, ends at the goal and uses only edges."""
    if not answer:
        return False
    nodes = parse_route(answer)
    if len(nodes) < 2 or nodes[0] != problem.start or nodes[-1] != problem.goal:
        return False
    edges = set(problem.edges)
    return all((u, v) in edges for u, v in zip(nodes, nodes[1:]))


def _factorizations(c: int, max_len: int, max_branch: int) -> list[tuple[int, ...]]:
    """Ordered tuples of factors in 2..max_branch with product c and length <= max_len."""
    if c == 1:
        return [()]
    if max_len == 0:
        return []
    out = []
    for f in range(2, max_branch + 1):
        if c % f == 0:
            out += [(f, *rest) for rest in _factorizations(c // f, max_len - 1, max_branch)]
    return out


def generate(rng: random.Random, cfg: GenConfig = GenConfig()) -> Problem:  # noqa: B008 - frozen default
    """One random problem. Same rng state -> same problem."""
    while True:
        p = _try_generate(rng, cfg)
        if p is not None:
            return p


def _try_generate(rng: random.Random, cfg: GenConfig) -> Problem | None:
    depth = rng.randint(cfg.min_depth, cfg.max_depth)
    c = rng.choice(cfg.choices)
    facts = [f for f in _factorizations(c, depth, cfg.max_branch) if f]
    if not facts:
        return None
    forks = list(rng.choice(facts))
    # the start always forks (a walker commits at once); the other forks land on random route nodes
    slots = [0, *rng.sample(range(1, depth), len(forks) - 1)] if len(forks) - 1 <= depth - 1 else None
    if slots is None:
        return None
    rng.shuffle(forks)
    branching = [1] * depth
    for s, f in zip(slots, forks):
        branching[s] = f
    names = list(NODE_NAMES)
    rng.shuffle(names)
    route = names[: depth + 1]
    pool = names[depth + 1 :]
    edges: list[tuple[str, str]] = list(zip(route, route[1:]))
    n_nodes = depth + 1

    def dead_branch(parent: str, level: int, leaf_level: int) -> bool:
        """Grow a corridor from ``parent`` (at ``level``) to a dead end at ``leaf_level``."""
        nonlocal n_nodes
        if not pool or n_nodes >= cfg.max_nodes:
            return False
        node = pool.pop()
        n_nodes += 1
        edges.append((parent, node))
        if level + 1 >= leaf_level:
            return True
        ok = dead_branch(node, level + 1, leaf_level)
        if ok and rng.random() < cfg.subtree_fork and cfg.max_branch >= 2:
            ok = dead_branch(node, level + 1, rng.randint(level + 2, leaf_level + cfg.dead_end_jitter))
        return ok

    for i, b in enumerate(branching):
        for _ in range(b - 1):
            lo = max(i + 1, depth - cfg.dead_end_jitter)
            leaf = rng.randint(lo, depth + cfg.dead_end_jitter)
            if not dead_branch(route[i], i, leaf):
                return None
    rng.shuffle(edges)
    return Problem(start=route[0], goal=route[-1], edges=tuple(edges), route=tuple(route))

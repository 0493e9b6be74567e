"""Grading on a table of tricky cases: extraction, equivalence, voting."""

from __future__ import annotations

import pytest

from parathinker.eval.grading import (
    all_boxed,
    extract_answer,
    gold_to_str,
    grade,
    is_equivalent,
    last_boxed,
    majority_vote,
)

# (model text, gold, expected extracted answer, expected verdict)
CASES = [
    # fractions vs decimals
    (r"so \boxed{\frac{1}{2}}", "0.5", r"\frac{1}{2}", True),
    (r"\boxed{0.5}", r"\frac{1}{2}", "0.5", True),
    (r"\boxed{\dfrac{14}{3}}", r"\frac{14}{3}", r"\dfrac{14}{3}", True),
    (r"\boxed{4.67}", r"\frac{14}{3}", "4.67", False),
    # AIME leading zeros, AMC floats, int golds
    (r"\boxed{25}", "025", "25", True),
    (r"\boxed{025}", 25, "025", True),
    (r"\boxed{27}", 27.0, "27", True),
    (r"\boxed{28}", 27.0, "28", False),
    # percent
    (r"\boxed{50\%}", "50", r"50\%", True),
    (r"\boxed{50\%}", r"50\%", r"50\%", True),
    # degrees
    (r"\boxed{90}", r"90^\circ", "90", True),
    (r"\boxed{90^\circ}", "90", r"90^\circ", True),
    (r"\boxed{45^\circ}", r"90^\circ", r"45^\circ", False),
    # radicals that only parse when the gold is wrapped
    (r"\boxed{2\sqrt{3}}", r"\sqrt{12}", r"2\sqrt{3}", True),
    (r"\boxed{\sqrt{117}}", r"3\sqrt{13}", r"\sqrt{117}", True),
    # intervals
    (r"\boxed{[2,5)}", "[2, 5)", "[2,5)", True),
    (r"\boxed{(2,5)}", "[2, 5)", "(2,5)", False),
    (r"\boxed{(-\infty, 3]}", r"(-\infty,3]", r"(-\infty, 3]", True),
    # tuples / points
    (r"\boxed{(3, \frac{\pi}{2})}", r"\left( 3, \frac{\pi}{2} \right)", r"(3, \frac{\pi}{2})", True),
    (r"\boxed{(1,2)}", "(1,2)", "(1,2)", True),
    (r"\boxed{(2,1)}", "(1,2)", "(2,1)", False),
    # multiple-choice letters and text answers
    (r"\boxed{C}", "C", "C", True),
    (r"\boxed{D}", "C", "D", False),
    (r"\boxed{\text{(C)}}", r"\text{(C)}", r"\text{(C)}", True),
    (r"\boxed{\text{Evelyn}}", r"\text{Evelyn}", r"\text{Evelyn}", True),
    (r"\boxed{Evelyn}", r"\text{Evelyn}", "Evelyn", True),
    (r"\boxed{\text{Bob}}", r"\text{Evelyn}", r"\text{Bob}", False),
    # expressions
    (r"\boxed{p-q}", "p - q", "p-q", True),
    (r"\boxed{q-p}", "p - q", "q-p", False),
    # no box: documented fallbacks
    ("Thus the answer is 42.", "42", "42", True),
    ("The final answer is $\\frac{3}{56}$.", r"\frac{3}{56}", r"\frac{3}{56}", True),
    ("we get 3 apples, then 7 pears, so 10", "10", "10", True),
    ("I cannot solve this.", "10", None, False),
    ("", "10", None, False),
    # several boxes: the last one counts
    (r"first \boxed{3} then corrected: \boxed{5}", "5", "5", True),
    (r"first \boxed{5} then corrected: \boxed{3}", "5", "3", False),
    (r"\fbox{7} and later \boxed{8}", "7", "8", False),
    # nested braces
    (r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt 3}{2}", r"\frac{\sqrt{3}}{2}", True),
    (r"\boxed{\{1,2\}}", r"\{2,1\}", r"\{1,2\}", True),
    # a box cut before closing is not an answer; the earlier closed box is
    (r"\boxed{4} hmm wait \boxed{\frac{1", "4", "4", True),
    # brace-less box and \fbox
    (r"so \boxed 7", "7", "7", True),
    (r"\fbox{12}", "12", "12", True),
]


@pytest.mark.parametrize(("text", "gold", "answer", "verdict"), CASES)
def test_tricky_cases(text: str, gold: object, answer: str | None, verdict: bool) -> None:
    ex, ok = grade(text, gold)
    assert ex.answer == answer
    assert ok is verdict


def test_extraction_sources() -> None:
    assert extract_answer(r"x \boxed{1}").source == "boxed"
    assert extract_answer("the answer is: 3").source == "phrase"
    assert extract_answer("so 1,234 it is").answer == "1234"
    assert extract_answer("so 1,234 it is").source == "number"
    assert extract_answer(None).source == "none"


def test_all_boxed_order_and_nesting() -> None:
    text = r"\boxed{a} \fbox{b{c}} \boxed{d{e{f}}}"
    assert all_boxed(text) == ["a", "b{c}", "d{e{f}}"]
    assert last_boxed("no box") is None
    assert last_boxed(r"\boxedtext{1}") is None  # not the \boxed command


def test_gold_to_str() -> None:
    assert gold_to_str(27.0) == "27"
    assert gold_to_str(2.5) == "2.5"
    assert gold_to_str(70) == "70"
    assert gold_to_str(" 025 ") == "025"
    with pytest.raises(TypeError):
        gold_to_str(True)
    with pytest.raises(TypeError):
        gold_to_str([1])


def test_none_is_never_equivalent() -> None:
    assert not is_equivalent(None, "1")


def test_majority_vote_groups_equivalent_answers() -> None:
    v = majority_vote(["0.5", r"\frac{1}{2}", "3", None, "1/2", "3"])
    assert v.answer == "0.5" and v.count == 3 and v.index == 0
    assert sorted(v.clusters) == [2, 3]


def test_majority_vote_tie_goes_to_earliest() -> None:
    assert majority_vote(["7", "8", "8", "7"]).answer == "7"
    assert majority_vote(["8", "7", "7", "8"]).answer == "8"
    assert majority_vote([None, "2", "1"]).answer == "2"


def test_majority_vote_empty() -> None:
    v = majority_vote([None, None])
    assert v.answer is None and v.count == 0 and v.index is None

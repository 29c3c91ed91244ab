"""Tests for lori.data.generator: the seeded arithmetic word-problem generator."""
from __future__ import annotations

import operator
import random
import re

import pytest

from lori.data.records import parse_aug_line
from lori.data.generator import generate, generate_problem

STEP = re.compile(r"^<<(\d+)([+\-*])(\d+)=(\d+)>>$")
OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul}
START = re.compile(r"^\w+ has (\d+) \w+ \.")


def check_chain(rec, min_steps, max_steps, max_value):
    assert min_steps <= len(rec.steps) <= max_steps, rec
    value = int(START.match(rec.question).group(1))
    assert 1 <= value <= max_value // 2
    for step in rec.steps:
        m = STEP.match(step)
        assert m, step
        a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
        assert a == value, f"chain broken in {rec.steps}"
        assert OPS[op](a, b) == c, step
        assert 0 <= c <= max_value, step
        if op == "*":
            assert 2 <= b <= 5
        else:
            assert b >= 1
        value = c
    assert rec.answer == str(value)


@pytest.mark.parametrize("min_steps, max_steps, max_value", [(2, 4, 99), (1, 1, 10), (4, 5, 99), (3, 6, 500)])
def test_every_record_chains(min_steps, max_steps, max_value):
    recs = generate(300, seed=7, min_steps=min_steps, max_steps=max_steps, max_value=max_value)
    assert len(recs) == 300
    for r in recs:
        check_chain(r, min_steps, max_steps, max_value)
    lengths = {len(r.steps) for r in recs}
    assert lengths == set(range(min_steps, max_steps + 1))   # every allowed length occurs
    assert {m[2] for r in recs for m in map(STEP.match, r.steps)} == {"+", "-", "*"}


def test_wrapped_problems_count_modulo_and_leak_nothing_through_operands():
    """wrap: every step is ``(a op b) mod (max_value + 1)``, starts and answers cover the whole range
    evenly, and the last step's operation and operand say nothing about the answer."""
    from collections import Counter, defaultdict

    recs = generate(4000, seed=5, min_steps=3, max_steps=6, max_value=10, wrap=True)
    for rec in recs:
        value = int(START.match(rec.question).group(1))
        assert 3 <= len(rec.steps) <= 6
        for step in rec.steps:
            a, op, b, c = STEP.match(step).groups()
            assert int(a) == value and int(c) == OPS[op](int(a), int(b)) % 11, step
            assert 2 <= int(b) <= 5 if op == "*" else 1 <= int(b) <= 10
            value = int(c)
        assert rec.answer == str(value)
    starts = Counter(int(START.match(r.question).group(1)) for r in recs)
    answers = Counter(int(r.answer) for r in recs)
    assert set(starts) == set(answers) == set(range(11))
    assert max(answers.values()) / len(recs) < 0.12                 # ~1/11 each: no majority answer
    # the most frequent answer after each last (operation, operand): near 1/11, as without it
    by_last = defaultdict(Counter)
    for r in recs:
        by_last[STEP.match(r.steps[-1]).group(2, 3)][r.answer] += 1
    guessed = sum(c.most_common(1)[0][1] for c in by_last.values()) / len(recs)
    assert guessed < 0.2, guessed
    # the range-keeping default leaks: the same guess does far better there
    plain = generate(4000, seed=5, min_steps=3, max_steps=6, max_value=10)
    by_last = defaultdict(Counter)
    for r in plain:
        by_last[STEP.match(r.steps[-1]).group(2, 3)][r.answer] += 1
    assert sum(c.most_common(1)[0][1] for c in by_last.values()) / len(plain) > 0.3


def test_deterministic_per_seed():
    a = generate(50, seed=3)
    b = generate(50, seed=3)
    assert [(r.id, r.question, r.steps, r.answer) for r in a] == [(r.id, r.question, r.steps, r.answer) for r in b]


def test_different_seeds_differ():
    a = {r.question for r in generate(50, seed=3)}
    b = {r.question for r in generate(50, seed=4)}
    assert len(a & b) < 5


def test_records_distinct_ids_and_source():
    recs = generate(200, seed=0, split="test")
    assert len({r.question for r in recs}) == 200
    assert [r.id for r in recs] == [f"test-{i}" for i in range(200)]
    assert {r.source for r in recs} == {"quickstart"}


def test_exclude_same_seed_gives_disjoint_set():
    train = generate(100, seed=11)
    qs = {r.question for r in train}
    # same seed would reproduce the same problems: exclude must skip every one of them
    test = generate(100, seed=11, exclude=qs)
    assert len(test) == 100
    assert not qs & {r.question for r in test}
    # and the exclude set is not mutated
    assert len(qs) == 100


def test_min_greater_than_max_raises():
    with pytest.raises(ValueError, match="min_steps=5 > max_steps=3"):
        generate(10, seed=0, min_steps=5, max_steps=3)


def test_generate_problem_is_parseable_aug_line():
    line = generate_problem(random.Random(0), 3, 3, 99)
    q, steps, a = parse_aug_line(line)
    assert "||" in line and line.endswith(f"#### {a}")
    assert q.endswith("have now ?")
    assert len(steps) == 3


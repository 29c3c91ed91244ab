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


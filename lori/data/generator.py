"""The quickstart task: seeded multi-step arithmetic word problems in GSM8K-Aug format.

Example (3 steps)::

    Tom has 13 apples . he buys 5 more . he gives away 11 . then he gets 3 times as many . how many apples does he have now ?
    || <<13+5=18>> <<18-11=7>> <<7*3=21>> #### 21

Each step is +, - or *k (k = 2..5) and every intermediate value stays in [0, max_value],
so a tiny model can learn it with CoT in minutes on a CPU while answering without CoT is
clearly harder (multiplication of a running total is hard to do "in the head"; with +/-
only, No-CoT gets much easier). Problems are written as GSM8K-Aug lines and parsed back by
:func:`lori.data.records.parse_aug_line`, so the quickstart exercises the real-data parser.

``wrap=True`` (our testbed variant, not from any paper) counts modulo ``max_value + 1``: the start
value is uniform in ``[0, max_value]``, every operation is always allowed, operands are drawn from
the whole range and each result wraps around (``<<7*3=10>>`` with ``max_value: 10``). Keeping
values in range otherwise leaks the answer through the operands (``gives away 9`` of at most 10
leaves 0 or 1), so a student without thoughts can guess well from the last steps alone; with a
prime modulus every step is a bijection, and the answer is only reachable through the whole chain.
"""
from __future__ import annotations

import random

from lori.data.records import Record, parse_aug_line

NAMES = ["Tom", "Ann", "Sam", "Mia", "Leo", "Zoe", "Ben", "Eva", "Max", "Ivy", "Dan", "Amy"]
ITEMS = ["apples", "pens", "books", "coins", "cards", "eggs", "shells", "stamps", "toys", "rocks"]
PRONOUN = {n: ("she" if n in {"Ann", "Mia", "Zoe", "Eva", "Ivy", "Amy"} else "he") for n in NAMES}
ADD = ["{p} buys {v} more .", "{p} finds {v} more .", "{p} gets {v} more ."]
SUB = ["{p} gives away {v} .", "{p} loses {v} .", "{p} sells {v} ."]
MUL = ["then {p} gets {v} times as many .", "then {p} has {v} times as many ."]


def generate_problem(rng: random.Random, min_steps: int, max_steps: int, max_value: int, wrap: bool = False) -> str:
    """One problem as a GSM8K-Aug line ``question||<<a+b=c>> ... #### answer``."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    pronoun = PRONOUN[name]
    if wrap:
        return _wrapped_problem(rng, name, item, pronoun, rng.randint(min_steps, max_steps), max_value + 1)
    value = rng.randint(1, max_value // 2)
    sentences = [f"{name} has {value} {item} ."]
    steps = []
    for _ in range(rng.randint(min_steps, max_steps)):
        ops = []
        if value < max_value:
            ops.append("+")
        if value > 0:
            ops.append("-")
        if 0 < value <= max_value // 2:
            ops.append("*")
        op = rng.choice(ops)
        if op == "+":
            v = rng.randint(1, max_value - value)
            new, template = value + v, rng.choice(ADD)
        elif op == "-":
            v = rng.randint(1, value)
            new, template = value - v, rng.choice(SUB)
        else:
            v = rng.randint(2, min(5, max_value // value))
            new, template = value * v, rng.choice(MUL)
        sentences.append(template.format(p=pronoun, v=v))
        steps.append(f"<<{value}{op}{v}={new}>>")
        value = new
    sentences.append(f"how many {item} does {pronoun} have now ?")
    return f"{' '.join(sentences)}||{' '.join(steps)} #### {value}"


def _wrapped_problem(rng: random.Random, name: str, item: str, pronoun: str, n_steps: int, modulus: int) -> str:
    """A problem counted modulo ``modulus`` (see the module docstring)."""
    value = rng.randrange(modulus)
    sentences, steps = [f"{name} has {value} {item} ."], []
    for _ in range(n_steps):
        op = rng.choice("+-*")
        if op == "*":
            v = rng.randint(2, 5)
            new, template = value * v % modulus, rng.choice(MUL)
        else:
            v = rng.randint(1, modulus - 1)
            new = (value + v if op == "+" else value - v) % modulus
            template = rng.choice(ADD if op == "+" else SUB)
        sentences.append(template.format(p=pronoun, v=v))
        steps.append(f"<<{value}{op}{v}={new}>>")
        value = new
    sentences.append(f"how many {item} does {pronoun} have now ?")
    return f"{' '.join(sentences)}||{' '.join(steps)} #### {value}"


def generate(n: int, seed: int, min_steps: int = 2, max_steps: int = 4, max_value: int = 99,
             split: str = "train", exclude: set[str] | None = None, wrap: bool = False) -> list[Record]:
    """``n`` distinct problems; questions in ``exclude`` (e.g. the training set) are skipped.
    ``wrap``: count modulo ``max_value + 1`` (module docstring)."""
    if min_steps > max_steps:
        raise ValueError(f"min_steps={min_steps} > max_steps={max_steps}")
    rng = random.Random(seed)
    seen = set(exclude or ())
    records: list[Record] = []
    attempts = 0
    while len(records) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise RuntimeError(f"could not generate {n} distinct problems (got {len(records)})")
        line = generate_problem(rng, min_steps, max_steps, max_value, wrap)
        question, steps, answer = parse_aug_line(line, f"quickstart:{split}")
        if question in seen:
            continue
        seen.add(question)
        records.append(Record(f"{split}-{len(records)}", question, steps, answer, "quickstart"))
    return records

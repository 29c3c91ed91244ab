"""Tests for lori.data.answers: answer extraction, numeric parsing and scoring."""
from __future__ import annotations

import pytest

from lori.data.answers import extract, is_correct, to_number

EXTRACT_CASES = [
    # --- #### (GSM8K / GSM8K-Aug) ---
    ("Natalia sold 48/2 = 24 clips. 48+24 = 72 #### 72", "72"),
    ("<<48/2=24>> <<48+24=72>> #### 72", "72"),
    ("#### 1,000", "1000"),
    ("#### $18", "18"),
    ("#### -3", "-3"),
    ("#### 3431580.0", "3431580"),
    ("#### -12.5", "-12.5"),
    ("####72", "72"),
    ("#### 72<eos>", "72"),
    ("#### 7 8 0 3", "7"),
    ("#### 5 #### 6", "6"),
    ("#### 5\nThe answer is 9", "5"),
    ("#### 5 and then 99 more", "5"),
    ("The answer is 4. #### 8", "8"),
    ("#### \\boxed{12}", "12"),
    ("#### nothing here, but earlier 7", "7"),
    ("Total is 3\n####", "3"),
    # --- "The answer is" / "answer:" ---
    ("So the answer is 42.", "42"),
    ("THE ANSWER IS 42", "42"),
    ("The final answer is: $1,234.", "1234"),
    ("Answer: 17", "17"),
    ("answer:-5", "-5"),
    ("The answer is 3 and I used 5 apples", "3"),
    ("The answer is 10. Check: 10 - 2 = 8", "10"),
    ("First the answer is 1. Wait, the answer is 2.", "2"),
    ("The answer is 5\nsome trailing 99", "5"),
    ("The answer is \\boxed{7}", "7"),
    ("The answer is unclear.\nAnswer: 12", "12"),
    ("The answer is 5. Hmm, the answer is unclear", "5"),
    ("Answer: 3/4", "3/4"),
    ("The answer is − 3", "-3"),
    # --- \boxed{} ---
    ("\\boxed{5}", "5"),
    ("We get \\boxed{3} then \\boxed{4}", "4"),
    ("\\boxed{\\frac{3}{4}}", "3/4"),
    ("\\boxed{-\\frac{1}{2}}", "-1/2"),
    ("\\boxed{\\dfrac{5}{8}}", "5/8"),
    ("\\boxed{1,000} and 7 more words", "1000"),
    ("$\\boxed{18}$ dollars", "18"),
    ("\\boxed{x = 9}", "9"),
    # --- last number fallback ---
    ("She has 3 apples and 5 oranges, so 8 fruits.", "8"),
    ("It costs $18 dollars", "18"),
    ("5 apples.", "5"),
    ("18 dollars", "18"),
    ("1,000", "1000"),
    ("$1,234,567.89", "1234567.89"),
    ("50%", "50"),
    ("The discount is 12.5%.", "12.5"),
    ("18.0", "18"),
    ("18.00", "18"),
    ("0.50", "0.5"),
    (".5", "0.5"),
    ("about .25 of it", "0.25"),
    ("-3", "-3"),
    ("\u22123", "-3"),
    ("\u2212 3", "-3"),
    ("-0", "0"),
    ("+7", "7"),
    ("temperature went to -12.5 degrees", "-12.5"),
    ("3/4", "3/4"),
    ("half is 1/2.", "1/2"),
    ("-3/4", "-3/4"),
    ("\\frac{3}{4}", "3/4"),
    ("1e3", "1000"),
    ("2.5e-1", "0.25"),
    ("3431580.0", "3431580"),
    ("10-3", "3"),
    ("5 - 3", "3"),
    ("x = -4", "-4"),
    ("(-6)", "-6"),
    ("1,2,3", "3"),
    ("step 1: 10, step 2: 20", "20"),
    ("Version 2 gives 007", "7"),
    ("1{,}000", "1000"),
    ("Pay \\$25 now", "25"),
    # --- nothing to extract ---
    ("", None),
    ("no numbers here", None),
    ("The answer is unknown.", None),
    ("####", None),
    ("\\boxed{}", None),
]


@pytest.mark.parametrize(("text", "expected"), EXTRACT_CASES)
def test_extract(text: str, expected: str | None) -> None:
    assert extract(text) == expected


@pytest.mark.parametrize(
    ("s", "expected"),
    [
        ("18", 18.0),
        ("-3", -3.0),
        ("0.5", 0.5),
        ("3/4", 0.75),
        ("-1/2", -0.5),
        ("1,000", 1000.0),
        ("1e3", 1000.0),
        ("\u22122", -2.0),
        ("1/0", None),
        ("abc", None),
        ("", None),
        ("nan", None),
        ("inf", None),
        ("1_000", None),
        (None, None),
    ],
)
def test_to_number(s: str | None, expected: float | None) -> None:
    assert to_number(s) == expected


@pytest.mark.parametrize(
    ("prediction", "gold", "expected"),
    [
        ("The answer is 18.", "18", True),
        ("#### 18", "#### 18", True),
        ("So she pays $1,000.", "1,000", True),
        ("#### 3431580", "3431580.0", True),
        ("The answer is -12.5", "-12.5", True),
        ("0.33333334", "0.3333333", True),
        ("\\boxed{\\frac{3}{4}}", "0.75", True),
        ("The answer is 0.75", "3/4", True),
        ("18.0 dollars", "18", True),
        ("\u22123", "-3", True),
        ("Answer: 1e3", "1000", True),
        ("The answer is 17.", "18", False),
        ("The answer is 1001", "1000", False),
        ("The answer is -18", "18", False),
        ("0.34", "0.3333333", False),
        ("I don't know.", "18", False),
        ("", "18", False),
        ("The answer is 5", "no number", False),
        ("The answer is 1/0", "1/0", True),
        ("#### 7 8 0 3", "7", True),
    ],
)
def test_is_correct(prediction: str, gold: str, expected: bool) -> None:
    assert is_correct(prediction, gold) is expected


def test_is_correct_custom_tolerance() -> None:
    assert is_correct("0.34", "0.3333333", rel_tol=0.05) is True
    assert is_correct("101", "100", rel_tol=0.0, abs_tol=0.5) is False


@pytest.mark.parametrize("pred,gold", [("10001", "10000"), ("3431581", "3431580.0"), ("#### 1001", "1000")])
def test_integral_gold_needs_exact_match(pred, gold):
    assert is_correct(pred, gold) is False


# ---------------------------------------------------------------- multiplication (digit strings, LSB first)
@pytest.mark.parametrize("prediction, gold, expected", [
    ("7 6 9 2 0 + 0 2 0 8 7 1 ( 7 8 9 0 8 1 ) #### 7 8 0 3 7 8 8 1", "7 8 0 3 7 8 8 1", True),
    (" #### 7 8 0 3 7 8 8 1", "7 8 0 3 7 8 8 1", True),
    ("7 8 0 3 7 8 8 1", "7 8 0 3 7 8 8 1", True),                 # no separator: the leading digits
    ("#### 7 8 0 3 7 8 8 1", "#### 7 8 0 3 7 8 8 1", True),       # raw gold line tail
    ("#### 7 8 0 3 7 8 8", "7 8 0 3 7 8 8 1", False),             # one digit short
    ("#### 7 8 0 3 7 8 8 1 0", "7 8 0 3 7 8 8 1", False),         # one digit too many
    ("#### 7 9 9 9 9 9 9 9", "7 8 0 3 7 8 8 1", False),           # same first digit, not the same number
    ("#### 18873087", "7 8 0 3 7 8 8 1", False),                  # not in the digit-string format
    ("", "7 8 0 3 7 8 8 1", False),
])
def test_is_correct_multiplication_digits(prediction, gold, expected):
    assert is_correct(prediction, gold) is expected

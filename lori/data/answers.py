"""Final-answer extraction and scoring for math word problems.

:func:`extract` pulls one normalized numeric answer out of a model output or a gold
field.  Rules are tried in order; the first that finds a number wins:

1. ``####``: the *first* number after the last ``####`` (GSM8K / GSM8K-Aug format).
   A lone number (``#### 1,000``) is simply that number; anything longer
   (``#### 7 8 0 3``) yields only its first number, ``7``.  Digit-reversed
   multiplication answers are decoded elsewhere, not here.
2. ``The answer is X`` / ``answer: X`` (case-insensitive): the first number on the
   rest of the line after the last such phrase that has one.
3. ``\\boxed{X}``: the first number inside the last ``\\boxed{...}``.
4. Otherwise the last number anywhere in the text.

Normalization: thousands commas, ``$``, ``%``, units and trailing periods are dropped
(``$1,000.`` -> ``1000``, ``18 dollars`` -> ``18``); signs are kept (``-3``, ``− 3``
-> ``-3``; ``+5`` -> ``5``); decimals are written plainly (``.5`` -> ``0.5``,
``18.00`` -> ``18``, ``1e3`` -> ``1000``); fractions stay fractions (``3/4``,
``\\frac{3}{4}`` -> ``3/4``).  A ``-`` right after a word or a digit is read as
subtraction, so ``10-3`` and ``5 - 3`` give ``3``, not ``-3``.

Multiplication golds (``7 8 0 3 7 8 8 1``: space-separated digits, least-significant
first) are compared as digit strings by :func:`is_correct` (:func:`digit_answer`).
"""
from __future__ import annotations

import math
import re
from decimal import Decimal

# A sign counts only when it does not follow a word/digit (``10-3``) or a digit and a
# space (``5 - 3``); the Unicode minus may be followed by one space (``− 3``).
_NUMBER = re.compile(
    r"(?P<sign>(?<![\w)])(?<![\d)]\s)(?:[-+]|\u2212\s?))?"
    r"(?P<body>\d+/\d+(?!\d|\.\d)"  # fraction 3/4
    r"|(?:\d{1,3}(?:,\d{3}(?!\d))+|\d+)(?:\.\d+)?(?:[eE][-+]?\d{1,3})?"  # 1,000.5 / 1e3
    r"|\.\d+(?:[eE][-+]?\d{1,3})?)"  # .5
)
_FRAC = re.compile(r"\\[dt]?frac\{\s*([^{}]*?)\s*\}\{\s*([^{}]*?)\s*\}")
_ANSWER_IS = re.compile(r"\banswer\s*(?:is\b\s*:?|:)", re.IGNORECASE)
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_DIGIT_STRING = re.compile(r"\d(?: \d)+")   # two or more single digits separated by spaces
_LEADING_DIGITS = re.compile(r"\s*(\d(?: \d)*)")
_PLAIN = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def _normalize(match: re.Match[str]) -> str:
    """Turn one ``_NUMBER`` match into its canonical string."""
    negative = bool(match["sign"]) and match["sign"][0] in "-\u2212"
    body = match["body"].replace(",", "")
    if "/" in body:
        num, den = body.split("/")
        text = f"{int(num)}/{int(den)}"
        return f"-{text}" if negative and int(num) != 0 else text
    value = Decimal(body)
    if value == value.to_integral_value():
        text = str(int(value))
    else:
        text = format(value.normalize(), "f")
    return f"-{text}" if negative and value != 0 else text


def _first_number(text: str) -> str | None:
    match = _NUMBER.search(text)
    return _normalize(match) if match else None


def _last_number(text: str) -> str | None:
    matches = list(_NUMBER.finditer(text))
    return _normalize(matches[-1]) if matches else None


def extract(text: str) -> str | None:
    """Return the normalized final numeric answer in ``text``, or None if there is none.

    See the module docstring for the rules and the normalization.
    """
    if not text:
        return None
    text = _FRAC.sub(r"\1/\2", text)
    text = text.replace("\\$", "").replace("$", "").replace("{,}", ",")
    if "####" in text:
        found = _first_number(text.rsplit("####", 1)[1])
        if found is not None:
            return found
    for match in reversed(list(_ANSWER_IS.finditer(text))):
        found = _first_number(text[match.end():].split("\n", 1)[0])
        if found is not None:
            return found
    for match in reversed(list(_BOXED.finditer(text))):
        found = _first_number(match[1])
        if found is not None:
            return found
    return _last_number(text)


def to_number(s: str | None) -> float | None:
    """Numeric value of a normalized answer (``"3/4"`` -> 0.75); None if not numeric."""
    if s is None:
        return None
    s = s.strip().replace(",", "").replace("\u2212", "-")
    parts = s.split("/")
    if len(parts) > 2 or not all(_PLAIN.fullmatch(p.strip()) for p in parts):
        return None
    values = [float(p) for p in parts]
    if len(values) == 2:
        if values[1] == 0:
            return None
        values = [values[0] / values[1]]
    return values[0] if math.isfinite(values[0]) else None


def digit_answer(text: str) -> str | None:
    """The run of space-separated single digits after the last ``####`` (or at the start).

    ``"#### 7 8 0 3<eos>"`` -> ``"7 8 0 3"``; a longer or shorter run is a different answer.
    """
    match = _LEADING_DIGITS.match(text.rsplit("####", 1)[-1])
    return match[1] if match else None


def is_correct(
    prediction_text: str, gold: str, rel_tol: float = 1e-4, abs_tol: float = 1e-6
) -> bool:
    """Whether the answer extracted from ``prediction_text`` matches ``gold``.

    ``gold`` may be a raw gold field (``"1,000"``, ``"3431580.0"``, ``"#### 18"``); it
    goes through :func:`extract` too.  An integral gold must be matched exactly (a
    relative tolerance would accept 10001 for 10000); other numbers are compared with
    :func:`math.isclose` (GSM-Hard has non-integer golds). If either side is not
    numeric, the normalized strings are compared instead. A gold of space-separated
    digits (multiplication) must be matched digit for digit (:func:`digit_answer`).
    """
    gold_digits = gold.rsplit("####", 1)[-1].strip()
    if _DIGIT_STRING.fullmatch(gold_digits):
        # multiplication: digits least-significant first; the first number would be one digit
        return digit_answer(prediction_text or "") == gold_digits
    pred = extract(prediction_text)
    if pred is None:
        return False
    gold_norm = extract(gold)
    if gold_norm is None:
        gold_norm = gold.strip()
    a, b = to_number(pred), to_number(gold_norm)
    if a is None or b is None:
        return pred == gold_norm
    if b.is_integer() and abs(b) < 2**53:
        return a == b
    return math.isclose(a, b, rel_tol=rel_tol, abs_tol=abs_tol)

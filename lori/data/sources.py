"""Real benchmark loaders: GSM8K, GSM8K-Aug, GSM-Hard, SVAMP and multi-digit multiplication.

Every loader returns :class:`lori.data.records.Record` s (id, question, steps, answer, source) from
either a **local file** in its published format or a **Hugging Face hub name**:

| kind | local file (as published) | hub name (community copy) | steps |
|---|---|---|---|
| ``gsm8k`` | ``train.jsonl`` / ``test.jsonl`` (``question``, ``answer`` with ``#### x``) | ``openai/gsm8k:main@test`` | the ``<<expr=result>>`` annotations (= GSM8K-Aug's equation-only CoT) |
| ``gsm8k_aug`` | ``question||<<..>> <<..>> #### x`` text | ``zen-E/GSM8k-Aug@train`` (``question``, ``cot``, ``answer``) | the equations |
| ``gsm_hard`` | ``gsmhardv2.jsonl`` (``input``, ``code``, ``target`` float) | ``reasoning-machines/gsm-hard@train`` | none |
| ``svamp`` | ``SVAMP.json`` (array of ``ID``, ``Body``, ``Question``, ``Equation``, ``Answer``) | ``ChilleD/SVAMP@test`` | one ``<<equation=answer>>`` |
| ``mult`` | ``a * b||partial products #### product`` text, digits least-significant first | — | one per partial product |

Dict-shaped sources may also be ``.jsonl``, ``.json`` (an array) or ``.parquet`` files with
the hub's fields. A hub source is ``name[:config][@split]`` (split defaults to ``train``
for the training split, ``test`` otherwise); it goes through ``datasets.load_dataset``,
offline unless ``LORI_ALLOW_DOWNLOAD=1`` (:mod:`lori.hub`).

Ids keep the source's own id: SVAMP's ``ID`` (``chal-1``), otherwise the 0-based line (text
files, JSON lines) or row (JSON arrays, parquet, hub) index, after a per-split prefix.
Answers are normalised numbers (``1,000`` -> ``1000``, ``3431580.0`` -> ``3431580``);
multiplication answers stay digit strings (``7 8 0 3``). A malformed record raises
:class:`lori.data.records.DataError` naming the file and line (or row).

``mult_synth`` generates multiplication training data in the published format
(:func:`generate_mult`), excluding the pairs of given valid/test files: the real train
files are not available offline.
"""
from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from lori.data.records import (ANSWER_SEP, COT_SEP, DataError, Record, jsonl_objects, parse_aug_line, read_text, split_steps,
                               text_lines,
                               unclosed_equation)
from lori.hub import offline_hint

KINDS = ("gsm8k", "gsm8k_aug", "gsm_hard", "svamp", "mult")
FILE_SUFFIXES = (".jsonl", ".json", ".txt", ".parquet")
_EQUATION = re.compile(r"<<[^>]*>>")
_DIGITS = re.compile(r"\d(?: \d)*")


# ---------------------------------------------------------------- sources
def is_local(source: str) -> bool:
    """A path (existing, or spelled like one) rather than a hub name."""
    return (Path(source).exists() or source.startswith((".", "/", "~")) or Path(source).suffix in FILE_SUFFIXES)


def parse_hub_spec(source: str, default_split: str) -> tuple[str, str | None, str]:
    """``name[:config][@split]`` -> (name, config, split)."""
    rest, _, split = source.partition("@")
    name, _, config = rest.partition(":")
    return name, config or None, split or default_split


def _rows_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    for lineno, obj in jsonl_objects(path):
        yield f"{path}:{lineno}", obj


def _rows_json_array(path: Path) -> Iterator[tuple[str, Any]]:
    """Elements of a JSON array, each located by the line it starts on (SVAMP is pretty-printed)."""
    text = read_text(path)
    decoder = json.JSONDecoder()
    pos = len(text) - len(text.lstrip())
    if not text[pos:pos + 1] == "[":
        raise DataError(f"{path}:1: expected a JSON array of records")
    pos, line, counted = pos + 1, 1, 0
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text):
            raise DataError(f"{path}:{text.count(chr(10)) + 1}: JSON array is not closed")
        if text[pos] == "]":
            return
        line, counted = line + text.count("\n", counted, pos), pos   # incremental: linear in the file size
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
        yield f"{path}:{line}", obj


def _rows_parquet(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    for i, row in enumerate(pq.read_table(path).to_pylist()):
        yield f"{path}: row {i}", row


def _rows_hub(source: str, default_split: str, cache_dir: str | None = None) -> Iterator[tuple[str, Any]]:
    name, config, split = parse_hub_spec(source, default_split)
    try:
        import datasets

        data = datasets.load_dataset(name, config, split=split, cache_dir=cache_dir)
    except ImportError:
        raise DataError(f"dataset '{source}': the `datasets` package is needed for hub names "
                        f"(pip install datasets), or give a local path") from None
    except Exception as e:  # datasets raises many types for "not cached / unreachable / no such split"
        raise DataError(f"{offline_hint(name, 'dataset')} (while loading split '{split}'"
                        f"{f', config {config!r}' if config else ''}: {type(e).__name__}: {str(e)[:300]})") from None
    for i, row in enumerate(data):
        yield f"{source}: row {i}", row


def _index(where: str) -> str:
    """The 0-based source index from a location (``file:12`` -> ``11``; ``...: row 3`` -> ``3``)."""
    if ": row " in where:
        return where.rsplit(": row ", 1)[1]
    return str(int(where.rsplit(":", 1)[1]) - 1)


def _field(row: Any, where: str, *names: str) -> list[Any]:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    missing = [n for n in names if row.get(n) is None]
    if missing:
        raise DataError(f"{where}: missing field(s) {', '.join(missing)} (has {', '.join(sorted(row)) or 'none'})")
    return [row[n] for n in names]


# ---------------------------------------------------------------- answers
def number_text(value: Any, where: str) -> str:
    """A gold number as text: ``51.0`` -> ``51``, ``0.5`` -> ``0.5``, ``"1,000"`` -> ``1000``."""
    if isinstance(value, str):
        text = value.strip().replace(",", "")
        try:
            value = float(text)
        except ValueError:
            raise DataError(f"{where}: answer {value!r} is not a number") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise DataError(f"{where}: answer {value!r} is not a number")
    value = float(value)
    return str(int(value)) if value.is_integer() and abs(value) < 2**63 else repr(value)


# ---------------------------------------------------------------- one row -> Record, per kind
def gsm8k_row(row: Any, where: str) -> tuple[str, list[str], str]:
    question, solution = _field(row, where, "question", "answer")
    if ANSWER_SEP not in solution:
        raise DataError(f"{where}: answer has no '{ANSWER_SEP}' before the final answer")
    work, final = solution.rsplit(ANSWER_SEP, 1)
    # GSM8K-Aug's equation-only CoT: the <<...>> calculator annotations of the solution, in order
    return question.strip(), _EQUATION.findall(work), number_text(final, where)


def gsm8k_aug_row(row: Any, where: str) -> tuple[str, list[str], str]:
    if isinstance(row, str):
        question, steps, answer = parse_aug_line(row, where)
    else:
        question, cot, answer = _field(row, where, "question", "cot", "answer")
        if unclosed_equation(cot) is not None:
            raise DataError(f"{where}: 'cot' has a '<<' never closed by '>>' (a cut equation?)")
        question, steps = question.strip(), split_steps(cot)
    return question, steps, number_text(answer, where)


def gsm_hard_row(row: Any, where: str) -> tuple[str, list[str], str]:
    question, target = _field(row, where, "input", "target")
    return question.strip(), [], number_text(target, where)


def svamp_row(row: Any, where: str) -> tuple[str, list[str], str]:
    body, question, answer = _field(row, where, "Body", "Question", "Answer")
    answer = number_text(answer, where)
    equation = row.get("Equation")
    steps = [f"<<{svamp_equation(equation)}={answer}>>"] if equation else []
    return f"{body.strip()} {question.strip()}", steps, answer


def svamp_equation(equation: str) -> str:
    """``( 76.0 - 25.0 )`` -> ``76-25`` (GSM8K annotation style: no spaces, no ``.0``, no outer parens)."""
    expr = re.sub(r"(\d+)\.0\b", r"\1", equation.replace(" ", ""))
    while expr.startswith("(") and expr.endswith(")") and _balanced(expr[1:-1]):
        expr = expr[1:-1]
    return expr


def _balanced(expr: str) -> bool:
    depth = 0
    for ch in expr:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth < 0:
            return False
    return depth == 0


def mult_row(row: Any, where: str) -> tuple[str, list[str], str]:
    if not isinstance(row, str):
        raise DataError(f"{where}: multiplication data is text lines 'a * b||cot #### product'")
    question, _, answer = parse_aug_line(row, where)
    a, b = parse_mult_question(question, where)
    if not _DIGITS.fullmatch(answer) or digits_value(answer) != digits_value(a) * digits_value(b):
        raise DataError(f"{where}: answer {answer!r} is not the product of {question!r} (digits least-significant first)")
    cot = row.split(COT_SEP, 1)[1].rsplit(ANSWER_SEP, 1)[0]
    return question, split_mult_steps(cot), answer


def parse_mult_question(question: str, where: str) -> tuple[str, str]:
    parts = question.split(" * ")
    if len(parts) != 2 or not all(_DIGITS.fullmatch(p.strip()) for p in parts):
        raise DataError(f"{where}: question {question!r} is not 'a * b' with space-separated digits")
    return parts[0].strip(), parts[1].strip()


def split_mult_steps(cot: str) -> list[str]:
    """One step per partial product (with its running sum); ``" ".join`` restores the CoT."""
    parts = [p.strip() for p in cot.strip().split(" + ")] if cot.strip() else []
    return parts[:1] + [f"+ {p}" for p in parts[1:]]


ROW_PARSERS: dict[str, Callable[[Any, str], tuple[str, list[str], str]]] = {
    "gsm8k": gsm8k_row, "gsm8k_aug": gsm8k_aug_row, "gsm_hard": gsm_hard_row, "svamp": svamp_row, "mult": mult_row,
}
_ID_FIELDS = {"svamp": "ID"}


# ---------------------------------------------------------------- public loaders
def iter_rows(source: str, default_split: str = "train", cache_dir: str | None = None) -> Iterator[tuple[str, Any]]:
    """``(location, row)`` of a local file (text lines are ``str``, the rest dicts) or a hub dataset."""
    if not is_local(source):
        yield from _rows_hub(source, default_split, cache_dir)
        return
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such data file")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from _rows_jsonl(path)
    elif suffix == ".json":
        yield from _rows_json_array(path)
    elif suffix == ".parquet":
        yield from _rows_parquet(path)
    elif suffix == ".txt":
        for lineno, line in text_lines(path):
            if line.strip():
                yield f"{path}:{lineno}", line.rstrip("\n")
    else:
        raise DataError(f"{path}: unknown data file type '{suffix}' (one of {', '.join(FILE_SUFFIXES)})")


def load_dataset(kind: str, source: str, split: str = "train", n: int | None = None,
                 cache_dir: str | None = None) -> list[Record]:
    """Records of one dataset ``kind`` from a local path or hub name; ``n`` keeps the first ``n``."""
    if kind not in ROW_PARSERS:
        raise DataError(f"unknown dataset kind {kind!r} (one of {', '.join(ROW_PARSERS)})")
    parse = ROW_PARSERS[kind]
    records, seen = [], set()
    for where, row in iter_rows(source, "train" if split == "train" else "test", cache_dir):
        if n is not None and len(records) >= n:
            break
        question, steps, answer = parse(row, where)
        if not question:
            raise DataError(f"{where}: empty question")
        source_id = str(row[_ID_FIELDS[kind]]) if kind in _ID_FIELDS and isinstance(row, dict) and \
            row.get(_ID_FIELDS[kind]) is not None else _index(where)
        rid = f"{split}-{source_id}"
        if rid in seen:
            raise DataError(f"{where}: duplicate id {source_id!r}")
        seen.add(rid)
        records.append(Record(rid, question, steps, answer, kind))
    if not records and n != 0:
        raise DataError(f"{source}: no problems in it (an empty file?)")
    return records


# ---------------------------------------------------------------- multiplication
def digits_value(digits: str) -> int:
    """``"7 6 9 2"`` (least-significant first) -> 2967."""
    return int("".join(reversed(digits.split())))


def to_digits(value: int, width: int) -> str:
    """2967, 5 -> ``"7 6 9 2 0"``: least-significant first, zero-padded to ``width``."""
    return " ".join(reversed(str(value).zfill(width)))


def mult_line(a: int, b: int, digits: int) -> str:
    """One problem in the published format (reproduces the 4x4 / 5x5 files byte for byte).

    Partial product i is ``a * b_i * 10^i`` written with ``digits + 1 + i`` digits; from the
    second partial on, the running sum follows in parentheses; the last partial has none.
    """
    b_digits = [int(c) for c in reversed(str(b))]
    parts, total = [], 0
    for i, bd in enumerate(b_digits):
        partial = a * bd * 10**i
        total += partial
        text = to_digits(partial, digits + 1 + i)
        if 0 < i < len(b_digits) - 1:
            text += f" ( {to_digits(total, digits + 1 + i)} )"
        parts.append(text)
    question = f"{to_digits(a, digits)} * {to_digits(b, digits)}"
    return f"{question}{COT_SEP}{' + '.join(parts)} {ANSWER_SEP} {to_digits(a * b, 2 * digits)}"


def mult_pairs(paths: Iterable[str | Path]) -> tuple[set[tuple[int, int]], int]:
    """The (a, b) pairs of multiplication files (both orders) and their operand width."""
    pairs, widths = set(), set()
    for path in paths:
        for where, line in iter_rows(str(path)):
            question = parse_aug_line(line, where)[0]
            a, b = parse_mult_question(question, where)
            widths.update({len(a.split()), len(b.split())})
            pairs.update({(digits_value(a), digits_value(b)), (digits_value(b), digits_value(a))})
    if len(widths) > 1:
        raise DataError(f"multiplication files {list(map(str, paths))} mix operand widths {sorted(widths)}")
    return pairs, widths.pop() if widths else 0


def exclusion_files(path: str | Path) -> list[Path]:
    """A file, or every ``.txt`` file of a folder (e.g. ``mult_4x4/``: valid + both test sets)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise FileNotFoundError(f"{path}: no .txt multiplication files to exclude")
        return files
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such multiplication file or folder")
    return [path]


def generate_mult(n: int, seed: int, exclude: str | Path, split: str = "train") -> list[Record]:
    """``n`` distinct multiplication problems with the operand width of the ``exclude`` files,
    none of whose (a, b) pairs (in either order) appears in them."""
    excluded, digits = mult_pairs(exclusion_files(exclude))
    if digits < 1:
        raise DataError(f"{exclude}: no multiplication problems to take the operand width from")
    lo, hi = 10 ** (digits - 1), 10**digits - 1  # the published sets never start an operand with 0
    if n > (hi - lo + 1) ** 2 - len(excluded):
        raise ValueError(f"cannot draw {n} distinct {digits}x{digits} problems")
    rng, seen, records = random.Random(seed), set(excluded), []
    while len(records) < n:
        a, b = rng.randint(lo, hi), rng.randint(lo, hi)
        if (a, b) in seen:
            continue
        seen.update({(a, b), (b, a)})
        line = mult_line(a, b, digits)
        question, steps, answer = mult_row(line, f"generated:{len(records) + 1}")
        records.append(Record(f"{split}-{len(records)}", question, steps, answer, "mult_synth"))
    return records

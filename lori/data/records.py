"""Problem records and the text formats shared by every stage.

One record type for every dataset: ``Record(id, question, steps, answer, source)``.
Records are stored as JSON lines (``results/<run>/data/<split>.jsonl``).

The GSM8K-Aug line format (the implicit-CoT literature's training format) is
``question||<<step>> <<step>> #### answer``; :func:`parse_aug_line` reads it, and the
quickstart generator writes it, so the same parser serves both.

Sequence layouts (text; the tokenizer turns them into ids):

- teacher / CoT-SFT:  ``{question} || {steps} #### {answer}<eos>``
- No-CoT student:     ``{question} || #### {answer}<eos>``
- latent student:     ``{question} || <bot> [K latent thoughts] <eot> #### {answer}<eos>``

The *anchor* is the position that predicts the first answer token: the last token of
``####``. Every method shares the same answer suffix so evaluation is identical.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from lori.artifacts.store import atomic_write_text
from lori.data.answers import extract

COT_SEP = "||"
ANSWER_SEP = "####"
BOT = "<bot>"
EOT = "<eot>"


class DataError(ValueError):
    """A malformed data file; the message names the file and line."""


@dataclass
class Record:
    id: str
    question: str
    steps: list[str]
    answer: str
    source: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def cot(self) -> str:
        return " ".join(self.steps)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)


def text_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of a UTF-8 text file, newline kept (``\\r\\n`` read as ``\\n``).

    Decoded line by line so that a file that is not UTF-8 (a Latin-1 export, a binary file given
    by mistake) is a :class:`DataError` naming the line, not a ``UnicodeDecodeError`` traceback.
    """
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{lineno}: not UTF-8 text (byte {raw[e.start]:#04x} at column {e.start + 1}); "
                                "re-save the file as UTF-8") from None
            yield lineno, (line[:-2] + "\n" if line.endswith("\r\n") else line)


def read_text(path: str | Path) -> str:
    """A whole UTF-8 text file; not UTF-8 is a :class:`DataError` naming the line."""
    return "".join(line for _, line in text_lines(path))


def parse_aug_line(line: str, where: str = "<string>") -> tuple[str, list[str], str]:
    """Split one GSM8K-Aug line into (question, steps, answer).

    ``where`` (e.g. ``"train.txt:12"``) is put in the error message. An equation opened by ``<<``
    and never closed is an error: it would silently lose that step and every one after it.
    """
    line = line.rstrip("\n")
    if COT_SEP not in line:
        raise DataError(f"{where}: missing '{COT_SEP}' between question and chain of thought")
    question, rest = line.split(COT_SEP, 1)
    if ANSWER_SEP not in rest:
        raise DataError(f"{where}: missing '{ANSWER_SEP}' before the answer")
    cot, answer = rest.rsplit(ANSWER_SEP, 1)
    question, answer = question.strip(), answer.strip()
    if not question:
        raise DataError(f"{where}: empty question")
    if not answer:
        raise DataError(f"{where}: empty answer after '{ANSWER_SEP}'")
    unclosed = unclosed_equation(cot)
    if unclosed is not None:
        column = len(line) - len(rest) + unclosed + 1
        raise DataError(f"{where}: '<<' at column {column} is never closed by '>>' (a cut equation?)")
    return question, split_steps(cot), answer


def unclosed_equation(cot: str) -> int | None:
    """Offset in ``cot`` of the first ``<<`` that :func:`split_steps` finds no ``>>`` for, or None."""
    pos = 0
    while (start := cot.find("<<", pos)) >= 0:
        end = cot.find(">>", start)
        if end < 0:
            return start
        pos = end + 2
    return None


def split_steps(cot: str) -> list[str]:
    """Steps of an equation-only CoT (``<<a+b=c>> <<...>>``); otherwise one step per sentence-less chunk."""
    cot = cot.strip()
    if not cot:
        return []
    if "<<" in cot:
        steps, rest = [], cot
        while "<<" in rest:
            start = rest.index("<<")
            end = rest.find(">>", start)
            if end < 0:
                break
            steps.append(rest[start : end + 2])
            rest = rest[end + 2 :]
        return steps
    return [cot]


def write_records(path: str | Path, records: Iterable[Record]) -> int:
    lines = [r.to_json() for r in records]
    atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))
    return len(lines)


REQUIRED = ("id", "question", "steps", "answer")


def jsonl_objects(path: Path) -> Iterator[tuple[int, Any]]:
    """``(line number, parsed value)`` of each non-blank line of a jsonl file; errors name file and line."""
    for lineno, line in text_lines(path):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None


def read_records(path: str | Path) -> list[Record]:
    """Read records written by :func:`write_records`; errors name file and line."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such data file (run the prepare_data stage first)")
    records, seen = [], set()
    for lineno, obj in jsonl_objects(path):
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        missing = [k for k in REQUIRED if k not in obj]
        if missing:
            raise DataError(f"{path}:{lineno}: missing field(s) {', '.join(missing)}")
        if not isinstance(obj["steps"], list):
            raise DataError(f"{path}:{lineno}: 'steps' must be a list of strings")
        rid = str(obj["id"])
        if rid in seen:
            raise DataError(f"{path}:{lineno}: duplicate id {rid!r}")
        seen.add(rid)
        records.append(
            Record(rid, str(obj["question"]), [str(s) for s in obj["steps"]], str(obj["answer"]),
                   str(obj.get("source", "")), dict(obj.get("meta", {})))
        )
    return records


# Real CoT data has a few problems without a rationale (GSM8K train: 95 of 7473 have no <<..>>
# equations); they are harmless. A file where many lack one is the wrong file (a benchmark split?).
MAX_EMPTY_COT = 0.2


def check_training_records(records: list[Record], path: str | Path, need_cot: bool = True) -> None:
    """Refuse training data that would train silently wrong: no records, a non-numeric answer, or
    (``need_cot``) more than ``MAX_EMPTY_COT`` of the records without a chain of thought. All
    offenders in one error; a few empty CoTs are only logged."""


    if not records:
        raise DataError(f"{path}: no records to train on")
    problems = []
    no_cot = [r.id for r in records if need_cot and not any(s.strip() for s in r.steps)]
    if len(no_cot) > MAX_EMPTY_COT * len(records):
        problems.append(f"{len(no_cot)} of {len(records)} record(s) have an empty chain of thought ('steps'), "
                        f"e.g. ids {no_cot[:3]}; explicit-CoT data expected")
    elif no_cot:
        logging.getLogger("lori.data.records").warning("%s: %d of %d records have an empty chain of thought (kept)",
                                               path, len(no_cot), len(records))
    bad = [(r.id, r.answer) for r in records if extract(r.answer) is None]
    if bad:
        problems.append(f"{len(bad)} record(s) with a non-numeric 'answer', e.g. {bad[:3]}")
    if problems:
        raise DataError(f"{path}: " + "; ".join(problems))


# ---------------------------------------------------------------- sequence text
def prompt_text(question: str) -> str:
    """What every model is given: the question and the CoT separator."""
    return f"{question} {COT_SEP}"


def cot_text(steps: list[str]) -> str:
    return (" " + " ".join(steps)) if steps else ""


def iter_batches(items: list, batch_size: int) -> Iterator[list]:
    for i in range(0, len(items), batch_size):
        yield items[i : i + batch_size]

"""Using a trained model: questions in, answers out, decoded exactly as ``lori evaluate`` decodes them.

::

    from lori import load_student

    student = load_student("results/quickstart/students/lori")          # or the teacher: results/quickstart/teacher
    for a in student.answer(["Ann has 6 pens . she loses 5 . how many pens does she have now ?"]):
        print(a.number, repr(a.text), a.tokens)

Any checkpoint folder a stage wrote: a folder with ``latent.json`` is a student (K latent thoughts,
then the answer; K = 0 for No-CoT and iCoT-SI; LoRi, CODI, Coconut, SIM-CoT and pause alike), one
without is the teacher (``cot_sft``: it writes its chain of thought, then ``#### answer``).

The answers come from :func:`lori.model.answer.answer_rows`, the one decoding path of the
``evaluate`` stage and of the training loop's validation: the same prompt (plain, or the chat
template, as the checkpoint's ``lori_prompt.json`` says; :func:`lori.model.sequences.prompts_ids`),
the same greedy decoding and the same default budget (96 new tokens), so a question from
``data/<bench>.jsonl`` gets here the ``prediction`` its ``eval/<method>/<bench>.jsonl`` row holds
(with the same batch size; the default is evaluate's). Questions are encoded as given: the
quickstart's data has spaces around punctuation (``she loses 5 .``), and its word-level tokenizer
reads a word it never saw as ``<unk>``. ``thoughts=True`` adds each latent thought's readings, the logit lens and the
nearest input embeddings (:func:`lori.analysis.logit_lens.decode_thoughts`, as ``lori thoughts``).

``lori answer`` (:mod:`lori.answer`) is the command line of this module.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch

from lori.analysis.logit_lens import Thought, decode_thoughts
from lori.artifacts.store import ArtifactError
from lori.config import ConfigError
from lori.data.records import DataError, Record, text_lines
from lori.model.answer import answer_rows
from lori.model.latent import LatentStudent
from lori.model.loading import load_checkpoint, resolve_device

BATCH_SIZE = 250          # the evaluate stage's defaults (EvaluateConfig): the same batches, the same budget
MAX_NEW_TOKENS = 96

Question = str | Record   # a Record's answer (when not empty) is its gold: the answer is scored


@dataclass
class Answer:
    question: str
    text: str                       # what the model wrote after the prompt: a student `` #### 6``, the teacher its CoT then ``#### 6``
    number: str | None              # the parsed answer (lori.data.answers.extract); None when the text has no number
    tokens: int                     # generated tokens, <eos> included
    latent_steps: int               # continuous thoughts before the answer (0: the teacher, No-CoT, iCoT-SI)
    latency_s: float                # seconds per question: its batch's wall time over the batch size
    id: str | None = None           # the record's id (questions given as records)
    gold: str | None = None         # the record's answer, when it has one
    correct: bool | None = None     # scored as evaluate scores it, when the gold is known
    thoughts: list[Thought] | None = None   # thoughts=True: one reading per latent thought ([] without thoughts)


class Student:
    """A loaded checkpoint, ready to answer (:func:`load_student`). ``model`` is a
    :class:`~lori.model.latent.LatentStudent` or, for the teacher, the causal LM itself."""

    def __init__(self, path: Path, method: str, model, tokenizer, device: torch.device):
        self.path, self.method, self.model, self.tokenizer, self.device = path, method, model, tokenizer, device

    @property
    def name(self) -> str:
        """The checkpoint folder's name (a sweep variant's name, e.g. ``lori_steps``; ``method`` is ``lori``)."""
        return self.path.name

    @property
    def latent_steps(self) -> int:
        return self.model.latent_steps if isinstance(self.model, LatentStudent) else 0

    def __repr__(self) -> str:
        return f"Student({str(self.path)!r}, method={self.method!r}, latent_steps={self.latent_steps}, device={str(self.device)!r})"

    def answer(self, questions: Question | Sequence[Question], batch_size: int = BATCH_SIZE,
               max_new_tokens: int = MAX_NEW_TOKENS, thoughts: bool = False, top_k: int = 5) -> list[Answer]:
        """One :class:`Answer` per question, in order (a single question gives a list of one).

        A question is a string or a :class:`~lori.data.records.Record` (``read_records(...)``);
        a record with an answer is also scored (``gold``, ``correct``). ``thoughts``: each latent
        thought's ``top_k`` logit-lens tokens and nearest input embeddings (an empty list for the
        teacher and for students without thoughts)."""
        if batch_size < 1 or max_new_tokens < 1 or top_k < 1:
            raise ConfigError(f"batch_size, max_new_tokens and top_k must be >= 1, got {batch_size}, "
                              f"{max_new_tokens}, {top_k}")
        items = [questions] if isinstance(questions, (str, Record)) else list(questions)
        records = []
        for i, q in enumerate(items):
            if not isinstance(q, (str, Record)):
                raise TypeError(f"question {i}: expected a string or a Record, got {type(q).__name__}")
            text = q if isinstance(q, str) else q.question
            if not text.strip():
                raise DataError(f"question {i} is empty")
            records.append(q if isinstance(q, Record) else Record(f"q{i}", q, [], ""))
        if not records:
            return []
        self.model.eval()
        # the evaluate stage's own decoding and scoring: one answer per record, in order
        rows = answer_rows(self.model, self.tokenizer, records, batch_size, max_new_tokens, self.device)
        out = []
        for q, r, row in zip(items, records, rows):
            scored = isinstance(q, Record) and q.answer != ""
            out.append(Answer(r.question, row["prediction"], row["parsed"], row["generated_tokens"],
                              row["latent_steps"], row["latency_s"], r.id if isinstance(q, Record) else None,
                              r.answer if scored else None, row["correct"] if scored else None,
                              self.thoughts(r.question, top_k) if thoughts else None))
        return out

    def thoughts(self, question: str, top_k: int = 5) -> list[Thought]:
        """Each latent thought for ``question`` read by the logit lens and by nearest input embeddings
        (:func:`lori.analysis.logit_lens.decode_thoughts`); [] for the teacher and K = 0 students."""
        if self.latent_steps == 0:
            return []
        self.model.eval()
        return decode_thoughts(self.model, self.tokenizer, question, top_k)


def _not_a_checkpoint(path: Path) -> ArtifactError:
    hint = "give a folder a stage wrote: results/<run>/students/<name> or results/<run>/teacher"
    if (path / "students").is_dir():                   # a run folder: name what it holds
        names = sorted(p.name for p in (path / "students").iterdir() if (p / "config.json").exists())
        hint = (f"this looks like a run: its students are {path / 'students'}/<name> ({', '.join(names) or 'none yet'})"
                + (f", its teacher {path / 'teacher'}" if (path / "teacher" / "config.json").exists() else ""))
    return ArtifactError(f"{path}: not a checkpoint folder (no config.json); {hint}")


def method_of(path: str | Path) -> str:
    """``cot_sft`` for the teacher (no ``latent.json``), else the student's method from its
    ``train_config.json`` (``student`` when the file is missing)."""
    path = Path(path)
    if not (path / "latent.json").exists():
        return "cot_sft"
    try:
        return str(json.loads((path / "train_config.json").read_text()).get("method", "student"))
    except (OSError, ValueError, AttributeError):
        return "student"


def load_student(path: str | Path, device: str = "auto", threads: int | None = None) -> Student:
    """Load a student or teacher checkpoint folder onto ``device`` (``auto``: CUDA when there is one;
    ``cpu``, ``cuda``, ``cuda:1``) in eval mode; ``threads`` caps torch's CPU threads (a process-wide setting)."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: no such checkpoint folder")
    if not path.is_dir() or not (path / "config.json").exists():
        raise _not_a_checkpoint(path)
    try:
        dev = resolve_device(device)
    except RuntimeError as e:            # no CUDA, or not a device name
        raise ConfigError(f"device {device!r}: {e}") from None
    if threads is not None:
        torch.set_num_threads(max(1, threads))
    method = method_of(path)
    model, tokenizer = LatentStudent.load(path) if method != "cot_sft" else load_checkpoint(path)
    model.to(dev).eval()
    return Student(path, method, model, tokenizer, dev)


# ---------------------------------------------------------------- questions from files
def parse_questions(lines: Iterable[tuple[int, str]], where: str, jsonl: bool | None = None) -> list[Question]:
    """Questions from numbered lines: plain text (one question a line, blank lines skipped), or
    JSON lines with a ``question`` field (records: ``id`` and ``answer`` are kept, the answer is
    then scored). ``jsonl`` None: JSON lines when the first non-blank line starts with ``{``."""
    lines = [(n, line) for n, line in lines if line.strip()]
    if jsonl is None:
        jsonl = bool(lines) and lines[0][1].lstrip().startswith("{")
    if not jsonl:
        return [line.strip() for _, line in lines]
    out: list[Question] = []
    for n, line in lines:
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}:{n}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("question"), str) or not obj["question"].strip():
            raise DataError(f"{where}:{n}: expected a JSON object with a non-empty 'question' string")
        out.append(Record(str(obj.get("id", f"{Path(where).name}:{n}")), obj["question"],
                          [str(s) for s in obj.get("steps", [])], str(obj.get("answer", "")), str(obj.get("source", ""))))
    return out


def read_questions(path: str | Path) -> list[Question]:
    """:func:`parse_questions` of a file: a ``.jsonl`` file (or any file whose first line is a JSON
    object) holds records, anything else one question per line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such questions file")
    jsonl = True if path.suffix == ".jsonl" else None
    return parse_questions(text_lines(path), str(path), jsonl)


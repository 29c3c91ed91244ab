"""``lori answer``: answer questions with a trained student (or the teacher), decoded as ``lori evaluate`` decodes.

Give any checkpoint folder a run wrote: a student (``<run>/students/<name>``: LoRi, No-CoT, CODI,
Coconut, SIM-CoT, iCoT-SI, pause; it thinks its K latent thoughts, then answers) or the teacher
(``<run>/teacher``: it writes its chain of thought, then the answer). The prompt, the greedy
decoding and the default budget are the evaluate stage's, so a benchmark question gets the
answer its ``eval/<method>/<bench>.jsonl`` row holds. Type questions as the data writes them (the
quickstart's: spaces around punctuation, ``she loses 5 .``).

Usage::

    lori answer --model results/quickstart/students/lori "Ann has 6 pens . she loses 5 . how many pens does she have now ?"
    lori answer --model results/quickstart/teacher "Ann has 6 pens . she loses 5 . how many pens does she have now ?"
    lori answer --model results/quickstart/students/lori --file questions.txt          # one question per line
    lori answer --model results/quickstart/students/lori --file results/quickstart/data/test.jsonl --json
    cat questions.txt | lori answer --model results/quickstart/students/lori -         # from stdin
    lori answer --model results/quickstart/students/lori_steps --thoughts "..."         # each thought's logit lens

A records file (jsonl with ``question`` fields) that also has ``answer`` fields is scored: each
answer says gold and correct. ``--json`` prints one JSON object per question (question, text,
number, tokens, latent_steps, latency_s, id, gold, correct, thoughts). In Python:
``from lori import load_student`` (:mod:`lori.analysis.student`).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Sequence

from lori.cli import USER_ERRORS
from lori.data.records import DataError


def _ranked(items) -> str:
    return " ".join(f"{token!r}:{score:.2f}" for token, score in items)


def format_answer(a) -> str:
    """The text view of one :class:`~lori.analysis.student.Answer`: the question, the parsed answer
    (with the gold when known), what the model wrote, and each thought's readings when asked."""
    number = a.number if a.number is not None else "(no number)"
    if a.gold is not None:
        number += f"   (gold {a.gold}: {'correct' if a.correct else 'wrong'})"
    cost = f"{a.tokens} tokens" + (f" after {a.latent_steps} latent thoughts" if a.latent_steps else "")
    lines = [a.question, f"  answer: {number}", f"  wrote:  {a.text.strip()!r}  ({cost})"]
    if a.thoughts:
        lines.append("  thought | logit lens, last layer (token:prob) | nearest input embeddings (token:cos)")
        lines += [f"  {t.step:>7} | {_ranked(t.lens)} | {_ranked(t.embedding)}" for t in a.thoughts]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="lori answer", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("questions", nargs="*", metavar="QUESTION", help="questions to answer; - reads them from stdin")
    ap.add_argument("--model", required=True, help="a checkpoint folder: <run>/students/<name> or <run>/teacher")
    ap.add_argument("--file", action="append", default=[], metavar="F",
                    help="questions file, one question per line, or a records jsonl with 'question' fields; - is stdin "
                         "(repeatable)")
    ap.add_argument("--thoughts", action="store_true", help="also read each latent thought (logit lens, nearest embeddings)")
    ap.add_argument("--top-k", type=int, default=5, help="tokens shown per thought (default: 5)")
    ap.add_argument("--json", action="store_true", help="one JSON object per question instead of text")
    ap.add_argument("--batch-size", type=int, default=250, help="questions per decoding batch (default: 250, evaluate's)")
    ap.add_argument("--max-new-tokens", type=int, default=96, help="decoding budget per question (default: 96, evaluate's)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    args = ap.parse_args(argv)
    # torch and transformers only after parsing: `lori answer --help` stays instant
    from transformers.utils import logging as hf_logging

    from lori.analysis.student import load_student, parse_questions, read_questions

    hf_logging.disable_progress_bar()     # no "Loading weights" bar before the answers
    try:
        questions: list = []
        sources = [*args.file, *(["-"] if "-" in args.questions else [])]
        questions += [q for q in args.questions if q != "-"]
        for source in dict.fromkeys(sources):          # stdin is read once
            if source == "-":
                questions += parse_questions(enumerate(sys.stdin.read().splitlines(), 1), "<stdin>")
            else:
                questions += read_questions(source)
        if not questions:
            raise DataError("no questions: give them as arguments, with --file F, or - to read stdin")
        student = load_student(args.model, args.device, args.threads)
        answers = student.answer(questions, args.batch_size, args.max_new_tokens, args.thoughts, args.top_k)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.thoughts and student.latent_steps == 0:
        print(f"note: {args.model} ({student.method}) has no latent thoughts to read", file=sys.stderr)
    if args.json:
        for a in answers:
            print(json.dumps(asdict(a), ensure_ascii=False))
    else:
        print("\n\n".join(format_answer(a) for a in answers))


if __name__ == "__main__":
    main()

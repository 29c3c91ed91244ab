"""Ask a trained student (or the teacher) questions from Python: ``lori.load_student``.

    python examples/answer_questions.py                                   # the quickstart's LoRi student
    python examples/answer_questions.py results/quickstart/students/no_cot "Zoe has 10 shells . she loses 9 . how many shells does she have now ?"
    python examples/answer_questions.py results/quickstart/teacher        # the teacher writes its CoT first

The answers are decoded exactly as ``lori evaluate`` decodes (same prompt, greedy, 96 new tokens),
so a benchmark question gets the prediction its ``eval/<method>/<bench>.jsonl`` row holds; the
last part checks that on a few test problems. The command line does the same: ``lori answer``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

RUN = Path("results/quickstart")
QUESTIONS = ["Ann has 6 pens . she loses 5 . how many pens does she have now ?",
             "Zoe has 10 shells . she gets 5 more . she loses 9 . how many shells does she have now ?"]


def main() -> None:
    model = Path(sys.argv[1]) if len(sys.argv) > 1 else RUN / "students" / "lori"
    questions = sys.argv[2:] or QUESTIONS
    if not (model / "config.json").exists():
        print(f"{model} is not a trained checkpoint yet. Make the quickstart run first (~15-25 min on 2 CPU cores):\n"
              "    snakemake --cores 2\n"
              "then run this again, or give any checkpoint folder: python examples/answer_questions.py "
              "results/<run>/students/<name> [QUESTION ...]")
        return

    from lori import load_student           # imports torch now, not at `import lori`
    from lori.data.records import read_records

    # 1. load: a student folder (latent.json inside) or the teacher's; CUDA when there is one
    student = load_student(model, device="auto", threads=2)
    print(student)

    # 2. answer a batch of questions; thoughts=True reads each latent thought with the logit lens
    for a in student.answer(questions, thoughts=True):
        print(f"\n{a.question}\n  answer {a.number}   wrote {a.text.strip()!r}  ({a.tokens} tokens, "
              f"{a.latent_steps} latent thoughts, {1000 * a.latency_s:.1f} ms)")
        for t in a.thoughts:                 # empty for the teacher and for students without thoughts
            print(f"  thought {t.step}: " + " ".join(f"{tok!r}:{p:.2f}" for tok, p in t.lens[:3]))

    # 3. records are scored, and the predictions are the evaluation's own
    test = RUN / "data" / "test.jsonl"
    if test.exists():
        answers = student.answer(read_records(test)[:20])
        print(f"\n{sum(a.correct for a in answers)}/{len(answers)} of the first test problems correct")
        evaluated = RUN / "eval" / ("cot_sft" if student.method == "cot_sft" else model.name) / "test.jsonl"
        if model.parent in (RUN, RUN / "students") and evaluated.exists():
            rows = [json.loads(line) for line in evaluated.read_text().splitlines()][:len(answers)]
            same = sum(a.text == r["prediction"] for a, r in zip(answers, rows))
            print(f"{same}/{len(rows)} answers identical to the evaluation's ({evaluated})")

if __name__ == "__main__":
    main()

r"""Evaluate a lori teacher or student with EleutherAI's lm-evaluation-harness (``pip install -e ".[harness]"``).

Registers the harness model ``lori`` (:class:`LoriLM`): it loads a checkpoint the way ``evaluate``
does (a student directory, with ``latent.json``, as a latent student; any other as the teacher)
and answers each ``generate_until`` request through the evaluate stage's own decoding
(:func:`lori.model.answer.answer_rows`): a student thinks its K latent thoughts, then answers; the
teacher writes its chain of thought. lori models build their own prompt around a bare question, so
the request's context is reduced to one (:func:`question_of`): the harness's own ``gsm8k`` task
(``Question: ...\nAnswer:``, few-shot examples included) gives its last question; a task whose
``doc_to_text`` is the bare question gives it as is. Few-shot examples are therefore not shown to
the model. The reply is cut at the task's ``until`` strings, and the task's own answer extraction
reads it (a lori model answers ``... #### 42``, which GSM8K's ``strict-match`` filter expects).
Log-likelihood requests (multiple-choice tasks, perplexity) raise ``NotImplementedError``: a latent
student's answer is conditioned on thoughts it generates, so the score of a fixed continuation is
not what it would answer.

Standalone::

    python -m lori.harness --model results/quickstart/students/lori --tasks my_gsm8k \
        --include-path path/to/task_yamls --limit 100 --device cpu --out harness.json
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Sequence

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError:  # an optional integration: say how to get it
    raise ImportError("lori.harness needs lm-evaluation-harness: pip install -e '.[harness]'") from None

from lori.data.records import Record
from lori.model.answer import answer_rows
from lori.model.latent import LatentStudent
from lori.model.loading import load_checkpoint, setup_runtime

log = logging.getLogger("lori.harness")


def load_model(path: str | Path):
    """``(model, tokenizer)`` of a lori checkpoint: a latent student if it has ``latent.json``, else the teacher."""
    path = Path(path)
    return LatentStudent.load(path) if (path / "latent.json").exists() else load_checkpoint(path)


def question_of(context: str) -> str:
    """The question a harness request asks: after the context's last ``Question:`` and before its
    ``Answer:`` (the harness's GSM8K prompt, after any few-shot examples), else the whole context."""
    head, sep, last = context.rpartition("Question:")
    if not sep:
        return context.strip()
    return last.rsplit("Answer:", 1)[0].strip() if "Answer:" in last else last.strip()


def cut(text: str, until: Sequence[str]) -> str:
    """``text`` up to the first of the ``until`` strings (the harness's stop sequences)."""
    for stop in until:
        if stop:
            text = text.split(stop, 1)[0]
    return text


@register_model("lori")
class LoriLM(LM):
    """A lori checkpoint as an lm-evaluation-harness model (``--model lori --model_args pretrained=DIR``)."""

    def __init__(self, pretrained: str, batch_size: int | str = 16, max_new_tokens: int = 128, device: str = "cpu",
                 threads: int = 1, seed: int = 0, **_):
        super().__init__()
        self._device = setup_runtime(int(seed), int(threads), device)
        self.model, self.tokenizer = load_model(pretrained)
        self.model.to(self._device).eval()
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 16
        self.max_new_tokens = int(max_new_tokens)
        kind = f"latent student, K={self.model.latent_steps}" if isinstance(self.model, LatentStudent) else "teacher"
        log.info("lori harness model %s (%s) on %s", pretrained, kind, self._device)

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        replies: list[str | None] = [None] * len(requests)
        groups: dict[tuple[int, tuple[str, ...]], list[int]] = {}   # one decoding budget and stop list each
        for i, (_, gen) in enumerate(r.args for r in requests):
            until = gen.get("until") or []
            until = (until,) if isinstance(until, str) else tuple(until)
            groups.setdefault((int(gen.get("max_gen_toks", self.max_new_tokens)), until), []).append(i)
        for (budget, until), members in groups.items():
            records = [Record(id=str(i), question=question_of(requests[i].args[0]), steps=[], answer="") for i in members]
            rows = answer_rows(self.model, self.tokenizer, records, self.batch_size, budget, self._device,
                               desc=None if disable_tqdm else "lori harness")
            for i, row in zip(members, rows):
                replies[i] = cut(row["prediction"], until)
        return replies

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError(
            "lori models answer by generating (a latent student after its K thoughts); loglikelihood "
            "requests (multiple-choice or perplexity tasks) are not supported: use generate_until tasks such as GSM8K")

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        self.loglikelihood(requests)


def evaluate(model: str, tasks: list[str], include_path: str | None = None, limit: int | None = None,
             device: str = "cpu", batch_size: int = 16, threads: int = 1) -> dict:
    """Run ``tasks`` on the lori checkpoint ``model``; returns lm_eval's results dict (with samples)."""
    from lm_eval import evaluator
    from lm_eval.tasks import TaskManager

    lm = LoriLM(model, batch_size=batch_size, device=device, threads=threads)
    return evaluator.simple_evaluate(model=lm, tasks=tasks, num_fewshot=0, limit=limit, log_samples=True,
                                     task_manager=TaskManager(include_path=include_path), bootstrap_iters=0)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a lori checkpoint directory (teacher/ or students/<method>/)")
    ap.add_argument("--tasks", required=True, help="comma-separated harness task names")
    ap.add_argument("--include-path", help="(optional) a folder of extra task YAMLs (e.g. a local GSM8K jsonl)")
    ap.add_argument("--limit", type=int, help="(optional) problems per task")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--out", help="(optional) write the results (without per-sample rows) as JSON here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    results = evaluate(args.model, args.tasks.split(","), args.include_path, args.limit, args.device,
                       threads=args.threads)
    from lm_eval.utils import make_table

    print(make_table(results))
    if args.out:
        Path(args.out).write_text(json.dumps({k: v for k, v in results.items() if k != "samples"}, indent=2,
                                             default=str) + "\n")


if __name__ == "__main__":
    main()

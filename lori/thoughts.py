"""``lori thoughts``: what a latent student "thinks", and what the teacher wrote for the same problem.

A latent student (``lori``, ``codi``) answers after K continuous thoughts that are never
tokens. Two cheap readings of each thought:

- **logit lens**: the thought's hidden state through the model's final norm and ``lm_head``
  (at the last layer this is exactly the model's own next-token distribution at that
  position; with ``--layers`` every layer is read the same way);
- **nearest embeddings**: the vector actually fed back as the next input (the projection's
  output), compared by cosine with every input-embedding row.

With them: the student's own answer and the teacher's CoT for the same problem (its generated
CoT from ``eval/cot_sft/<bench>.jsonl``, else its rationale in ``teacher_cot/*.jsonl``, else the
dataset's gold steps), printed whole before the thoughts and not lined up with them: the method
pairs no thought i with CoT step i. The readings are
:mod:`lori.analysis.logit_lens`; this module is the command line.

Usage::

    lori thoughts --run quickstart --method lori --example test-0
    lori thoughts --run results/quickstart --method lori --example test-3 --top-k 8 --layers
    lori thoughts --run quickstart --method lori --example test-0 --json    # machine-readable
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Sequence

from lori.analysis.runs import run_dir
from lori.cli import USER_ERRORS


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="lori thoughts", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="run name under --results (e.g. quickstart) or a path to a run directory")
    ap.add_argument("--method", default="lori", help="latent student under <run>/students/ (default: lori)")
    ap.add_argument("--example", required=True, help="example id from <run>/data/<split>.jsonl, e.g. test-0")
    ap.add_argument("--bench", help="split to look the id up in (default: search every split)")
    ap.add_argument("--results", default="results", help="folder holding the runs (default: results)")
    ap.add_argument("--top-k", type=int, default=5, help="tokens shown per thought (default: 5)")
    ap.add_argument("--layers", action="store_true", help="also apply the logit lens at every layer")
    ap.add_argument("--json", action="store_true", help="print the trace as JSON instead of a table")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    args = ap.parse_args(argv)
    # torch and transformers only after parsing: `lori thoughts --help` stays instant
    from transformers.utils import logging as hf_logging

    from lori.analysis.logit_lens import format_trace, trace_run

    hf_logging.disable_progress_bar()     # a one-example command: no "Loading weights" bar
    try:
        t = trace_run(run_dir(args.run, args.results), args.method, args.example, args.bench, args.top_k, args.layers,
                      args.threads)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(json.dumps(asdict(t), indent=1, ensure_ascii=False) if args.json else format_trace(t))


if __name__ == "__main__":
    main()

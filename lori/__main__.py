"""``lori <command> [args]``: the console entry point (``lori <command> --help`` explains each).

Looking at results:
  inspect PATH              what is inside any artifact (Zarr store, checkpoint, json/jsonl)
  report RUN                rebuild results/RUN/report/ (tables, figures, thoughts; one self-contained HTML)
  compare RUN_A RUN_B       accuracy / tokens / latency differences between two runs, per method and benchmark
  thoughts --run RUN --method lori --example ID
                            decode a latent student's thoughts to tokens, beside the teacher's CoT
  probe --run RUN           where the teacher's trajectory holds each CoT step's result (linear probes)

Using a trained model:
  answer --model DIR "QUESTION"
                            answer questions with a student or the teacher, decoded as evaluate decodes

Pipeline stages (the same as ``python -m lori.<stage> ...``; Snakemake runs these for you):
  prepare_data, convert_model, teacher_sft, teacher_cot, dump_hidden, factorize, targets, distill, evaluate, report

  lori --version            the installed lori version
"""
from __future__ import annotations

import importlib
import sys
from typing import Sequence

# command -> "module" with a `main(argv)`, or "module:function"; imported only when chosen (stages pull in torch)
COMMANDS = {
    "inspect": "lori.inspect",
    "thoughts": "lori.thoughts",
    "compare": "lori.compare",
    "probe": "lori.probe",
    "answer": "lori.answer",
    **{stage: f"lori.{stage}" for stage in ("prepare_data", "convert_model", "teacher_sft", "teacher_cot", "dump_hidden", "factorize",
                                             "targets", "distill", "evaluate")},
    "report": "lori.report:cli",         # `lori report RUN`; with flags only, the stage CLI
}
USAGE = "usage: lori [--version] {" + ",".join(COMMANDS) + "} [args]\n\n" + __doc__.strip()


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    if argv[0] == "--version":
        import lori

        print(f"lori {lori.__version__}")
        return
    if argv[0] not in COMMANDS:
        print(f"lori: unknown command {argv[0]!r}\n{USAGE}", file=sys.stderr)
        raise SystemExit(2)
    module, _, function = COMMANDS[argv[0]].partition(":")
    getattr(importlib.import_module(module), function or "main")(argv[1:])


if __name__ == "__main__":
    main()

"""``lori <command> [args]``: the console entry point.

``lori inspect PATH`` looks inside an artifact; ``lori <stage> ...`` runs a pipeline stage
exactly like ``python -m lori.<stage> ...``.
"""
from __future__ import annotations

import importlib
import sys
from typing import Sequence

# command -> module with a `main(argv)`; imported only when chosen (stages pull in torch)
COMMANDS = {
    "inspect": "lori.inspect",
    **{stage: f"lori.{stage}" for stage in ("prepare_data", "teacher_sft", "teacher_cot", "dump_hidden", "factorize",
                                             "targets", "distill", "evaluate", "report")},
}
USAGE = "usage: lori {" + ",".join(COMMANDS) + "} [args]\n\n" + __doc__.strip()


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    if argv[0] not in COMMANDS:
        print(f"lori: unknown command {argv[0]!r}\n{USAGE}", file=sys.stderr)
        raise SystemExit(2)
    importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    main()

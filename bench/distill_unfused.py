"""``lori.distill`` with the latent chain through the model's own decoder layers (the fused step of
:mod:`lori.model.fused_step` switched off): the baseline of end-to-end checks of the fused step.

    python bench/distill_unfused.py <the arguments of python -m lori.distill>

bench/README.md, "The fused step under bf16 autocast", trains the quickstart's LoRi student both
ways under ``--precision bf16``.
"""
from __future__ import annotations

import sys

from benchlib import unfused

from lori import distill


def main() -> None:
    with unfused():
        distill.main(sys.argv[1:])


if __name__ == "__main__":
    main()

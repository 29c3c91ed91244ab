"""``lori probe``: where in the teacher's trajectory is each CoT step's result linearly readable?

For step j of every training example, the teacher's state at the step's ``=`` token, at its result
token and at its last token, from the low-rank core (``--store core``: ``targets/train.zarr``,
every training example) or the full dumped states (``--store hidden``: ``hidden/calib.zarr``, the
calibration examples; ``--layer`` picks one). A logistic-regression probe per (step, place) is
fitted on 70% and scored on 30% (:mod:`lori.analysis.step_probe`); the majority-class rate is the
floor. It says what LoRi's step anchors can transmit (``step_summary: mean | last | result``).

Usage::

    lori probe --run quickstart-wrap                     # the core, up to 4,000 examples
    lori probe --run quickstart-wrap --store hidden --layer 4 --json
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from lori.analysis.runs import run_dir
from lori.cli import USER_ERRORS


def probe_run(run, store: str = "core", examples: int = 4000, layer: int | None = None) -> list[dict]:
    """One row per (step, place): ``{step, place, n, accuracy, majority}`` (accuracies in [0, 1])."""
    import numpy as np
    import zarr
    from transformers import AutoTokenizer

    from lori.analysis.step_probe import PLACES, linear_probe, probe_sets
    from lori.artifacts.store import ArtifactError
    from lori.data.records import read_records
    from lori.model.sequences import step_ids

    path = run / ("targets/train.zarr" if store == "core" else "hidden/calib.zarr")
    if not path.exists():
        raise ArtifactError(f"{path}: no such store (run the pipeline's {'targets' if store == 'core' else 'dump_hidden'} "
                            "stage first)")
    group = zarr.open_group(str(path), mode="r")
    ids = [str(i) for i in group["example_id"][:examples]]
    offsets = group["offsets"][: len(ids) + 1]
    states = group["core" if store == "core" else "states"][: int(offsets[-1])]
    if layer is not None:
        if store == "core":
            raise ArtifactError("--layer reads one dumped layer: it needs --store hidden")
        names = [int(v) for v in group["layer"][:]]
        if layer not in names:
            raise ArtifactError(f"--layer {layer}: the store holds layers {names}")
        states = states[:, names.index(layer)]
    records = {r.id: r for r in read_records(run / "teacher_cot" / "train.jsonl")}
    missing = [i for i in ids if i not in records]
    if missing:
        raise ArtifactError(f"{path}: examples {missing[:3]} are not in {run / 'teacher_cot' / 'train.jsonl'}")
    tokenizer = AutoTokenizer.from_pretrained(str(run / "teacher"))
    steps = [records[i].steps for i in ids]
    tokens = [[tokenizer.convert_ids_to_tokens(s) for s in step_ids(tokenizer, st)] for st in steps]
    sets = probe_sets(np.asarray(states), np.asarray(offsets), tokens, steps)
    rows = []
    for (step, place), ps in sorted(sets.items(), key=lambda kv: (kv[0][0], PLACES.index(kv[0][1]))):
        if len(ps.labels) < 50:            # too few to split and score
            continue
        accuracy, majority = linear_probe(ps.features, ps.labels)
        rows.append({"step": step, "place": place, "n": len(ps.labels), "accuracy": accuracy, "majority": majority})
    return rows


def format_rows(rows: list[dict]) -> str:
    lines = ["step  place    n      probe %  majority %"]
    lines += [f"{r['step']:>4}  {r['place']:<7} {r['n']:>6}  {100 * r['accuracy']:>7.1f}  {100 * r['majority']:>10.1f}"
              for r in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="lori probe", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="run name under --results (e.g. quickstart) or a path to a run directory")
    ap.add_argument("--results", default="results", help="folder holding the runs (default: results)")
    ap.add_argument("--store", choices=("core", "hidden"), default="core",
                    help="core: targets/train.zarr (default); hidden: hidden/calib.zarr (full states)")
    ap.add_argument("--examples", type=int, default=4000, help="first N examples of the store (default: 4000)")
    ap.add_argument("--layer", type=int, help="--store hidden: one dumped layer (hidden_states index); default all")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = ap.parse_args(argv)
    try:
        rows = probe_run(run_dir(args.run, args.results), args.store, args.examples, args.layer)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(json.dumps(rows, indent=1) if args.json else format_rows(rows))


if __name__ == "__main__":
    main()

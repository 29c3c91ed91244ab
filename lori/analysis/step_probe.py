"""Which teacher states hold each CoT step's result? Linear probes on the trajectory.

A step ``<<2-10=3>>`` has three natural places for its result ``3``: the ``=`` token (the state
that predicts it), the result token itself, and the step's last token ``>>`` (what a "last token"
step summary reads). For every training example of a run this module takes the teacher's state at
those places in step j — the low-rank core (``targets/train.zarr``) or the full dumped states
(``hidden/calib.zarr``) — and fits a multinomial logistic regression from the state to the step's
result on 70% of the examples, scoring the other 30%. High held-out accuracy means the result is
linearly readable there; the majority-class rate is printed beside it as the floor.

Used to choose what LoRi's step anchors match (``step_summary``): the command is ``lori probe``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lori.model.sequences import equals_token

PLACES = ("eq", "result", "last")


def step_places(tokens: list[str]) -> dict[str, int] | None:
    """Token offsets within one step of its last ``=`` (``eq``), the token after it (``result``)
    and its last token (``last``); None for a step without ``=``."""
    eq = equals_token(tokens)
    if eq is None:
        return None
    return {"eq": eq, "result": min(eq + 1, len(tokens) - 1), "last": len(tokens) - 1}


def step_result(step: str) -> str | None:
    """The text after a step's last ``=`` up to ``>>`` (``<<2-10=3>>`` -> ``3``); None without ``=``."""
    if "=" not in step:
        return None
    return step.rsplit("=", 1)[1].split(">>", 1)[0].strip() or None


@dataclass
class ProbeSet:
    features: np.ndarray     # [n, f] one state per (example, step)
    labels: list[str]        # the step's result


def probe_sets(states: np.ndarray, offsets: np.ndarray, steps_tokens: list[list[list[str]]],
               steps_text: list[list[str]]) -> dict[tuple[int, str], ProbeSet]:
    """``(step number, place) -> ProbeSet`` from a ragged trajectory store.

    states [tokens, ...] with example i at ``offsets[i]:offsets[i+1]`` (its CoT tokens, steps in
    order); ``steps_tokens[i]`` each step's tokens as the teacher's tokenizer splits them and
    ``steps_text[i]`` the steps. An example whose steps do not add up to its trajectory (a subword
    tokenizer merging across a boundary) is skipped rather than misaligned."""
    out: dict[tuple[int, str], tuple[list, list]] = {}
    for i, (tokens, texts) in enumerate(zip(steps_tokens, steps_text)):
        lo, hi = int(offsets[i]), int(offsets[i + 1])
        if sum(map(len, tokens)) != hi - lo:
            continue
        start = lo
        for j, (toks, text) in enumerate(zip(tokens, texts)):
            places, label = step_places(toks), step_result(text)
            if places is not None and label is not None:
                for place, k in places.items():
                    feats, labels = out.setdefault((j + 1, place), ([], []))
                    feats.append(np.asarray(states[start + k], np.float32).reshape(-1))
                    labels.append(label)
            start += len(toks)
    return {key: ProbeSet(np.stack(f), y) for key, (f, y) in out.items()}


def linear_probe(features: np.ndarray, labels: list[str], train_frac: float = 0.7, seed: int = 0,
                 weight_decay: float = 1e-3, iters: int = 200) -> tuple[float, float]:
    """(held-out accuracy, majority-class rate on the held-out part) of a multinomial logistic
    regression on standardised features (full-batch L-BFGS, fixed seed)."""
    classes = sorted(set(labels))
    y = torch.tensor([classes.index(v) for v in labels])
    x = torch.from_numpy(np.asarray(features, np.float64))
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_train = int(train_frac * len(y))
    tr, te = perm[:n_train], perm[n_train:]
    if len(te) == 0 or n_train == 0:
        raise ValueError(f"{len(y)} examples are too few to split {train_frac:.0%} / {1 - train_frac:.0%}")
    mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-6
    x = (x - mu) / sd
    w = torch.zeros(x.shape[1], len(classes), dtype=x.dtype, requires_grad=True)
    b = torch.zeros(len(classes), dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x[tr] @ w + b, y[tr]) + weight_decay * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        accuracy = ((x[te] @ w + b).argmax(1) == y[te]).double().mean().item()
    majority = np.bincount(y[tr].numpy(), minlength=len(classes)).argmax()
    return accuracy, (y[te] == int(majority)).double().mean().item()

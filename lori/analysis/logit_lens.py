"""Reading a latent student's thoughts: the logit lens and the nearest input embeddings.

A latent student (``lori``, ``codi``, ``coconut``) answers after K continuous thoughts that are
never tokens. Two cheap readings of each thought:

- **logit lens**: the thought's hidden state through the model's final norm and ``lm_head``
  (at the last layer this is exactly the model's own next-token distribution at that
  position; ``all_layers`` reads every layer the same way);
- **nearest embeddings**: the vector actually fed back as the next input (the projection's
  output), compared by cosine with every input-embedding row.

A :class:`ThoughtTrace` holds them with the student's answer and the teacher's CoT for the same
problem; :func:`format_trace` (text) and :func:`trace_html` (the report) render it: the CoT whole,
then the thoughts, never thought i beside CoT step i (the method has no such pairing). Used by
``lori thoughts`` and by the report's "Latent thoughts" section.
"""
from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch.nn import functional as F

from lori.analysis.runs import find_record, teacher_cot_files, teacher_cots
from lori.artifacts.store import ArtifactError
from lori.data.answers import is_correct
from lori.data.records import Record, read_records
from lori.model.latent import LatentStudent
from lori.model.sequences import student_batch, student_prompt

Ranked = list[tuple[str, float]]    # (token text, probability or cosine), best first


@dataclass
class Thought:
    step: int                                   # 1..K
    lens: Ranked                                # logit lens at the last layer: top-k (token, probability)
    embedding: Ranked                           # fed-in vector's nearest input embeddings: (token, cosine)
    layers: dict[int, Ranked] = field(default_factory=dict)   # hidden_states index -> logit lens top-k


@dataclass
class ThoughtTrace:
    example_id: str
    question: str
    gold: str
    prediction: str
    correct: bool
    thoughts: list[Thought]
    teacher_cot: str | None                     # what the teacher wrote for this problem (or the gold steps)
    teacher_source: str                         # where teacher_cot came from
    gold_steps: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- decoding
def final_norm(model) -> torch.nn.Module | None:
    """The norm applied before ``lm_head`` (LLaMA/Qwen2 ``model.norm``, GPT-2 ``transformer.ln_f``)."""
    base = model.base_model
    for name in ("norm", "ln_f", "final_layernorm"):
        if isinstance(getattr(base, name, None), torch.nn.Module):
            return getattr(base, name)
    return None


def logit_lens(model, hidden: torch.Tensor, after_norm: bool) -> torch.Tensor:
    """Vocabulary logits [..., V] of hidden states [..., d]; ``after_norm`` skips the final norm.

    In transformers 5 the last entry of ``hidden_states`` is already after the final norm, the
    others are not, so the caller says which one it passes.
    """
    norm = final_norm(model)
    h = hidden if after_norm or norm is None else norm(hidden)
    return model.get_output_embeddings()(h)


def _tokens(tokenizer, ids: Sequence[int]) -> list[str]:
    # decode one id at a time: word pieces keep their leading-space marker visible as text
    return [tokenizer.decode([i]) or repr(tokenizer.convert_ids_to_tokens(i)) for i in ids]


def top_tokens(tokenizer, scores: torch.Tensor, k: int) -> Ranked:
    """The k best (token, score) of a [V] score vector."""
    values, ids = scores.float().topk(min(k, scores.shape[-1]))
    return list(zip(_tokens(tokenizer, ids.tolist()), [round(float(v), 4) for v in values]))


@torch.no_grad()
def decode_thoughts(student, tokenizer, question: str, top_k: int = 5, all_layers: bool = False) -> list[Thought]:
    """Each of the student's K thoughts for ``question``, read by the logit lens and by nearest embeddings."""
    if student.latent_steps == 0:
        raise ArtifactError("this student has no latent thoughts (latent_steps = 0, e.g. no_cot)")
    model = student.model
    device = next(model.parameters()).device
    ids = torch.tensor([student_prompt(tokenizer, question, student.latent_steps)], device=device)
    n_layers = model.config.num_hidden_layers
    layers = list(range(n_layers + 1)) if all_layers else [n_layers]    # hidden_states indices (0 = embeddings)
    fed: list[torch.Tensor] = []
    # the fed-back inputs (the projection's outputs, or the raw hidden states for Coconut), recorded
    # by the chain itself without re-running it
    *_, states = student._think(ids, torch.ones_like(ids), layers, record_inputs=fed)  # states [1, K, L, d]
    emb = F.normalize(model.get_input_embeddings().weight.float(), dim=-1)            # [V, d]
    thoughts = []
    for k in range(student.latent_steps):
        per_layer = {l: top_tokens(tokenizer, logit_lens(model, states[0, k, j], l == n_layers).softmax(-1), top_k)
                     for j, l in enumerate(layers)}
        cosine = emb @ F.normalize(fed[k][0].float(), dim=-1)                          # [V]
        thoughts.append(Thought(k + 1, per_layer[n_layers], top_tokens(tokenizer, cosine, top_k),
                                per_layer if all_layers else {}))
    return thoughts


def trace(student, tokenizer, record: Record, top_k: int = 5, all_layers: bool = False,
          teacher_cot: tuple[str, str] | None = None, max_new_tokens: int = 32) -> ThoughtTrace:
    """Thoughts, the student's greedy answer and the teacher's CoT for one problem."""
    device = next(student.model.parameters()).device
    thoughts = decode_thoughts(student, tokenizer, record.question, top_k, all_layers)
    gen = student.generate(student_batch(tokenizer, [record], student.latent_steps).to(device), max_new_tokens,
                           tokenizer)[0]
    cot, source = teacher_cot if teacher_cot else (None, "none")
    return ThoughtTrace(record.id, record.question, record.answer, gen.text, is_correct(gen.text, record.answer),
                        thoughts, cot, source, list(record.steps))


# ---------------------------------------------------------------- traces of a run's students
def latent_steps_of(student_dir: str | Path) -> int | None:
    """K of a student checkpoint from its ``latent.json`` (read before loading any weights); None without one."""
    meta = Path(student_dir) / "latent.json"
    return json.loads(meta.read_text()).get("latent_steps", 0) if meta.exists() else None


def trace_run(run: Path, method: str, example_id: str, bench: str | None = None, top_k: int = 5,
              all_layers: bool = False, threads: int = 1) -> ThoughtTrace:
    """The trace of one problem of a run (by id) for its student ``method`` (what ``lori thoughts`` prints).

    The teacher's CoT is its evaluation output on that split, else its CoT records, else the gold steps.
    """
    torch.set_num_threads(threads)
    record, split = find_record(run, example_id, bench)
    path = run / "students" / method
    if not path.is_dir():
        have = sorted(p.name for p in (run / "students").iterdir() if p.is_dir()) if (run / "students").is_dir() else []
        raise ArtifactError(f"{path}: no such student (this run has: {', '.join(have) or 'none'})")
    if latent_steps_of(path) == 0:   # say so before loading weights
        raise ArtifactError(f"{path}: this student has no latent thoughts (latent_steps = 0)")
    student, tokenizer = LatentStudent.load(path)
    student.eval()
    cot = teacher_cots(*teacher_cot_files(run, split)).get(record.id)
    if cot is None and record.steps:
        cot = (" ".join(record.steps), f"{run / 'data' / split}.jsonl (gold steps)")
    return trace(student, tokenizer, record, top_k, all_layers, cot)


def thought_traces(students: Sequence[str], data: str, cots: dict[str, tuple[str, str]], n: int) -> dict[str, list]:
    """``student name -> traces`` of the first ``n`` problems of ``data``, for latent students only;
    ``cots`` is the teacher's CoT per problem id (:func:`lori.analysis.runs.teacher_cots`)."""
    torch.set_num_threads(1)       # a few tiny forward passes; leave the cores to parallel jobs
    records, out = read_records(data)[:n], {}
    for path in students:
        if n <= 0 or not latent_steps_of(path):
            continue
        student, tokenizer = LatentStudent.load(path)
        student.eval()
        out[Path(path).name] = [trace(student, tokenizer, r, teacher_cot=cots.get(r.id)) for r in records]
    return out


# ---------------------------------------------------------------- rendering
def _ranked(items: Ranked) -> str:
    return " ".join(f"{t!r}:{s:.2f}" for t, s in items)


def format_trace(t: ThoughtTrace) -> str:
    """Plain-text view: the problem and answers, the teacher's CoT once and whole, then the student's
    thoughts as a list. The two are not lined up: the reasoning loss matches statistics of the
    whole trajectory, not positions (and step anchors, when on, send step j of n to thought
    ⌈(j+1)K/n⌉ − 1, not to thought j), so thought i beside step i would suggest a pairing the
    method does not have."""
    lines = [f"example {t.example_id}: {t.question}",
             f"gold {t.gold}; student says {t.prediction.strip()!r} -> {'correct' if t.correct else 'wrong'}",
             f"teacher CoT ({t.teacher_source}): {t.teacher_cot or '(none found)'}", "",
             f"student's {len(t.thoughts)} latent thoughts (listed apart from the CoT's steps):",
             "thought | logit lens, last layer (token:prob) | nearest input embeddings (token:cos)"]
    for th in t.thoughts:
        lines.append(f"{th.step:>7} | {_ranked(th.lens)} | {_ranked(th.embedding)}")
        for layer, ranked in th.layers.items():
            lines.append(f"        layer {layer:>2}: {_ranked(ranked)}")
    return "\n".join(lines)


def trace_html(t: ThoughtTrace) -> str:
    """One trace for the report: the teacher's CoT whole, then the thoughts' table (listed apart from it)."""
    e = html.escape
    rows = "".join(f"<tr><td>{th.step}</td><td>{e(_ranked(th.lens))}</td><td>{e(_ranked(th.embedding))}</td></tr>"
                   for th in t.thoughts)
    verdict = "correct" if t.correct else "wrong"
    return (f"<p><b>{e(t.example_id)}</b>: {e(t.question)}<br>gold <b>{e(t.gold)}</b>; student: "
            f"<code>{e(t.prediction.strip())}</code> ({verdict})<br>teacher CoT: <code>{e(t.teacher_cot or '-')}</code>"
            f"</p><p>the student's {len(t.thoughts)} latent thoughts (listed apart from the CoT's steps):</p>"
            f"<table><thead><tr><th>thought</th><th>logit lens (token:prob)</th><th>nearest embeddings (token:cos)</th>"
            f"</tr></thead><tbody>{rows}</tbody></table>")

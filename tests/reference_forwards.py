"""Independent re-implementations of the published baselines' *training forwards*, the oracles of
``tests/test_parity.py`` and the "reference" side of ``bench/peers.py``.

Each function follows its reference code's training step as that code defines it, on the model's
plain Hugging Face forward (``input_ids`` / ``inputs_embeds``, ``past_key_values``), with none of
lori's machinery (no :class:`lori.model.latent.LatentStudent`, no fused chain, no recipe):

- Coconut (facebookresearch/coconut, ``coconut.py`` + ``dataset.py``): the latent layout built and
  collated as ``get_cot_latent_dataset`` / ``MyCollator`` do it, then n_latent + 1 forward passes, the
  KV cache cut at the start of each pass's range, each latent's input embedding = the last hidden
  state of the position before it, cross-entropy of the concatenated logits;
- SIM-CoT on Coconut (InternLM/SIM-CoT, ``Coconut/coconut.py``, ``CoconutGPT_Same_Word_Embedding``
  with ``explain_mode: v1_aug``): Coconut's loss plus, per group of c latents, an auxiliary decoder
  reading the group's latents then its step's tokens embedded with the *base* model's table;
- CODI (zhenyi4/codi, ``src/model.py`` + ``train.py``): encoder pass with the cache, K latent steps
  through the projection, the answer block, the teacher pass twice (``no_grad`` for the distilled
  states, with grad for its cross-entropy), smooth-L1 / std over every layer at the answer position;
- iCoT-SI (da03/Internalize_CoT_Step_by_Step, ``src/train.py``): the CoT batch, tokens removed from
  the front of each row's CoT (capped at its end), re-batched, cross-entropy of the model's forward;
- iCoT-KD (da03/implicit_chain_of_thought, ``src/models/{teacher,student,emulator}.py`` and
  ``modeling_gpt2_implicit.py``): the teacher's states on the diagonal of the right-padded CoT batch,
  the student's and the emulator's one forward over the right-padded batch with each block's input
  replaced at the row's separator (the reference edits GPT-2's block loop; here a pre-hook per block
  of the plain HF model does the same), the emulator's MLP / LSTM / attention-over-layers step.

Where lori differs from a reference, the function takes a keyword whose *default is the reference's
behaviour*; ``LORI_CHOICES[method]`` holds lori's values, and docs/method.md ("Baseline fidelity")
lists each one: the deliberate choices with their reasons, and two differences this check found
(SIM-CoT's ``join``, CODI's ``student_targets``). The tests check parity under ``LORI_CHOICES`` and
that each reference default does change the loss (or, for position offsets under RoPE, does not).

The data *format* is lori's throughout (``[bos] question ||``, steps ``" <<a+b=c>>"``, ``" #### answer
<eos>"`` where the references use ``"### answer"``, ``"The answer is: N"``, <eos> separators or
newlines): :func:`pieces` tokenizes records once with lori's helpers, and every function below builds
its own sequences, padding, masks and labels from those pieces the way its reference does.
"""
from __future__ import annotations

import inspect
import itertools
from dataclasses import dataclass

import torch
from torch.nn import functional as F

IGNORE = -100

#: lori's behaviour for each keyword where it differs from the reference (docs/method.md, "Baseline fidelity")
LORI_CHOICES: dict[str, dict] = {
    "coconut": {},
    "sim_cot": {"join": "reference", "empty_groups": "skip", "reduction": "step_mean", "first_position": 0},
    "codi": {"mask_padding": True, "student_targets": "answer"},
    "icot_si": {"label_pad": "ignore"},
    "icot_kd": {"row_delta": "own"},
}


# ----------------------------------------------------------------------------- data, in lori's format
@dataclass
class Pieces:
    """One record's tokens: what each reference's data code tokenizes separately."""
    question: list[int]        # ``[bos] question ||`` (Coconut's question_tokenized; CODI's sources; iCoT's src)
    steps: list[list[int]]     # each CoT step as it appears in the CoT (``" <<a+b=c>>"``)
    cot: list[int]             # the whole CoT text tokenized at once (the teacher sequence's CoT)
    cot_but_last: list[int]    # the CoT without its last step (CODI's teacher, ``include_last_cot: False``)
    answer_prompt: list[int]   # ``" ####"`` (Coconut's ``"### "``, CODI's ``"The answer is:"``)
    answer: list[int]          # ``" answer" <eos>``


def pieces(tokenizer, records) -> list[Pieces]:
    from lori.data.records import ANSWER_SEP, cot_text
    from lori.model.sequences import encode, prompts_ids, step_ids

    questions = prompts_ids(tokenizer, [r.question for r in records])
    out = []
    for r, q in zip(records, questions):
        out.append(Pieces(q, step_ids(tokenizer, r.steps), encode(tokenizer, cot_text(r.steps)),
                          encode(tokenizer, cot_text(r.steps[:-1])), encode(tokenizer, f" {ANSWER_SEP}"),
                          encode(tokenizer, f" {r.answer}") + [tokenizer.eos_token_id]))
    return out


def unused_id(rows: list[list[int]], vocab_size: int) -> int:
    """A token id that occurs in none of ``rows``: the stand-in for Coconut's ``<|latent|>`` token (its
    embedding is looked up and then replaced before any pass reads it, as in the reference)."""
    seen = {t for row in rows for t in row}
    return next(i for i in range(vocab_size - 1, -1, -1) if i not in seen)


def _shifted_ce(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """The references' loss: logits[..., :-1] against labels[..., 1:], -100 ignored."""
    return F.cross_entropy(logits[..., :-1, :].reshape(-1, logits.shape[-1]).float(),
                           labels[..., 1:].reshape(-1), ignore_index=IGNORE, reduction=reduction)


# ----------------------------------------------------------------------------- Coconut
def coconut_features(p: Pieces, stage: int, c: int, max_stage: int, bot: int, eot: int, latent: int,
                     pad_latent_to_max: bool = True) -> dict:
    """``get_cot_latent_dataset`` for one sample (``uniform_prob: 0``): stage k replaces the first k
    steps by k*c latents; past max_stage every step goes and max_stage*c latents stay."""
    if stage > max_stage:
        skip = 10_000
        n_latent = max_stage if pad_latent_to_max else min(len(p.steps), max_stage)
    else:
        skip, n_latent = stage, stage
    n_latent *= c
    answer = p.answer_prompt + p.answer                           # the reference's answer_tokenized
    tokens = (p.question + [bot] + [latent] * n_latent + [eot]
              + list(itertools.chain.from_iterable(p.steps[skip:])) + answer)
    head = len(p.question) + n_latent + 2                        # question, <bot>, latents, <eot>: no labels
    return {"input_ids": tokens, "labels": [IGNORE] * head + tokens[head:],
            "attention_mask": [1] * len(tokens), "position_ids": list(range(len(tokens)))}


def coconut_collate(features: list[dict], pad_id: int, latent: int) -> dict[str, torch.Tensor]:
    """``MyCollator``: left-pad so that every row's first latent sits in the same column (position
    ids 0 on that padding), then right-pad to the longest row (labels -100, position ids 0)."""
    firsts = [f["input_ids"].index(latent) for f in features if latent in f["input_ids"]]
    rows = []
    for f in features:
        n = (max(firsts) - f["input_ids"].index(latent)) if firsts and latent in f["input_ids"] else 0
        rows.append({"input_ids": [pad_id] * n + f["input_ids"], "labels": [IGNORE] * n + f["labels"],
                     "attention_mask": [0] * n + f["attention_mask"], "position_ids": [0] * n + f["position_ids"]})
    width = max(len(r["input_ids"]) for r in rows)
    fill = {"input_ids": pad_id, "labels": IGNORE, "attention_mask": 0, "position_ids": 0}
    return {k: torch.tensor([r[k] + [v] * (width - len(r[k])) for r in rows], dtype=torch.long)
            for k, v in fill.items()}


def _run(model, cache, **kwargs):
    """``model(**kwargs)`` continuing ``cache`` (the references' ``past_key_values``; transformers >= 5.2x
    names the argument ``cache`` and warns on the old name). Returns (output, its cache)."""
    if cache is not None:
        name = "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"
        kwargs[name] = cache
    out = model(**kwargs)
    new = getattr(out, "cache", None)
    return out, (new if new is not None else getattr(out, "past_key_values", None))


def _cut(cache, length: int):
    """The reference's cache cut: every layer's keys/values kept up to ``length`` positions."""
    if not hasattr(cache, "layers"):             # transformers < 4.56: no per-layer objects
        cache.crop(length)
        return cache
    for layer in cache.layers:
        layer.keys = layer.keys[:, :, :length, :]
        layer.values = layer.values[:, :, :length, :]
    return cache


def coconut_forward(model, input_ids, attention_mask, labels, position_ids, latent: int):
    """``Coconut.forward``: returns (loss, inputs_embeds with the latents filled in, latent positions)."""
    embed = model.get_input_embeddings()
    latent_lists = [(row == latent).nonzero().flatten().tolist() for row in input_ids]
    n_passes = max(len(l) for l in latent_lists)
    inputs_embeds = embed(input_ids)
    total = input_ids.shape[1]
    start, end = 0, (min(l[0] for l in latent_lists if l) if n_passes else total)   # before the first latent
    cache, logits = None, []
    for k in range(n_passes):
        if cache is None:          # the first pass: everything before the earliest latent
            out, cache = _run(model, None, inputs_embeds=inputs_embeds[:, start:end],
                              attention_mask=attention_mask[:, start:end], position_ids=position_ids[:, start:end],
                              output_hidden_states=True, use_cache=True)
        else:
            out, cache = _run(model, _cut(cache, start), inputs_embeds=inputs_embeds[:, start:end],
                              attention_mask=attention_mask[:, :end], position_ids=position_ids[:, start:end],
                              output_hidden_states=True, use_cache=True)
        offset = start                      # hidden_states hold the positions [start, end) only
        logits.append(out.logits)
        start, end = end, (total if k + 1 >= n_passes else end + 1)
        last = out.hidden_states[-1]
        # each row's k-th latent takes the last hidden state of the position before it; rebuilt from
        # per-position vectors rather than written in place (as the reference does, for autograd)
        fill = {(b, l[k]) for b, l in enumerate(latent_lists) if len(l) > k}
        inputs_embeds = torch.stack([torch.stack([last[b, t - 1 - offset] if (b, t) in fill else inputs_embeds[b, t]
                                                  for t in range(total)]) for b in range(input_ids.shape[0])])
    out, _ = _run(model, _cut(cache, start) if cache is not None else None, inputs_embeds=inputs_embeds[:, start:end],
                  attention_mask=attention_mask[:, :end], position_ids=position_ids[:, start:end],
                  output_hidden_states=True)
    logits.append(out.logits)
    loss = _shifted_ce(torch.cat(logits, dim=-2), labels)
    return loss, inputs_embeds, latent_lists


def coconut_loss(model, ps: list[Pieces], stage: int, c: int, max_stage: int, bot: int, eot: int, pad_id: int,
                 device=None) -> dict[str, torch.Tensor]:
    """Coconut's training loss of one batch at ``stage`` (1..max_stage, or max_stage + 1 = final)."""
    latent = unused_id([p.question + [t for s in p.steps for t in s] + p.answer_prompt + p.answer + [bot, eot, pad_id]
                        for p in ps], model.get_input_embeddings().weight.shape[0])
    batch = coconut_collate([coconut_features(p, stage, c, max_stage, bot, eot, latent) for p in ps], pad_id, latent)
    batch = {k: v.to(device) for k, v in batch.items()} if device is not None else batch
    loss, _, _ = coconut_forward(model, batch["input_ids"], batch["attention_mask"], batch["labels"],
                                 batch["position_ids"], latent)
    return {"loss": loss, "task": loss}


# ----------------------------------------------------------------------------- SIM-CoT (Coconut variant)
def sim_cot_groups(p: Pieces, stage: int, max_stage: int, n_groups: int, eos: int, join: str = "reference",
                   empty_groups: str = "answer") -> list[list[int] | None]:
    """What each of the ``n_groups`` latent groups decodes (``v1_aug``): the replaced steps
    (``explainable_ids_list = steps[:n_skip_steps]``), the first max_stage - 1 each in its own group,
    the rest joined into the last one, then ``<eos>``.

    ``join``: ``reference`` concatenates the joined steps and closes the group with one ``<eos>`` (the
    reference puts its step separator between them; lori's steps carry their own leading space);
    ``eos_each`` closes every joined step with ``<eos>`` (lori). ``empty_groups``: a group without a
    step decodes the text after ``<eot>`` up to ``<eos>`` (the reference's "pseudo thought": with no
    step left, the answer) or nothing (``skip``, lori: None)."""
    replaced = p.steps[: (stage if stage <= max_stage else len(p.steps))]
    groups: list[list[list[int]]] = [[s] for s in replaced]
    if len(groups) < max_stage:            # the reference pads only below max_latent_stage groups
        # its pseudo thought: the row's text after <eot> up to <eos>; a row is short of groups only
        # when no step is left there, so that text is the answer
        pseudo = p.answer_prompt + p.answer[:-1]
        while len(groups) < n_groups:
            groups.append([pseudo] if empty_groups == "answer" else [])
    own, rest = groups[: max_stage - 1], [s for g in groups[max_stage - 1:] for s in g]
    merged = own + ([rest] if rest else [])
    out: list[list[int] | None] = []
    for g in range(n_groups):
        steps = merged[g] if g < len(merged) else []
        if not steps:
            out.append(None)
        elif join == "reference":
            out.append([t for s in steps for t in s] + [eos])
        else:
            out.append([t for s in steps for t in s + [eos]])
    return out


def sim_cot_decoder_loss(decoder, embed, latents: torch.Tensor, targets: list[list[list[int] | None]], c: int,
                         eos: int, reduction: str = "reference", first_position: int = 1) -> torch.Tensor:
    """The auxiliary decoder's loss: for each group g, a batch of the rows with a target,
    ``[c latents] target`` (target embedded with the base model's table ``embed``), right-padded
    with <eos> (one more than the longest), attention and labels up to the target's end, positions
    from ``first_position`` (reference: 1), cross-entropy summed.

    ``reduction``: ``reference`` divides group g's token sum by its number of rows and averages over
    the groups (``loss_explain_all / c_thought_num``); ``step_mean`` (lori) is the mean over every
    decoded (row, group) of its token-mean cross-entropy.

    latents [B, G*c, d]: the latents as fed to the student; targets[b][g]: row b's target for group g."""
    n_groups = latents.shape[1] // c
    device = latents.device
    group_losses, row_means = [], []
    for g in range(n_groups):
        rows = [b for b in range(len(targets)) if targets[b][g] is not None]
        if not rows:
            continue
        width = max(len(targets[b][g]) for b in rows) + 1
        ids = torch.full((len(rows), width), eos, dtype=torch.long, device=device)
        labels = torch.full((len(rows), c + width), IGNORE, dtype=torch.long, device=device)
        mask = torch.zeros((len(rows), c + width), dtype=torch.long, device=device)
        for i, b in enumerate(rows):
            t = torch.tensor(targets[b][g], dtype=torch.long, device=device)
            ids[i, : len(t)] = t
            labels[i, c : c + len(t)] = t
            mask[i, : c + len(t)] = 1
        inputs = torch.cat([latents[rows, g * c:(g + 1) * c], embed(ids).to(latents.dtype)], dim=1)
        positions = torch.arange(first_position, first_position + c + width, device=device).expand(len(rows), -1)
        logits = decoder(inputs_embeds=inputs, attention_mask=mask, position_ids=positions).logits
        per_token = _shifted_ce(logits, labels, reduction="none").view(len(rows), -1)
        if reduction == "reference":
            group_losses.append(per_token.sum() / len(rows))
        else:
            row_means.append(per_token.sum(1) / (labels[:, 1:] != IGNORE).sum(1))
    if reduction == "reference":
        return torch.stack(group_losses).sum() / n_groups if group_losses else latents.new_zeros(())
    return torch.cat(row_means).mean() if row_means else latents.new_zeros(())


def sim_cot_loss(model, decoder, ps: list[Pieces], stage: int, c: int, max_stage: int, bot: int, eot: int,
                 pad_id: int, eos: int, decoder_weight: float = 1.0, join: str = "reference",
                 empty_groups: str = "answer", reduction: str = "reference", first_position: int = 1,
                 device=None) -> dict[str, torch.Tensor]:
    """SIM-CoT's training loss of one batch: Coconut's cross-entropy + 1.0 * the decoder's loss."""
    latent = unused_id([p.question + [t for s in p.steps for t in s] + p.answer_prompt + p.answer + [bot, eot, pad_id]
                        for p in ps], model.get_input_embeddings().weight.shape[0])
    batch = coconut_collate([coconut_features(p, stage, c, max_stage, bot, eot, latent) for p in ps], pad_id, latent)
    batch = {k: v.to(device) for k, v in batch.items()} if device is not None else batch
    task, inputs_embeds, latent_lists = coconut_forward(model, batch["input_ids"], batch["attention_mask"],
                                                        batch["labels"], batch["position_ids"], latent)
    rows = torch.arange(len(ps), device=inputs_embeds.device)[:, None]
    latents = inputs_embeds[rows, torch.tensor(latent_lists, device=inputs_embeds.device)]       # [B, G*c, d]
    n_groups = latents.shape[1] // c
    targets = [sim_cot_groups(p, stage, max_stage, n_groups, eos, join, empty_groups) for p in ps]
    dec = sim_cot_decoder_loss(decoder, model.get_input_embeddings(), latents, targets, c, eos, reduction,
                               first_position)
    return {"loss": task.float() + decoder_weight * dec, "task": task, "decoder": dec}


# ----------------------------------------------------------------------------- CODI
def _find(ids: list[int], prompt: list[int]) -> int:
    """``get_answer_token_position``: the index right after the first occurrence of ``prompt``."""
    return next(i for i in range(len(ids) - len(prompt) + 1) if ids[i:i + len(prompt)] == prompt) + len(prompt)


def codi_loss(model, projection, ps: list[Pieces], latent_steps: int, bot: int, eot: int, pad_id: int,
              distill_factor: float = 1.0, ref_factor: float = 1.0, mask_padding: bool = False,
              student_targets: str = "decoder", device=None) -> dict[str, torch.Tensor]:
    """CODI's training loss of one batch (``distill_loss_div_std``, smooth-L1, ``remove_eos``, no LoRA).

    ``mask_padding``: the reference passes the encoder's padding mask to the question pass only
    (``fix_attn_mask: False``), so the latent steps and the answer block attend to the question's
    left padding; True masks it in every pass (lori). ``student_targets``: ``decoder`` (reference:
    labels = the decoder ids, so the cross-entropy covers everything after ``<eot>``, the answer
    prompt included) or ``answer`` (lori: the answer tokens and <eos> only)."""
    dev = device if device is not None else model.get_input_embeddings().weight.device
    enc_rows = [p.question + [bot] for p in ps]
    dec_rows = [[eot] + p.answer_prompt + p.answer for p in ps]
    ref_rows = [p.question + p.cot_but_last + p.answer_prompt + p.answer for p in ps]
    width = max(map(len, enc_rows))
    enc = torch.tensor([[pad_id] * (width - len(r)) + r for r in enc_rows], device=dev)              # pad left
    enc_mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in enc_rows], device=dev)
    ref, ref_mask = _pad_right(ref_rows, pad_id, dev)
    ref_labels = _pad_right([[IGNORE] * len(p.question) + r[len(p.question):] for p, r in zip(ps, ref_rows)],
                            IGNORE, dev)[0]
    dec, _ = _pad_right(dec_rows, pad_id, dev)
    if student_targets == "decoder":
        labels = _pad_right(dec_rows, IGNORE, dev)[0]
    else:
        labels = _pad_right([[IGNORE] * (1 + len(p.answer_prompt)) + p.answer for p in ps], IGNORE, dev)[0]
    # the position predicting the first answer token: right after the answer prompt, minus one
    model_pos = torch.tensor([_find(r, p.answer_prompt) - 1 for p, r in zip(ps, dec_rows)], device=dev)
    ref_pos = torch.tensor([_find(r, p.answer_prompt) - 1 for p, r in zip(ps, ref_rows)], device=dev)

    out, cache = _run(model, None, input_ids=enc, attention_mask=enc_mask, use_cache=True, output_hidden_states=True)
    latent = projection(out.hidden_states[-1][:, -1, :].unsqueeze(1))
    with torch.no_grad():
        ref_out = model(input_ids=ref, output_hidden_states=True, attention_mask=ref_mask if mask_padding else None)
    ref_out_grad = model(input_ids=ref, output_hidden_states=True, attention_mask=ref_mask if mask_padding else None)
    rows = torch.arange(len(ps), device=dev)
    for i in range(latent_steps):
        mask = torch.cat([enc_mask, torch.ones_like(enc_mask[:, :1]).expand(-1, i + 1)], 1) if mask_padding else None
        out, cache = _run(model, cache, inputs_embeds=latent, use_cache=True, output_hidden_states=True,
                          attention_mask=mask)
        latent = projection(out.hidden_states[-1][:, -1, :].unsqueeze(1))
    embeds = model.get_input_embeddings()(dec)
    rest = torch.ones((len(ps), latent_steps + dec.shape[1]), dtype=enc_mask.dtype, device=dev)
    mask = torch.cat([enc_mask, rest], 1) if mask_padding else None
    out, _ = _run(model, cache, inputs_embeds=embeds, use_cache=True, output_hidden_states=True, attention_mask=mask)
    distill = 0
    for h, h_ref in zip(out.hidden_states, ref_out.hidden_states):
        sel, ref_sel = h[rows, model_pos].unsqueeze(1), h_ref[rows, ref_pos].unsqueeze(1)
        distill = distill + F.smooth_l1_loss(sel.float(), ref_sel.detach().float()) / ref_sel.float().std()
    distill = distill / len(out.hidden_states)
    ce = _shifted_ce(out.logits, labels)
    ref_ce = _shifted_ce(ref_out_grad.logits, ref_labels)
    return {"loss": ce + distill_factor * distill + ref_factor * ref_ce, "task": ce, "distill": distill,
            "teacher": ref_ce}


def _pad_right(rows: list[list[int]], value: int, device):
    width = max(map(len, rows))
    ids = torch.tensor([r + [value] * (width - len(r)) for r in rows], device=device)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
    return ids, mask


# ----------------------------------------------------------------------------- iCoT-SI
def icot_si_loss(model, ps: list[Pieces], to_remove: list[int], eos: int, label_pad: str = "eos",
                 device=None) -> dict[str, torch.Tensor]:
    """iCoT-SI's training loss of one batch with ``to_remove[b]`` CoT tokens to remove from row b
    (the scheduled count plus its smoothing offset, drawn by the caller).

    The batch is ``src sep CoT sep answer <eos>`` with labels from the CoT on; the collator pads the
    ids with <eos> and the labels with -100. Removal cuts ``[first_sep + 1, first_sep + 1 + n)``
    capped at the second separator (lori's separators are the prompt's last token and the answer
    prompt, where the reference's are <eos>). The cut rows are re-batched by ``batch_ids``, which pads
    the ids *and the labels* with <eos> (``label_pad: eos``, the reference: a row that lost more
    tokens than the batch's least-cut row gets that many extra <eos> targets after its padding) or
    with -100 (``ignore``, lori). The model runs without an attention mask or position ids."""
    dev = device if device is not None else model.get_input_embeddings().weight.device
    rows = [p.question + p.cot + p.answer_prompt + p.answer for p in ps]
    labels = [[IGNORE] * len(p.question) + r[len(p.question):] for p, r in zip(ps, rows)]
    width = max(map(len, rows))
    rows = [r + [eos] * (width - len(r)) for r in rows]                  # collator: ids padded with <eos>
    labels = [l + [IGNORE] * (width - len(l)) for l in labels]           # labels with -100
    cut_ids, cut_labels = [], []
    for p, r, l, n in zip(ps, rows, labels, to_remove):
        first_sep = len(p.question) - 1
        second_sep = len(p.question) + len(p.cot)
        lo, hi = first_sep + 1, min(first_sep + 1 + n, second_sep)     # remove from (incl.), to (excl.)
        cut_ids.append(r[:lo] + r[hi:])
        cut_labels.append(l[:lo] + l[hi:])
    width = max(map(len, cut_ids))
    ids = torch.tensor([r + [eos] * (width - len(r)) for r in cut_ids], device=dev)
    fill = eos if label_pad == "eos" else IGNORE
    lab = torch.tensor([l + [fill] * (width - len(l)) for l in cut_labels], device=dev)
    loss = _shifted_ce(model(input_ids=ids).logits, lab)
    return {"loss": loss, "task": loss}


# ----------------------------------------------------------------------------- iCoT-KD
def _block_list(model):
    base = model.base_model if hasattr(model, "base_model") else model
    return list(getattr(base, "layers", None) or base.model.layers)[: model.config.num_hidden_layers]


def _with_block_edits(model, edit, **kwargs):
    """``model(**kwargs)`` with ``edit(i, h) -> h`` applied to block i's input (the reference's edited loop)."""
    handles = []
    for i, block in enumerate(_block_list(model)):
        def pre(module, args, kw, i=i):
            if args:
                return (edit(i, args[0]), *args[1:]), kw
            return args, {**kw, "hidden_states": edit(i, kw["hidden_states"])}
        handles.append(block.register_forward_pre_hook(pre, with_kwargs=True))
    try:
        return model(**kwargs)
    finally:
        for h in handles:
            h.remove()


def icot_kd_teacher_states(teacher, ps: list[Pieces], pad_id: int, row_delta: str = "first") -> torch.Tensor:
    """``Teacher.extract_states(subset='diagonal', delta='dynamic')`` on ``question CoT #### answer``:
    [B, L, d]. The separators are the prompt's last token and the answer prompt's last token. The
    reference computes the dynamic delta on the first row and, the variable being overwritten, keeps it
    for the other rows (``row_delta: first``); lori computes each row's own (``own``)."""
    dev = teacher.get_input_embeddings().weight.device
    rows = [p.question + p.cot + p.answer_prompt + p.answer for p in ps]
    ids, mask = _pad_right(rows, pad_id, dev)
    with torch.no_grad():
        hidden = teacher(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[:-1]
    n_layers = len(hidden)
    layer_ids = torch.arange(n_layers, device=dev)
    delta = None
    out = []
    for b, p in enumerate(ps):
        first = len(p.question) - 1
        last = len(p.question) + len(p.cot) + len(p.answer_prompt) - 1
        if delta is None or row_delta == "own":
            delta = (last - first) / (n_layers - 1)
        pos = torch.round(first + layer_ids * torch.tensor(delta, dtype=torch.float64)).clamp(max=last).long()
        out.append(torch.stack([hidden[l][b, pos[l]] for l in range(n_layers)]))
    z = torch.stack(out).float()
    return F.layer_norm(z, z.shape[-1:])


def _student_rows(ps: list[Pieces], pad_id: int, dev):
    """The no-CoT batch ``question #### answer`` right-padded, labels from the answer prompt on."""
    rows = [p.question + p.answer_prompt + p.answer for p in ps]
    ids, mask = _pad_right(rows, pad_id, dev)
    labels = ids.masked_fill(mask == 0, IGNORE)
    for b, p in enumerate(ps):
        labels[b, : len(p.question) + len(p.answer_prompt)] = IGNORE   # the answer and its <eos>
    return ids, mask, labels


def icot_kd_student_loss(model, read_mlps, ps: list[Pieces], states: torch.Tensor, pad_id: int) -> torch.Tensor:
    """``Student.compute_loss``: project each layer's state by its MLP, replace block l's input at
    the separator by it, cross-entropy of the answer."""
    dev = model.get_input_embeddings().weight.device
    ids, mask, labels = _student_rows(ps, pad_id, dev)
    seps = [len(p.question) - 1 for p in ps]
    projected = [read_mlps[l](states[:, l]) for l in range(states.shape[1])]

    def edit(i, h):
        h = h.clone()
        for b, sep in enumerate(seps):
            h[b, sep] = projected[i][b].to(h.dtype)
        return h

    out = _with_block_edits(model, edit, input_ids=ids, attention_mask=mask)
    return _shifted_ce(out.logits, labels)


def icot_kd_emulate(emulator, heads, mixture, rnn, key_proj, query_proj, out_proj, ps: list[Pieces], pad_id: int,
                    temperature: float) -> torch.Tensor:
    """``Emulator.forward`` on the questions (right-padded, cut after the longest separator): before
    block l, ``f_l = mlp_l([z_l, mixture])`` at the separator, then the LSTM over layers with attention
    on the earlier layers' keys; its output replaces the state. Returns the ``f_l``: [B, L, d]."""
    dev = emulator.get_input_embeddings().weight.device
    ids, mask = _pad_right([p.question for p in ps], pad_id, dev)
    seps = torch.tensor([len(p.question) - 1 for p in ps], device=dev)
    f_all, st = [], {"rnn": None, "keys": None, "context": None}
    weight = mixture.weight

    def edit(i, h):
        z = h[torch.arange(h.shape[0], device=dev), seps]
        if weight.shape[0] == 1:
            mix = weight.expand(h.shape[0], -1)
        else:
            mix = (z @ weight.T / temperature).softmax(dim=-1) @ weight
        f = heads[i](torch.cat((z, mix), dim=-1))
        f_all.append(f)
        if st["context"] is None:
            st["context"] = f.new_zeros(f.shape)
        output, st["rnn"] = rnn((f + st["context"]).unsqueeze(0), st["rnn"])
        output = output.squeeze(0)
        current_key = key_proj(output)
        if st["keys"] is not None:
            attn = torch.bmm(st["keys"], query_proj(output).unsqueeze(-1)).softmax(dim=1)
            st["context"] = torch.bmm(attn.squeeze(-1).unsqueeze(1), st["keys"]).squeeze(1)
            st["keys"] = torch.cat((st["keys"], current_key.unsqueeze(1)), dim=1)
        else:
            st["keys"] = current_key.unsqueeze(1)
        nxt = out_proj(torch.cat((output, st["context"]), dim=-1))
        h = h.clone()
        for b in range(h.shape[0]):
            h[b, seps[b]] = nxt[b].to(h.dtype)
        return h

    _with_block_edits(emulator, edit, input_ids=ids, attention_mask=mask)
    return torch.stack(f_all, dim=1)


def icot_kd_emulator_loss(emulated: torch.Tensor, teacher_states: torch.Tensor) -> torch.Tensor:
    """``Emulator.compute_loss``: per layer MSE summed over the hidden size, halved, summed over layers, batch mean."""
    loss = 0
    for l in range(teacher_states.shape[1]):
        loss = loss + F.mse_loss(teacher_states[:, l], emulated[:, l], reduction="none").sum(-1) / 2
    return loss.mean()

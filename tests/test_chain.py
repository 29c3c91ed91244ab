"""The fast latent chain and decoder (lori.model.chain) against the plain Hugging Face call path.

The reference below is the chain as the model's own forward runs it: one full ``model(...)`` call
per thought or token, the attention mask concatenated each step, every layer's hidden states
materialised. The fast path must give the same losses, thought states, gradients and decoded
tokens, on left-padded batches (positions ``cumsum(mask) - 1``), for the LLaMA-style models it
runs itself and for GPT-2, which takes the generic path.
"""
from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from lori.data.generator import generate
from lori.data.records import BOT, EOT, cot_text
from lori.model.chain import _LlamaChain, _ModelChain, forward_cached, position_ids, prefill, start_chain
from lori.model.generate import generate_cot
from lori.model.latent import LatentStudent
from lori.model.loading import build_word_tokenizer
from lori.model.sequences import prompt_ids, pad_left, student_batch

ARCHS = ("llama", "qwen2", "qwen3", "mistral", "gpt2")
K = 3
# float32 rounding: the fused step attends over prompt and thoughts in one product, the plain path
# in the model's kernel; states are O(1), so an absolute 2e-6 is a few ulps summed over the layers
TOL = {"rtol": 1e-5, "atol": 2e-6}


@pytest.fixture(scope="module")
def records():
    return generate(12, seed=3)


@pytest.fixture(scope="module")
def tokenizer(records):
    return build_word_tokenizer([f"{r.question} {cot_text(r.steps)} #### {r.answer}" for r in records])


def tiny_model(arch: str, tokenizer, **overrides):
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    ids = {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id,
           "bos_token_id": tokenizer.bos_token_id}
    torch.manual_seed(0)
    if arch == "gpt2":
        # no dropout: the two paths must see the same function in train mode
        return AutoModelForCausalLM.from_config(GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=128, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **ids))
    # 4 query heads on 2 KV heads: grouped-query attention, as SmolLM2 (9 on 3)
    common = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "intermediate_size": 64, "max_position_embeddings": 128, **ids, **overrides}
    config = {"llama": LlamaConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config, "mistral": MistralConfig}[arch]
    return AutoModelForCausalLM.from_config(config(**common))


def student_for(arch: str, tokenizer, feedback: str = "projection", **overrides) -> LatentStudent:
    model = tiny_model(arch, tokenizer, **overrides)
    torch.manual_seed(1)
    return LatentStudent(model, K, tokenizer.convert_tokens_to_ids(BOT), tokenizer.convert_tokens_to_ids(EOT),
                         feedback=feedback)


# ---------------------------------------------------------------- the plain path
def plain_think(student: LatentStudent, ids, mask, layers):
    model = student.model
    out, past = forward_cached(model, None, input_ids=ids, attention_mask=mask, position_ids=position_ids(mask),
                               output_hidden_states=True)
    last, pos, states = out.hidden_states[-1][:, -1], mask.sum(1), []
    for _ in range(student.latent_steps):
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        out, past = forward_cached(model, past, inputs_embeds=student._feed(last)[:, None], attention_mask=mask,
                                   position_ids=pos[:, None], output_hidden_states=True)
        pos, last = pos + 1, out.hidden_states[-1][:, -1]
        states.append(torch.stack([out.hidden_states[l][:, -1] for l in layers], dim=1))
    return past, mask, pos, out.logits[:, -1], torch.stack(states, dim=1)


def plain_forward(student: LatentStudent, batch, layers):
    past, mask, pos, _, thoughts = plain_think(student, batch.prompt_ids, batch.prompt_mask, layers)
    out, _ = forward_cached(student.model, past, input_ids=batch.suffix_ids,
                            attention_mask=torch.cat([mask, batch.suffix_mask], dim=1),
                            position_ids=pos[:, None] + torch.arange(batch.suffix_ids.shape[1], device=pos.device),
                            output_hidden_states=True)
    a = batch.answer_start
    logits = out.logits[:, a - 1 : -1]
    targets = batch.suffix_ids[:, a:].masked_fill(batch.suffix_mask[:, a:] == 0, -100)
    task = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=-100)
    return task, thoughts, torch.stack([out.hidden_states[l][:, a - 1] for l in layers], dim=1)


def plain_decode(model, past, mask, pos, logits, max_new: int, eos_id: int, pad_id: int) -> list[list[int]]:
    done, steps = torch.zeros(logits.shape[0], dtype=torch.bool), []
    for _ in range(max_new):
        token = torch.where(done, torch.full_like(done, pad_id, dtype=torch.long), logits.argmax(-1))
        steps.append(token)
        done = done | (token == eos_id)
        if bool(done.all()) or len(steps) == max_new:
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        out, past = forward_cached(model, past, input_ids=token[:, None], attention_mask=mask, position_ids=pos[:, None])
        logits, pos = out.logits[:, -1], pos + 1
    rows = torch.stack(steps, dim=1).tolist()
    return [row[: row.index(eos_id) + 1] if eos_id in row else row for row in rows]


def loss_and_grads(student, run):
    student.zero_grad(set_to_none=True)
    task, thoughts, anchor = run()
    (task + thoughts.pow(2).mean() + anchor.pow(2).mean()).backward()
    return (task, thoughts, anchor), {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}


# ---------------------------------------------------------------- tests
@pytest.mark.parametrize("arch", ARCHS)
def test_fast_path_only_where_it_applies(arch, tokenizer):
    model = tiny_model(arch, tokenizer)
    mask = torch.ones(2, 5, dtype=torch.long)
    chain = start_chain(model, None, mask, mask.sum(1), K)
    assert isinstance(chain, _ModelChain if arch == "gpt2" else _LlamaChain)
    # a sliding window shorter than the chain needs per-layer masks: the generic path
    windowed = tiny_model("mistral", tokenizer, sliding_window=6)
    assert isinstance(start_chain(windowed, None, mask, mask.sum(1), K), _ModelChain)


@pytest.mark.parametrize("feedback", ["projection", "hidden"])
@pytest.mark.parametrize("arch", ARCHS)
def test_training_forward_matches_the_plain_path(arch, feedback, tokenizer, records):
    torch.set_num_threads(1)
    student = student_for(arch, tokenizer, feedback).train()
    batch = student_batch(tokenizer, records[:6], K)
    assert (batch.prompt_mask == 0).any()                       # left padding is exercised
    layers = list(range(student.model.config.num_hidden_layers + 1))

    def fast():
        out = student(batch, layers)
        return out.task_loss, out.thoughts, out.anchor

    want, want_grads = loss_and_grads(student, lambda: plain_forward(student, batch, layers))
    got, grads = loss_and_grads(student, fast)
    for w, g in zip(want, got):
        torch.testing.assert_close(g, w, **TOL)
    assert grads.keys() == want_grads.keys()
    for name, w in want_grads.items():
        torch.testing.assert_close(grads[name], w, **TOL, msg=lambda m: f"{name}: {m}")
    again, again_grads = loss_and_grads(student, fast)            # CPU runs are bitwise deterministic
    assert all(torch.equal(a, g) for a, g in zip(again, got))
    assert all(torch.equal(again_grads[n], g) for n, g in grads.items())


def _relative(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.detach().float() - want.float()).norm() / want.float().norm())


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))])
@pytest.mark.parametrize("arch, kv_heads", [("llama", 2), ("llama", 4), ("qwen2", 2), ("mistral", 2)])
def test_training_under_bf16_autocast_is_the_fused_step_in_bf16(arch, kv_heads, device, tokenizer, records,
                                                                 monkeypatch):
    """On a GPU training runs under bf16 autocast; the fused step then runs its matmuls in bf16
    (norms, rotary map, scores and softmax in float32, as the model's layers do under autocast).
    Checked on CPU autocast (and on CUDA where there is one): losses, thought states and every
    gradient as close to the float32 ones as bf16 allows, and as close as the model's own layers
    under autocast come."""
    from lori.model import fused_step

    torch.set_num_threads(1)
    # 4 query heads on 2 key/value heads, or one query per key/value head (the outer-product path)
    student = student_for(arch, tokenizer, num_key_value_heads=kv_heads).train().to(device)
    batch = student_batch(tokenizer, records[:6], K).to(device)
    layers = list(range(student.model.config.num_hidden_layers + 1))
    chains = []
    init = fused_step.FusedChainLayers.__init__
    monkeypatch.setattr(fused_step.FusedChainLayers, "__init__",
                        lambda self, *a, **kw: chains.append(self) or init(self, *a, **kw))

    def bf16(run):
        def autocast_run():
            with torch.autocast(device, dtype=torch.bfloat16):
                return run()
        return autocast_run

    def fast():
        out = student(batch, layers)
        return out.task_loss, out.thoughts, out.anchor

    def plain():
        return plain_forward(student, batch, layers)

    if device == "cuda":         # the float32 reference in full float32 (no TF32 matmuls)
        monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert fused_step.fusable(student.model, autocast=torch.bfloat16)
    assert not fused_step.fusable(student.model, autocast=torch.float16)   # float16 keeps the model's layers
    exact, exact_grads = loss_and_grads(student, plain)
    model_bf16, model_grads = loss_and_grads(student, bf16(plain))
    assert not chains
    got, grads = loss_and_grads(student, bf16(fast))
    assert len(chains) == 1 and all(w.dtype == torch.bfloat16 for w in chains[0].weights)   # it ran, in bf16
    assert all(t.dtype == torch.float32 for t in got) and grads.keys() == exact_grads.keys()
    for g, m, e in zip(got, model_bf16, exact):
        assert _relative(g, e) < 2e-2 and _relative(g, m) < 2e-2
    for name, e in exact_grads.items():
        assert grads[name].dtype == torch.float32
        # bf16 keeps 8 bits: the layers' gradients come within ~1%, the feedback projection's
        # (through every thought) within ~5-8%, the model's own layers under autocast alike
        bound = 0.12 if name.startswith("projection") else 2e-2
        assert _relative(grads[name], e) < bound and _relative(model_grads[name], e) < bound, name
    if device == "cpu":          # still bitwise deterministic (CUDA's embedding backward uses atomics)
        again, again_grads = loss_and_grads(student, bf16(fast))
        assert all(torch.equal(a, g) for a, g in zip(again, got))
        assert all(torch.equal(again_grads[n], g) for n, g in grads.items())


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("size", [5, 1])                             # batch 1: nothing padded, no mask
def test_prefill_is_the_model_forward_at_the_last_position(arch, size, tokenizer, records):
    """The LLaMA-style prefill runs its last layer on the last position only: the cache (every
    layer's keys/values, the last layer's included) and the last position's logits and state
    are the model's own forward's."""
    model = tiny_model(arch, tokenizer).eval()
    ids, mask = pad_left([prompt_ids(tokenizer, r.question) for r in records[:size]], tokenizer.pad_token_id)
    with torch.no_grad():
        cache, logits, last = prefill(model, ids, mask, hidden=True)
        out, want = forward_cached(model, None, input_ids=ids, attention_mask=mask, position_ids=position_ids(mask),
                                   output_hidden_states=True)
    torch.testing.assert_close(logits, out.logits[:, -1], **TOL)
    torch.testing.assert_close(last, out.hidden_states[-1][:, -1], **TOL)
    assert len(cache.layers) == len(want.layers)
    for got_layer, want_layer in zip(cache.layers, want.layers):
        torch.testing.assert_close(got_layer.keys, want_layer.keys, **TOL)
        torch.testing.assert_close(got_layer.values, want_layer.values, **TOL)


@pytest.mark.parametrize("arch", ARCHS)
def test_think_returns_the_plain_logits_and_states(arch, tokenizer, records):
    student = student_for(arch, tokenizer).eval()
    batch = student_batch(tokenizer, records[:5], K)
    layers = [0, student.model.config.num_hidden_layers]
    with torch.no_grad():
        _, mask, pos, logits, states = student._think(batch.prompt_ids, batch.prompt_mask, layers)
        _, want_mask, want_pos, want_logits, want_states = plain_think(student, batch.prompt_ids, batch.prompt_mask,
                                                                       layers)
    assert torch.equal(mask, want_mask) and torch.equal(pos, want_pos)
    torch.testing.assert_close(logits, want_logits, **TOL)
    torch.testing.assert_close(states, want_states, **TOL)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("size", [5, 1])                             # batch 1: nothing padded, no mask
def test_generation_matches_the_plain_decoder(arch, size, tokenizer, records):
    student = student_for(arch, tokenizer).eval()
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    batch = student_batch(tokenizer, records[:size], K)
    gens = student.generate(batch, 12, tokenizer)
    with torch.no_grad():
        past, mask, pos, _, _ = plain_think(student, batch.prompt_ids, batch.prompt_mask, [0])
        head = batch.suffix_ids[:, : batch.answer_start]
        mask = torch.cat([mask, torch.ones_like(head)], dim=1)
        out, past = forward_cached(student.model, past, input_ids=head, attention_mask=mask,
                                   position_ids=pos[:, None] + torch.arange(head.shape[1]))
        rows = plain_decode(student.model, past, mask, pos + head.shape[1], out.logits[:, -1], 12, eos, pad)
    assert [g.tokens for g in gens] == [len(r) for r in rows]
    prefix = tokenizer.decode(head[0].tolist(), skip_special_tokens=True)
    assert [g.text for g in gens] == [prefix + tokenizer.decode(r, skip_special_tokens=True) for r in rows]

    # teacher decoding (generate_cot) goes through the same engine
    questions = [r.question for r in records[:size]]
    cot = generate_cot(student.model, tokenizer, questions, 12, torch.device("cpu"))
    ids, mask = pad_left([prompt_ids(tokenizer, q) for q in questions], pad)
    with torch.no_grad():
        out, past = forward_cached(student.model, None, input_ids=ids, attention_mask=mask,
                                   position_ids=position_ids(mask))
        rows = plain_decode(student.model, past, mask, mask.sum(1), out.logits[:, -1], 12, eos, pad)
    assert [g.text for g in cot] == [tokenizer.decode(r, skip_special_tokens=True) for r in rows]


def test_preallocated_cache_continues_past_its_size(tokenizer, records):
    """After the chain, the model's forward appends more than the chain was sized for: the
    preallocated layers fall back to concatenation."""
    student = student_for("llama", tokenizer).eval()
    batch = student_batch(tokenizer, records[:4], K)
    with torch.no_grad():
        past, mask, pos, _, _ = student._think(batch.prompt_ids, batch.prompt_mask, None)
        assert past.get_seq_length() == mask.shape[1]
        out, past = forward_cached(student.model, past, input_ids=batch.suffix_ids,
                                   attention_mask=torch.cat([mask, batch.suffix_mask], dim=1),
                                   position_ids=pos[:, None] + torch.arange(batch.suffix_ids.shape[1]))
        want = plain_forward(student, batch, [0])[0]
    assert past.get_seq_length() == mask.shape[1] + batch.suffix_ids.shape[1]
    a = batch.answer_start
    targets = batch.suffix_ids[:, a:].masked_fill(batch.suffix_mask[:, a:] == 0, -100)
    logits = out.logits[:, a - 1 : -1]
    task = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(task, want, **TOL)

"""SIM-CoT (lori/model/step_decoder.py, lori/training/recipes/sim_cot.py): which thoughts decode which
step, the auxiliary decoder learns to read a step back from its thoughts, its loss reaches the
student through the thoughts, and the saved student is a plain Coconut checkpoint."""
from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from lori import distill, evaluate
from lori.distill import DistillConfig
from lori.model.step_decoder import StepDecoder, step_groups
from lori.training.recipes import sim_cot
from lori.training.recipes.base import RecipeContext
from tests.tiny import RUNTIME, TINY


def test_step_groups_follow_the_reference_mapping():
    assert step_groups(3, 3) == [[0], [1], [2]]
    assert step_groups(5, 3) == [[0], [1], [2, 3, 4]]          # more steps: joined into the last group
    assert step_groups(2, 3) == [[0], [1], []]                 # more groups: the rest have no target
    assert step_groups(4, 2, covered=2) == [[0], [1]]          # Coconut stage 2: the two replaced steps
    assert step_groups(1, 2, covered=2) == [[0], []]
    assert step_groups(4, 0) == []


def tiny_lm(seed: int = 0):
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(LlamaConfig(vocab_size=20, **json.loads(TINY)))


def test_decoder_learns_to_write_each_step_back_from_its_thoughts():
    """Two fixed thought groups, two different steps: the decoder's loss falls from ~log(vocab) to
    near 0 and greedy decoding from each group reads its own step back."""
    decoder = StepDecoder(tiny_lm())
    g = torch.Generator().manual_seed(1)
    thoughts = torch.randn(2, 2, 32, generator=g)                               # [S, c, d]
    ids = torch.tensor([[3, 7, 5, 1], [9, 4, 1, 0]])                             # "step <eos>", right-padded
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    embed = decoder.lm.get_input_embeddings()
    opt = torch.optim.Adam(decoder.parameters(), lr=1e-2)
    first = None
    for _ in range(150):
        loss = decoder(thoughts, embed(ids).detach(), ids, mask)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 2.0 and loss.item() < 0.05
    with torch.no_grad():
        for s, n in ((0, 4), (1, 3)):
            read, inputs = [], thoughts[s : s + 1]
            for _ in range(n):
                nxt = int(decoder.lm(inputs_embeds=inputs).logits[0, -1].argmax())
                read.append(nxt)
                inputs = torch.cat([inputs, embed(torch.tensor([[nxt]]))], dim=1)
            assert read == ids[s, :n].tolist()


def test_decoder_loss_ignores_padding_and_weights_steps_equally():
    decoder = StepDecoder(tiny_lm())
    thoughts = torch.randn(2, 1, 32)
    ids = torch.tensor([[3, 7, 5, 1], [9, 1, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    embeds = decoder.lm.get_input_embeddings()(ids)
    both = decoder(thoughts, embeds, ids, mask)
    one = decoder(thoughts[:1], embeds[:1], ids[:1], mask[:1])
    two = decoder(thoughts[1:], embeds[1:, :2], ids[1:, :2], mask[1:, :2])
    torch.testing.assert_close(both, (one + two) / 2)


@pytest.fixture(scope="module")
def trained(tiny_teacher, tmp_path_factory):
    root = tmp_path_factory.mktemp("sim_cot")
    cfg = DistillConfig(method="sim_cot", steps=9, batch_size=8, log_every=1, lr=3e-3, seed=0, threads=1,
                        device="cpu", checkpoint_every=0, max_stage=2, steps_per_stage=3, thoughts_per_step=2)
    rows = distill.run(cfg, str(tiny_teacher.teacher), str(tiny_teacher.train), str(root / "student"),
                       metrics=str(root / "metrics.jsonl"))
    return {"root": root, "rows": rows, "cfg": cfg}


def test_sim_cot_trains_logs_the_decoder_and_counts_its_flops(trained, tiny_teacher):
    rows = trained["rows"]
    assert [int(r["stage"]) for r in rows] == [1] * 3 + [2] * 3 + [3] * 3
    assert all(math.isfinite(r["decoder"]) and r["decoder"] > 0 for r in rows)
    assert all(r["loss"] == pytest.approx(r["task"] + r["decoder"], rel=1e-5) for r in rows)   # decoder_weight 1
    # the same steps as Coconut cost more: the decoder's forward and backward are counted
    coconut = DistillConfig(method="coconut", steps=9, batch_size=8, log_every=1, lr=3e-3, seed=0, threads=1,
                            device="cpu", checkpoint_every=0, max_stage=2, steps_per_stage=3, thoughts_per_step=2)
    plain = distill.run(coconut, str(tiny_teacher.teacher), str(tiny_teacher.train),
                        str(trained["root"] / "coconut"))
    assert all(s["flops"] > c["flops"] for s, c in zip(rows, plain))
    assert [r["task"] for r in rows][0] == pytest.approx(plain[0]["task"], rel=1e-6)   # same first batch and model


def test_saved_sim_cot_student_is_a_coconut_checkpoint(trained, tiny_teacher):
    """The decoder is dropped: the same tensors as a Coconut student (no extra parameters), K = max_stage * c,
    hidden-state feedback; it evaluates like any latent student."""
    student_dir = trained["root"] / "student"
    weights = load_file(str(student_dir / "model.safetensors"))
    teacher = load_file(str(tiny_teacher.teacher / "model.safetensors"))
    assert weights.keys() == teacher.keys()
    assert sum(t.numel() for t in weights.values()) == sum(t.numel() for t in teacher.values())
    assert not (student_dir / "projection.safetensors").exists()
    assert json.loads((student_dir / "latent.json").read_text()) == {"latent_steps": 4, "feedback": "hidden"}
    out = trained["root"] / "eval" / "test.jsonl"
    evaluate.main(["--method", "sim_cot", "--model", str(student_dir), "--data", str(tiny_teacher.test), "--out",
                   str(out), "--batch-size", "6", "--max-new-tokens", "8", *RUNTIME])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 12 and all(r["latent_steps"] == 4 for r in rows)


def test_decoder_loss_reaches_the_student_through_the_thoughts(tiny_teacher):
    """With the answer loss left out, the decoder's term alone still moves the student's weights:
    the thoughts are not detached (as in the reference)."""
    cfg = DistillConfig(method="sim_cot", steps=9, batch_size=4, seed=0, threads=1, device="cpu",
                        max_stage=2, steps_per_stage=3, thoughts_per_step=2)
    student, tok = distill.build_student(cfg, str(tiny_teacher.teacher))
    from lori.data.records import read_records

    records = read_records(tiny_teacher.train)
    recipe = sim_cot.build(cfg.args, RecipeContext(student, tok, records, "cpu", 0, cfg.steps))
    assert isinstance(student.step_decoder, StepDecoder)
    recipe.on_step(0)
    terms = recipe.loss_step([0, 1, 2, 3])
    student.zero_grad()
    terms["decoder"].backward()
    layer = student.model.model.layers[-1].mlp.down_proj.weight
    assert layer.grad is not None and layer.grad.abs().sum() > 0
    assert student.step_decoder.lm.model.layers[0].mlp.down_proj.weight.grad.abs().sum() > 0


def assert_decoder_term(terms, plain_terms, student, seqs, latents, pad: int, weight: float) -> None:
    """A recipe's step with the decoder against the same step without it: its ``decoder`` term is the
    decoder's loss on ``latents`` [S, 1, d] -> ``seqs`` (hand-built), added to the loss with ``weight``
    and to the FLOPs as 6 x the decoder's parameters x its positions."""
    from lori.model.loading import num_params
    from lori.model.sequences import pad_right
    from lori.training.loop import step_flops

    decoder = student.step_decoder
    ids, mask = pad_right(seqs, pad)
    with torch.no_grad():
        want = decoder(torch.stack(latents), student.model.get_input_embeddings()(ids), ids, mask)
    torch.testing.assert_close(terms["decoder"].detach(), want)
    torch.testing.assert_close(terms["loss"].detach(), plain_terms["loss"].detach() + weight * want)
    extra = step_flops(num_params(decoder), ids.numel() + len(seqs))
    assert float(terms["flops"]) == float(plain_terms["flops"]) + extra


def assert_trains_through_thoughts_and_saves_plain(terms, student, plain, tok, tmp_path) -> None:
    """The decoder term's gradient reaches the projection (the thoughts are not detached), and the
    saved student has the files of the same student trained without the decoder."""
    student.zero_grad()
    terms["decoder"].backward()
    assert student.projection.net[0].weight.grad.abs().sum() > 0
    student.save(tmp_path / "s", tok)
    plain.save(tmp_path / "p", tok)
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == sorted(p.name for p in (tmp_path / "p").iterdir())


def test_sim_cot_on_codi_decodes_thought_k_into_step_k(tiny_teacher, tmp_path):
    """CODI + SIM-CoT's decoder (decoder_weight > 0): the term equals the decoder's loss on thought k
    (as fed) -> step k (the last thought: the remaining steps joined), is added with its weight and its
    FLOPs, reaches the student through the thoughts, and the saved student is a plain CODI checkpoint."""
    from lori.data.records import read_records
    from lori.model.sequences import step_ids, student_batch
    from lori.training.recipes import codi

    records = read_records(tiny_teacher.train)
    idx = [0, 1, 2, 3]
    base_cfg = DistillConfig(method="codi", latent_steps=2, threads=1, device="cpu")
    cfg = DistillConfig(method="codi", latent_steps=2, decoder_weight=0.5, threads=1, device="cpu")
    torch.manual_seed(0)
    plain, tok = distill.build_student(base_cfg, str(tiny_teacher.teacher))
    plain_terms = codi.build(base_cfg.args, RecipeContext(plain, tok, records, "cpu", 0, cfg.steps)).loss_step(idx)
    student, _ = distill.build_student(cfg, str(tiny_teacher.teacher))
    student.projection.load_state_dict(plain.projection.state_dict())
    terms = codi.build(cfg.args, RecipeContext(student, tok, records, "cpu", 0, cfg.steps)).loss_step(idx)
    assert isinstance(student.step_decoder, StepDecoder)
    # by hand: thought 0 -> step 0, thought 1 -> steps 1.. joined, each closed by one <eos>
    fed = student.thought_inputs(student_batch(tok, [records[i] for i in idx], 2))
    seqs, latents = [], []
    for row, i in enumerate(idx):
        steps = step_ids(tok, records[i].steps)
        seqs += [steps[0] + [tok.eos_token_id], [t for s in steps[1:] for t in s] + [tok.eos_token_id]]
        latents += [fed[row, 0:1], fed[row, 1:2]]
    assert_decoder_term(terms, plain_terms, student, seqs, latents, tok.pad_token_id, 0.5)
    assert_trains_through_thoughts_and_saves_plain(terms, student, plain, tok, tmp_path)


def test_sim_cot_on_lori_decodes_the_steps_its_thoughts_stand_for(tiny_teacher, tmp_path):
    """LoRi + SIM-CoT's decoder (decoder_weight > 0): in a curriculum stage k only the k replaced steps
    are decoded (thought j -> step j); in the final layout thought j -> step j, the last thought the
    remaining steps joined. The term equals the decoder's loss computed by hand, is added with its weight
    and FLOPs, and the saved student is a plain LoRi checkpoint."""
    from lori.data.records import read_records
    from lori.model.sequences import step_ids, student_batch
    from lori.training.recipes import lori

    records = read_records(tiny_teacher.train)
    idx, k = [0, 1, 2, 3], 3
    knobs = dict(method="lori", latent_steps=k, alpha=0.0, gamma=0.0, cot_stages=2, steps_per_stage=3, steps=9,
                 threads=1, device="cpu")
    torch.manual_seed(0)
    plain, tok = distill.build_student(DistillConfig(**knobs), str(tiny_teacher.teacher))
    plain_recipe = lori.build(DistillConfig(**knobs).args, RecipeContext(plain, tok, records, "cpu", 0, 9))
    cfg = DistillConfig(**knobs, decoder_weight=0.5)
    student, _ = distill.build_student(cfg, str(tiny_teacher.teacher))
    student.projection.load_state_dict(plain.projection.state_dict())
    recipe = lori.build(cfg.args, RecipeContext(student, tok, records, "cpu", 0, 9))
    assert isinstance(student.step_decoder, StepDecoder)
    fed = student.thought_inputs(student_batch(tok, [records[i] for i in idx], k))
    eos = tok.eos_token_id
    for step, stage in ((0, 1), (6, 3)):   # stage 1 of 2, then the final layout
        recipe.on_step(step)
        plain_recipe.on_step(step)
        terms, plain_terms = recipe.loss_step(idx), plain_recipe.loss_step(idx)
        seqs, latents = [], []
        for row, i in enumerate(idx):
            steps = step_ids(tok, records[i].steps)
            if stage == 1:
                groups = [steps[:1]]
            else:
                groups = [steps[j : j + 1] for j in range(k - 1)] + [steps[k - 1 :]]
            for g, group in enumerate(groups):
                if group:
                    seqs.append([t for s in group for t in s] + [eos])
                    latents.append(fed[row, g : g + 1])
        assert_decoder_term(terms, plain_terms, student, seqs, latents, tok.pad_token_id, 0.5)
    assert_trains_through_thoughts_and_saves_plain(terms, student, plain, tok, tmp_path)
    assert load_file(str(tmp_path / "s" / "model.safetensors")).keys() == \
        load_file(str(tmp_path / "p" / "model.safetensors")).keys()
    with pytest.raises(ValueError, match="decoder_weight"):
        DistillConfig(method="lori", latent_steps=0, alpha=0.0, gamma=0.0, decoder_weight=1.0)

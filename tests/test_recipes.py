"""The baseline recipes (lori/training/recipes/): each method's defining mechanics, pinned with real numbers,
and each trains a few steps on the tiny model and evaluates through lori.evaluate."""
from __future__ import annotations

import json
import math
import re

import pytest
import torch
from torch.nn import functional as F

from lori import distill, evaluate
from lori.data.records import ANSWER_SEP, EOT, Record, cot_text, read_records
from lori.distill import DistillConfig
from lori.training.recipes.base import RecipeContext
from lori.model.chain import Chain
from lori.model.latent import LatentStudent
from lori.training.losses import normalized_smooth_l1
from lori.training.recipes import coconut, codi, icot_si, stages
from lori.model.sequences import drop_cot_tokens, encode, step_ids, student_batch, teacher_batch, teacher_sequence
from tests.runs import ROOT, planned_jobs, snakemake
from tests.tiny import RUNTIME


def build(module, cfg, model, tok, records, device="cpu"):
    """A recipe's loss step as the distill stage builds it (typed args + context)."""
    return module.build(cfg.args, RecipeContext(model, tok, records, device, cfg.seed, cfg.steps))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_teacher):
    """The shared tiny teacher (3 SFT steps) on 48 generated problems, 12 test problems, and a directory for outputs."""
    return {"train": str(tiny_teacher.train), "test": str(tiny_teacher.test), "teacher": str(tiny_teacher.teacher),
            "dir": tmp_path_factory.mktemp("recipes")}


@pytest.fixture(scope="module")
def student(tiny):
    """The teacher wrapped as a K=6 latent student (projection feedback) and its tokenizer."""
    cfg = DistillConfig(method="codi", threads=1, device="cpu")
    return distill.build_student(cfg, tiny["teacher"])


def text(tokenizer, ids) -> str:
    return tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)


FOUR = Record("r4", "Tom has 8 rocks . he loses 4 . he finds 52 more . he gets 2 times as many . how many now ?",
              ["<<8-4=4>>", "<<4+52=56>>", "<<56*2=112>>", "<<112-12=100>>"], "100")
TWO = Record("r2", "Sam has 7 stamps . he gets 5 more . he gets 2 times as many . how many now ?",
             ["<<7+5=12>>", "<<12*2=24>>"], "24")


# ---------------------------------------------------------------- Coconut
def test_coconut_stage_schedule():
    assert [stages.stage_at(s, 100, 3) for s in (0, 99, 100, 199, 200, 299, 300, 999)] == [1, 1, 2, 2, 3, 3, 4, 4]


@pytest.mark.parametrize("stage", [1, 2, 3, 4])
def test_coconut_stage_k_replaces_k_steps_by_k_c_thoughts(tiny, student, stage):
    _, tok = student
    batch, thoughts = stages.coconut_batch(tok, [FOUR], stage, thoughts_per_step=2, max_stage=3)
    kept = FOUR.steps[stage:] if stage <= 3 else []            # final stage: every step removed
    assert thoughts == 2 * min(stage, 3)                          # k*c latent slots; max_stage*c at the end
    suffix = batch.suffix_ids[0][batch.suffix_mask[0] == 1].tolist()
    assert suffix[0] == tok.convert_tokens_to_ids(EOT) and batch.answer_start == 1   # loss starts after <eot>
    expected = encode(tok, cot_text(kept)) + encode(tok, f" {ANSWER_SEP}") + encode(tok, " 100") + [tok.eos_token_id]
    assert suffix[1:] == expected
    assert text(tok, suffix[1:]).split(ANSWER_SEP)[0].split() == " ".join(kept).split() or not kept
    prompt = batch.prompt_ids[0][batch.prompt_mask[0] == 1].tolist()
    assert prompt[-1] == tok.convert_tokens_to_ids("<bot>")


def test_coconut_short_record_loses_all_steps_but_keeps_k_c_thoughts(student):
    _, tok = student
    batch, thoughts = stages.coconut_batch(tok, [TWO, FOUR], 3, thoughts_per_step=2, max_stage=3)
    assert thoughts == 6
    rows = [batch.suffix_ids[i][batch.suffix_mask[i] == 1].tolist() for i in range(2)]
    assert rows[0][1:] == encode(tok, f" {ANSWER_SEP} 24") + [tok.eos_token_id]
    assert rows[1][1:] == encode(tok, cot_text(FOUR.steps[3:]) + f" {ANSWER_SEP} 100") + [tok.eos_token_id]


def test_coconut_feeds_the_hidden_state_back_and_counts_thought_positions(tiny, monkeypatch):
    cfg = DistillConfig(method="coconut", steps=400, steps_per_stage=100, threads=1, device="cpu")
    model, tok = distill.build_student(cfg, tiny["teacher"])
    assert model.projection is None and model.feedback == "hidden" and model.latent_steps == 6
    batch, k = stages.coconut_batch(tok, [FOUR, TWO], 2, 2, 3)
    blocks = []                                   # positions per block through the model's own layers
    hook = model.model.model.layers[0].register_forward_pre_hook(
        lambda m, args, kw: blocks.append((args[0] if args else kw["hidden_states"]).shape[1]), with_kwargs=True)
    thoughts = []                                 # one-position steps of the latent chain (fused in training)
    step = Chain.step
    monkeypatch.setattr(Chain, "step", lambda self, *a, **kw: thoughts.append(1) or step(self, *a, **kw))
    model(batch, None, latent_steps=k)
    hook.remove()
    # the prompt block, then stage 2 with c = 2: four single-position thoughts, then the suffix block
    assert blocks[0] == batch.prompt_ids.shape[1] and blocks[-1] == batch.suffix_ids.shape[1] and len(thoughts) == 4
    assert blocks[1:-1] in ([], [1] * 4)          # fused training steps bypass the layer's call
    # the thought fed back is the last hidden state itself
    last = torch.randn(2, 32)
    assert torch.equal(model._feed(last), last)


def test_coconut_resets_the_optimizer_at_stage_boundaries(tiny, student):
    model, tok = student
    cfg = DistillConfig(method="coconut", steps=400, steps_per_stage=100, threads=1, device="cpu")
    recipe = build(coconut, cfg, model, tok, read_records(tiny["train"]))
    assert [s for s in range(400) if recipe.on_step(s)] == [100, 200, 300]


# ---------------------------------------------------------------- iCoT-SI
def test_icot_schedule_removes_the_scheduled_number_of_tokens():
    per = icot_si.steps_per_token(80, 8)
    assert per == 10
    assert [icot_si.scheduled_removal(s, per, None) for s in (0, 9, 10, 55, 399)] == [0, 0, 1, 5, 39]
    assert icot_si.scheduled_removal(390, per, 39) == math.inf and icot_si.scheduled_removal(389, per, 39) == 38
    assert icot_si.scheduled_removal(7, icot_si.steps_per_token(3, 8), None) == 7   # < 1 step per token: one per step
    # smoothing off: exactly the scheduled count, capped at each CoT's length
    assert icot_si.removal_counts([30, 3, 12], 5, None) == [5, 3, 5]
    assert icot_si.removal_counts([30, 3], math.inf, None) == [30, 3]


def test_icot_drops_tokens_from_the_front_of_the_cot(student):
    _, tok = student
    seq = teacher_sequence(tok, FOUR)
    cut = drop_cot_tokens(seq, 7)
    cot = seq.input_ids[seq.prompt_len : seq.prompt_len + seq.cot_len]
    assert cut.input_ids == seq.input_ids[: seq.prompt_len] + cot[7:] + seq.input_ids[seq.prompt_len + seq.cot_len :]
    assert cut.cot_len == seq.cot_len - 7 and cut.input_ids[cut.anchor + 1] == seq.input_ids[seq.anchor + 1]
    gone = drop_cot_tokens(seq, 10_000)                               # all CoT removed = the No-CoT sequence
    no_cot = student_batch(tok, [FOUR], 0)
    assert gone.input_ids == no_cot.prompt_ids[0].tolist() + no_cot.suffix_ids[0].tolist()


def test_icot_removal_smoothing_distribution():
    lam = 1.0
    p = icot_si.removal_distribution(lam)
    assert p.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert p[0].item() == pytest.approx(1 - math.exp(-1)) and p[1].item() / p[0].item() == pytest.approx(math.exp(-1))
    gen = torch.Generator().manual_seed(0)
    counts = torch.tensor(icot_si.removal_counts([1000] * 20000, 5, p, gen)) - 5
    assert counts.min().item() == 0
    assert (counts == 0).float().mean().item() == pytest.approx(1 - math.exp(-1), abs=0.015)
    assert counts.float().mean().item() == pytest.approx(math.exp(-1) / (1 - math.exp(-1)), abs=0.03)  # geometric mean
    # the paper's lambda = 4: almost always the scheduled count, rarely one more
    four = torch.tensor(icot_si.removal_counts([1000] * 20000, 0, icot_si.removal_distribution(4.0), gen))
    assert (four == 0).float().mean().item() == pytest.approx(1 - math.exp(-4), abs=0.005) and four.max().item() <= 3


def test_icot_resets_the_optimizer_when_the_count_grows_and_refuses_a_short_schedule(tiny, student):
    model, tok = student
    records = read_records(tiny["train"])
    longest = max(teacher_sequence(tok, r).cot_len for r in records)
    cfg = DistillConfig(method="icot_si", steps=longest * 2 + 5, steps_per_stage=2, remove_per_stage=1,
                        threads=1, device="cpu")
    recipe = build(icot_si, cfg, model, tok, records)
    resets = [s for s in range(cfg.steps) if recipe.on_step(s)]
    assert resets == list(range(2, 2 * longest + 1, 2))             # one per removed token, none once all is gone
    recipe.on_step(cfg.steps - 1)
    terms = recipe.loss_step(list(range(8)))
    assert terms["cot_left"].item() == 0 and terms["loss"].requires_grad
    short = DistillConfig(method="icot_si", steps=longest, steps_per_stage=1, remove_per_stage=1, threads=1, device="cpu")
    with pytest.raises(ValueError, match=f"longest CoT has {longest} tokens"):
        build(icot_si, short, model, tok, records)


# ---------------------------------------------------------------- CODI
def test_normalized_smooth_l1_is_zero_at_the_teacher_and_scaled_by_its_std():
    t = torch.randn(4, 3, 16)
    assert normalized_smooth_l1(t.clone(), t).item() == 0.0
    s = t + 0.01
    by_hand = sum(F.smooth_l1_loss(s[:, l], t[:, l]) / t[:, l].std() for l in range(3)) / 3
    assert normalized_smooth_l1(s, t).item() == pytest.approx(by_hand.item(), rel=1e-6)
    teacher = t.clone().requires_grad_()
    student = s.clone().requires_grad_()
    normalized_smooth_l1(student, teacher).backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0     # the teacher's states get no gradient


def test_codi_distils_the_pre_answer_position(student):
    _, tok = student
    answer_ids = encode(tok, " 100")
    seq = teacher_sequence(tok, FOUR, codi.teacher_steps(FOUR.steps, include_last_step=False))
    assert seq.input_ids[seq.anchor + 1] == answer_ids[0]             # the anchor predicts the first answer token
    assert seq.input_ids[seq.anchor] == encode(tok, f" {ANSWER_SEP}")[-1]
    assert tok.decode(seq.input_ids[seq.prompt_len : seq.prompt_len + seq.cot_len]).split() == " ".join(FOUR.steps[:-1]).split()
    sb = student_batch(tok, [FOUR], 6)
    assert sb.suffix_ids[0, sb.answer_start].item() == answer_ids[0]  # student side: answer_start - 1 is the same token
    assert sb.suffix_ids[0, sb.answer_start - 1].item() == seq.input_ids[seq.anchor]


def test_codi_distillation_gradient_reaches_only_the_student_pass(tiny, student):
    model, tok = student
    torch.manual_seed(0)
    records = read_records(tiny["train"])[:4]
    cfg = DistillConfig(method="codi", threads=1, device="cpu")
    terms = build(codi, cfg, model, tok, records).loss_step([0, 1, 2, 3])
    assert set(terms) == {"loss", "task", "distill", "teacher", "flops"}
    assert terms["loss"].item() == pytest.approx((terms["task"] + terms["distill"] + terms["teacher"]).item(), rel=1e-5)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(terms["distill"], params, allow_unused=True)
    # reference: the teacher pass run under no_grad (as CODI's code does), the student pass with grad
    seqs = [teacher_sequence(tok, r, codi.teacher_steps(r.steps, False)) for r in records]
    with torch.no_grad():
        t_out = model.model(**teacher_batch(tok, seqs), output_hidden_states=True)
    t_states = codi.teacher_anchor_states(t_out.hidden_states, torch.tensor([s.anchor for s in seqs]))
    layers = list(range(model.model.config.num_hidden_layers + 1))
    s_out = model(student_batch(tok, records, 6, [0, 1, 2, 3]), layers)
    ref = normalized_smooth_l1(s_out.anchor, t_states)
    assert ref.item() == pytest.approx(terms["distill"].item(), rel=1e-5)
    ref_grads = torch.autograd.grad(ref, params, allow_unused=True)
    for g, r in zip(grads, ref_grads):
        assert (g is None) == (r is None) and (g is None or torch.allclose(g, r, atol=1e-7))
    # control: letting the gradient into the teacher pass changes it (so the check above can fail)
    t_live = codi.teacher_anchor_states(model.model(**teacher_batch(tok, seqs), output_hidden_states=True).hidden_states,
                                        torch.tensor([s.anchor for s in seqs]))
    s_out = model(student_batch(tok, records, 6, [0, 1, 2, 3]), layers)
    live = sum(F.smooth_l1_loss(s_out.anchor[:, l], t_live[:, l]) / t_live[:, l].detach().std()
               for l in range(len(layers))) / len(layers)
    live_grads = torch.autograd.grad(live, params, allow_unused=True)
    assert any(g is not None and not torch.allclose(g, r, atol=1e-7) for g, r in zip(live_grads, ref_grads))


# ---------------------------------------------------------------- config
@pytest.mark.parametrize("kwargs, fragment", [
    ({"method": "lori", "max_stage": 2}, "max_stage is a knob of coconut"),
    ({"method": "codi", "steps_per_stage": 5}, "steps_per_stage is a knob of lori and no_cot and coconut and icot_si"),
    ({"method": "coconut", "latent_steps": 4}, "max_stage * thoughts_per_step = 6"),
    ({"method": "coconut", "steps": 300, "steps_per_stage": 100}, "must exceed max_stage * steps_per_stage"),
    ({"method": "codi", "gamma": 1.0}, "does not read the dumped teacher's targets"),
    ({"method": "icot_si", "latent_steps": 2}, "latent_steps must be 0"),
])
def test_recipe_configs_fail_loudly(kwargs, fragment):
    with pytest.raises(ValueError, match=re.escape(fragment)):
        DistillConfig(**kwargs)


def test_in_loop_codi_needs_no_targets():
    assert not DistillConfig(method="codi").needs_targets
    assert DistillConfig(method="lori", alpha=0.0, anchor_space="full", anchor_loss="smooth_l1").needs_targets


def test_recipes_refuse_records_without_cot(tiny, tmp_path):
    bare = tmp_path / "bare.jsonl"
    bare.write_text("".join(json.dumps({"id": f"b{i}", "question": "q", "steps": [], "answer": "3"}) + "\n"
                            for i in range(8)))
    from lori.data.records import DataError

    for method in ("codi", "coconut", "icot_si"):
        with pytest.raises(DataError, match="empty chain of thought"):
            distill.main(["--method", method, "--teacher", tiny["teacher"], "--records", str(bare),
                          "--out", str(tmp_path / method), "--steps", "5", *RUNTIME,
                          *(["--steps-per-stage", "1"] if method == "coconut" else [])])


# ---------------------------------------------------------------- train + evaluate end to end
@pytest.mark.parametrize("method, extra, k, feedback", [
    ("codi", [], 6, "projection"),
    ("coconut", ["--steps-per-stage", "1"], 6, "hidden"),
    ("icot_si", ["--steps-per-stage", "1", "--remove-all-beyond", "2"], 0, "projection"),
])
def test_each_recipe_trains_saves_and_evaluates(tiny, method, extra, k, feedback):
    out, metrics = tiny["dir"] / f"s_{method}", tiny["dir"] / f"{method}_metrics.jsonl"
    distill.main(["--method", method, "--teacher", tiny["teacher"], "--records", tiny["train"], "--out", str(out),
                  "--metrics", str(metrics), "--steps", "5", "--batch-size", "4", "--log-every", "1", *extra, *RUNTIME])
    assert json.loads((out / "latent.json").read_text()) == {"latent_steps": k, "feedback": feedback}
    assert (out / "projection.safetensors").exists() == (feedback == "projection" and k > 0)
    rows = [json.loads(l) for l in metrics.read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5] and all(math.isfinite(r["loss"]) for r in rows)
    if method == "coconut":
        assert [r["stage"] for r in rows] == [1, 2, 3, 4, 4]
    if method == "icot_si":
        assert [r["scheduled"] for r in rows][:2] == [0, 1] and rows[-1]["cot_left"] == 0
    if method == "codi":
        assert all(r["distill"] > 0 and r["teacher"] > 0 for r in rows)
    loaded, tok = LatentStudent.load(out)
    assert loaded.latent_steps == k and loaded.feedback == feedback
    if k > 0:                                           # the report decodes every latent student's thoughts
        from lori.analysis.logit_lens import decode_thoughts

        assert len(decode_thoughts(loaded.eval(), tok, FOUR.question)) == k
    summary = evaluate.run(evaluate.EvaluateConfig(method=method, max_new_tokens=4, threads=1, device="cpu"),
                           str(out), tiny["test"], str(tiny["dir"] / f"eval_{method}.jsonl"))
    assert summary["n"] == 12 and summary["latent_steps"] == k and 0 <= summary["accuracy"] <= 1
    # the thought-shuffle test runs on every student with thoughts (Coconut's are raw hidden states)
    assert ("thought_shuffle" in summary) == (k > 0)
    rows = [json.loads(l) for l in metrics.read_text().splitlines()]
    assert all(r["flops"] > 0 for r in rows)          # compute matching reads every student's FLOPs


def test_baselines_profile_plans_every_method_and_recipes_need_no_targets(tmp_path):
    res = snakemake(tmp_path, "-n", "-p", configfile=ROOT / "config" / "profiles" / "baselines.yaml")
    assert res.returncode == 0, res.stderr[-2000:]
    jobs = planned_jobs(res)
    assert jobs["distill"] == 5 and jobs["evaluate"] == 6 * 2
    out = res.stdout + res.stderr
    for method in ("codi", "coconut", "icot_si"):
        line = next(l for l in out.splitlines() if "lori.distill" in l and f"--method {method} " in l)
        assert "--targets" not in line and "--factors" not in line
    lori_line = next(l for l in out.splitlines() if "lori.distill" in l and "--method lori " in l)
    assert "--targets" in lori_line


@pytest.mark.parametrize("method, extra", [("icot_si", ["--steps-per-stage", "2", "--remove-per-stage", "1",
                                                        "--remove-all-beyond", "2"]),
                                           ("coconut", ["--steps-per-stage", "1"])])
def test_a_killed_recipe_run_resumes_to_the_same_weights(tiny, tmp_path, monkeypatch, method, extra):
    """The curriculum (stage, removal count, smoothing offsets, optimizer resets) is a function of the
    step, so a run stopped after its step-3 checkpoint and rerun ends bitwise where a straight run does."""
    from safetensors.torch import load_file

    from lori.training.recipes import registry

    args = ["--method", method, "--teacher", tiny["teacher"], "--records", tiny["train"], "--steps", "6",
            "--batch-size", "4", "--checkpoint-every", "3", *extra, *RUNTIME]
    distill.main([*args, "--out", str(tmp_path / "straight")])
    real_build = registry.RECIPES[method]

    def crashing_build(*a, **kw):
        recipe, calls = real_build(*a, **kw), []

        def loss_step(idx):
            calls.append(1)
            if len(calls) == 5:                      # step 4 of 6: after the step-3 checkpoint
                raise KeyboardInterrupt("killed")
            return recipe.loss_step(idx)
        return registry.Recipe(loss_step, recipe.on_step)

    monkeypatch.setitem(registry.RECIPES, method, crashing_build)
    with pytest.raises(KeyboardInterrupt):
        distill.main([*args, "--out", str(tmp_path / "resumed")])
    assert (tmp_path / "resumed.ckpt" / "meta.json").exists()
    monkeypatch.setitem(registry.RECIPES, method, real_build)
    distill.main([*args, "--out", str(tmp_path / "resumed")])
    a, b = load_file(str(tmp_path / "straight" / "model.safetensors")), load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- LoRi step anchors
def test_step_targets_summarise_each_cot_step_and_place_it_on_its_thought():
    """core_step_targets cuts each trajectory into its CoT steps (mean of each step's core states),
    pads to the longest, and matches step j of n to thought ceil((j+1) K / n) - 1; Coconut's stage
    k covers only the first k steps (each on the last of its own thoughts)."""
    import numpy as np

    from lori.training.step_info import core_step_targets

    rng = np.random.default_rng(0)
    lengths = [[3, 2], [2, 2, 4], []]                       # the third example has no CoT
    offsets = np.concatenate([[0], np.cumsum([sum(x) for x in lengths])])
    core = rng.standard_normal((offsets[-1], 2, 3)).astype(np.float32)
    t = core_step_targets(core, offsets, lengths)
    assert t.slots([0, 1, 2], 6).tolist() == [[2, 5, -1], [1, 3, 5], [-1, -1, -1]]
    assert t.slots([1, 0], 4, covered=2).tolist() == [[1, 3, -1], [1, 3, -1]]   # stage 2, c = 2
    assert t.slots([1], 2, covered=1).tolist() == [[1, -1, -1]]                  # stage 1, c = 2
    np.testing.assert_allclose(t.states[0, 0].numpy(), core[0:3].mean(0), rtol=1e-6)
    np.testing.assert_allclose(t.states[1, 2].numpy(), core[9:13].mean(0), rtol=1e-6)
    # a subword tokenizer's per-step counts may not add up to the trajectory: rescaled, not refused
    t = core_step_targets(core, offsets, [[2, 2], [4, 4, 8], []], "last")
    np.testing.assert_allclose(t.states[1].numpy(), core[[6, 8, 12]], rtol=1e-6)


def test_step_result_points_find_the_token_that_predicts_each_result(student):
    """step_summary: result takes, in each CoT step, the state at its last "=" token: the one whose
    next token is the step's result (the linear probe in docs/results.md finds the result there)."""
    import numpy as np

    from lori.training.step_info import core_step_targets, record_step_lengths, record_step_points

    _, tok = student
    records = [Record("a", "q", ["<<2-10=3>>", "<<3*4=1>>"], "1"), Record("b", "q", ["no equals here"], "1")]
    points, lengths = record_step_points(tok, records), record_step_lengths(tok, records)
    for r, pts, lens in zip(records, points, lengths):
        for step, p, n in zip(step_ids(tok, r.steps), pts, lens):
            tokens = tok.convert_ids_to_tokens(step)
            assert p == (max(k for k, t in enumerate(tokens) if "=" in t) if "=" in "".join(tokens) else n - 1)
    assert tok.convert_ids_to_tokens(step_ids(tok, ["<<2-10=3>>"])[0])[points[0][0]] == "="
    offsets = np.concatenate([[0], np.cumsum([sum(x) for x in lengths])])
    core = np.random.default_rng(0).standard_normal((offsets[-1], 2, 3)).astype(np.float32)
    t = core_step_targets(core, offsets, lengths, "result", points)
    np.testing.assert_allclose(t.states[0, :2].numpy(), core[[points[0][0], lengths[0][0] + points[0][1]]])
    with pytest.raises(ValueError, match="needs each step's result token"):
        core_step_targets(core, offsets, lengths, "result")


def test_lori_with_step_anchors_trains_and_logs_the_term(tiny):
    """A LoRi student with step_anchor > 0 reads the targets, logs L_step and learns (loss falls)."""
    from lori import dump_hidden, factorize, targets
    from tests.tiny import RUNTIME as RT

    root = tiny["dir"] / "step_anchor"
    hidden, factors, tgt = root / "calib.zarr", root / "factors.zarr", root / "targets.zarr"
    dump_hidden.main(["--teacher", tiny["teacher"], "--records", tiny["train"], "--out", str(hidden),
                      "--calibration-size", "16", "--batch-size", "8", *RT])
    factorize.main(["--hidden", str(hidden), "--out", str(factors), "--rank-layer", "2", "--rank-hidden", "4"])
    targets.main(["--teacher", tiny["teacher"], "--records", tiny["train"], "--factors", str(factors),
                  "--out", str(tgt), "--batch-size", "16", *RT])
    cfg = DistillConfig(method="lori", steps=12, batch_size=8, log_every=1, latent_steps=3, alpha=0, gamma=0,
                        step_anchor=1.0, lr=3e-3, seed=0, threads=1, device="cpu", checkpoint_every=0)
    rows = distill.run(cfg, tiny["teacher"], tiny["train"], str(root / "student"), str(tgt), str(factors),
                       str(root / "metrics.jsonl"))
    steps = [r["step_anchor"] for r in rows]
    assert all(math.isfinite(s) and s > 0 for s in steps)
    assert sum(steps[-3:]) < sum(steps[:3])
    # inside the stage curriculum (the quickstart's setting) L_step acts from the first stage on,
    # while later CoT steps are still written out, and falls there too
    staged = DistillConfig(method="lori", steps=12, batch_size=8, log_every=1, latent_steps=3, alpha=0, gamma=0,
                           step_anchor=3.0, step_summary="result", cot_stages=2, steps_per_stage=4,
                           feedback="hidden", lr=3e-3, seed=0, threads=1, device="cpu", checkpoint_every=0)
    rows = distill.run(staged, tiny["teacher"], tiny["train"], str(root / "staged"), str(tgt), str(factors),
                       str(root / "staged.jsonl"))
    assert [int(r["stage"]) for r in rows] == [1] * 4 + [2] * 4 + [3] * 4
    first = [r["step_anchor"] for r in rows if r["stage"] == 1]
    assert all(math.isfinite(s) and s > 0 for s in first) and first[-1] < first[0]


# ---------------------------------------------------------------- length curriculum (every method)
def test_length_curriculum_starts_every_student_on_the_shortest_cots(tiny, tmp_path, caplog):
    """distill's stream with length_curriculum > 0 draws the fewest-step records first; records
    without CoT steps are refused with a clear error; off, the loop's plain epochs are used."""
    import itertools

    from lori.artifacts.store import ArtifactError

    records = read_records(tiny["train"])
    lengths = [len(r.steps) for r in records]
    assert len(set(lengths)) > 1
    cfg = DistillConfig(method="no_cot", steps=50, batch_size=4, length_curriculum=2, seed=0, threads=1, device="cpu")
    with caplog.at_level("INFO", logger="lori.distill"):
        first = list(itertools.islice(distill.curriculum_stream(cfg, records), 2))
    assert all(lengths[i] == min(lengths) for b in first for i in b)
    assert "length curriculum" in caplog.text
    assert distill.curriculum_stream(DistillConfig(method="no_cot", steps=50), records) is None
    bare = [Record(r.id, r.question, [], r.answer) for r in records]
    with pytest.raises(ArtifactError, match="length_curriculum needs the records' CoT steps"):
        distill.curriculum_stream(cfg, bare)
    out, metrics = tmp_path / "s", tmp_path / "m.jsonl"          # and a student trains with it end to end
    distill.main(["--method", "no_cot", "--teacher", tiny["teacher"], "--records", tiny["train"], "--out", str(out),
                  "--metrics", str(metrics), "--steps", "4", "--batch-size", "4", "--log-every", "1",
                  "--length-curriculum", "2", *RUNTIME])
    rows = [json.loads(l) for l in metrics.read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all(math.isfinite(r["loss"]) for r in rows)


# ---------------------------------------------------------------- LoRi with Coconut's stages (cot_stages)
def test_lori_cot_stages_keep_the_later_steps_as_targets_then_train_the_published_layout(student, monkeypatch):
    """cot_stages = 2: stage k feeds K thoughts and keeps CoT steps k+1.. and the answer as targets
    (Coconut's layout, but K thoughts at every stage), never resets AdamW, and from step
    2 * steps_per_stage on trains LoRi's own layout."""
    from lori.model.latent import LatentStudent as LS
    from lori.training.recipes import lori as lori_recipe

    model, tok = student
    cfg = DistillConfig(method="lori", steps=7, steps_per_stage=3, cot_stages=2, latent_steps=3, alpha=0.0,
                        gamma=0.0, threads=1, device="cpu")
    recipe = build(lori_recipe, cfg, model, tok, [FOUR, TWO])
    seen = []
    real = LS.forward

    def spy(self, batch, layers=None, latent_steps=None, **kwargs):
        seen.append((text(tok, batch.suffix_ids[0]), latent_steps))
        return real(self, batch, layers, latent_steps=latent_steps, **kwargs)

    monkeypatch.setattr(LS, "forward", spy)
    stage_of_step = []
    for step in range(7):
        assert recipe.on_step(step) is False
        terms = recipe.loss_step([0, 1])
        stage_of_step.append(int(terms["stage"]))
        assert math.isfinite(float(terms["loss"].detach()))
    assert stage_of_step == [1, 1, 1, 2, 2, 2, 3]
    assert "56*2=112" in seen[0][0] and "8-4=4" not in seen[0][0] and seen[0][1] == 3   # step 1 replaced
    assert "56*2=112" in seen[3][0] and "4+52=56" not in seen[3][0]                   # steps 1-2 replaced
    assert "=" not in seen[6][0] and "100" in seen[6][0]                               # LoRi's own layout
    with pytest.raises(ValueError, match="must exceed cot_stages"):
        DistillConfig(method="lori", steps=6, steps_per_stage=3, cot_stages=2)
    with pytest.raises(ValueError, match="needs latent_steps >= 1"):
        DistillConfig(method="no_cot", steps=20, cot_stages=2)


def test_lori_with_hidden_feedback_saves_a_student_without_projection(tiny):
    """feedback: hidden (our option for LoRi): the thought fed back is the last hidden state itself;
    the checkpoint says so and has no projection, and evaluation reads it that way."""
    out = tiny["dir"] / "s_lori_hidden"
    distill.main(["--method", "lori", "--teacher", tiny["teacher"], "--records", tiny["train"], "--out", str(out),
                  "--steps", "3", "--batch-size", "4", "--latent-steps", "2", "--alpha", "0", "--gamma", "0",
                  "--feedback", "hidden", *RUNTIME])
    assert json.loads((out / "latent.json").read_text()) == {"latent_steps": 2, "feedback": "hidden"}
    assert not (out / "projection.safetensors").exists()
    loaded, _ = LatentStudent.load(out)
    last = torch.randn(2, loaded.model.config.hidden_size)
    assert loaded.feedback == "hidden" and torch.equal(loaded._feed(last), last)
    with pytest.raises(ValueError, match="feedback is a knob of lori and no_cot"):
        DistillConfig(method="codi", feedback="hidden")

"""teacher_cot at scale: extra sampled rationales (first correct kept) and the generation summary."""
from __future__ import annotations

import json

import torch

from lori import teacher_cot
from lori.data.records import Record, read_records, write_records
from lori.model.generate import Generation

SCRIPT = {  # (question, round) -> generated text; round 1 is greedy, round k+1 is sample k
    ("q1", 1): " <<1+1=2>> #### 2",
    ("q2", 1): " <<2+2=5>> #### 5",
    ("q2", 2): " <<2+2=3>> #### 3",
    ("q2", 3): " <<2*2=4>> #### 4",
    ("q2", 4): " <<2*2=4>> <<4-0=4>> #### 4",   # a later correct sample must not replace the first
    ("q3", 1): " #### 9",                         # right answer but no rationale: not usable
}


def test_samples_keep_the_first_correct_rationale(tmp_path, monkeypatch):
    records = [Record("a", "q1", ["<<1+1=2>>"], "2"), Record("b", "q2", ["<<2+2=4>>"], "4"),
               Record("c", "q3", ["<<3*3=9>>"], "9")]
    train, out, summary_path = tmp_path / "train.jsonl", tmp_path / "cot.jsonl", tmp_path / "summary.json"
    write_records(train, records)
    calls: list[tuple[tuple[str, ...], float]] = []

    def fake_generate(model, tokenizer, questions, max_new_tokens, device, temperature=0.0):
        calls.append((tuple(questions), temperature))
        rounds = [sum(q in c[0] for c in calls) for q in questions]
        return [Generation(SCRIPT.get((q, k), " <<0+0=0>> #### 0"), 5, 0.0) for q, k in zip(questions, rounds)]

    # teacher_cot imports these when it runs (its --help stays torch-free): patched where they live
    monkeypatch.setattr("lori.model.generate.generate_cot", fake_generate)
    monkeypatch.setattr("lori.model.loading.load_checkpoint", lambda path: (torch.nn.Linear(1, 1), None))
    cfg = teacher_cot.TeacherCoTConfig(batch_size=2, samples=3, temperature=0.5, threads=1, device="cpu")
    summary = teacher_cot.run(cfg, "teacher", str(train), str(out), str(summary_path))

    assert [c[1] for c in calls] == [0.0, 0.0, 0.5, 0.5, 0.5]            # greedy in 2 batches, then samples
    assert [set(c[0]) for c in calls[2:]] == [{"q2", "q3"}, {"q2", "q3"}, {"q3"}]   # only the still-wrong ones
    kept = read_records(out)
    assert [r.meta["rationale"] for r in kept] == ["teacher", "teacher", "dataset"]
    assert kept[1].steps == ["<<2*2=4>>"]                                # the first correct sample
    assert kept[2].steps == ["<<3*3=9>>"]                                # fallback: the dataset rationale
    assert summary["greedy_correct"] == 1 and summary["teacher_correct"] == 2 and summary["samples"] == 3
    assert summary["generated_tokens"] == 5 * (3 + 2 + 2 + 1) and summary["tokens_per_s"] > 0
    assert json.loads(summary_path.read_text())["teacher_correct"] == 2


def test_sampling_decoder_draws_from_the_softmax():
    from lori.model.generate import greedy_continue

    class Fixed(torch.nn.Module):   # always the same logits: greedy picks token 1, sampling spreads out
        def forward(self, **kwargs):
            out = type("O", (), {})()
            out.logits = torch.tensor([[[0.0, 0.1, 0.0]]]).expand(kwargs["input_ids"].shape[0], 1, 3)
            out.past_key_values, out.cache = None, None
            return out

    model, logits = Fixed(), torch.tensor([[0.0, 0.1, 0.0]]).repeat(64, 1)
    mask, pos = torch.ones(64, 1, dtype=torch.long), torch.ones(64, dtype=torch.long)
    greedy = greedy_continue(model, None, mask, pos, logits, 4, eos_id=9, pad_id=0)
    assert all(row == [1, 1, 1, 1] for row in greedy)
    torch.manual_seed(0)
    sampled = greedy_continue(model, None, mask, pos, logits, 4, eos_id=9, pad_id=0, temperature=1.0)
    assert {t for row in sampled for t in row} == {0, 1, 2}

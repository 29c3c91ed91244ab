"""The `lori` console script: one entry, every subcommand with a --help that explains itself."""
from __future__ import annotations

import pytest

from lori.__main__ import COMMANDS, main

# a phrase each command's --help must contain: what it does, not just its flags
EXPLAINS = {
    "inspect": "what is inside an artifact",
    "thoughts": "logit lens",
    "compare": "paired exact McNemar",
    "report": "self-contained report.html",
    "prepare_data": "data/<split>.jsonl",
    "teacher_sft": "--steps",
    "teacher_cot": "--max-new-tokens",
    "dump_hidden": "--calibration-size",
    "factorize": "--rank-hidden",
    "targets": "--factors",
    "distill": "--latent-steps",
    "evaluate": "--max-new-tokens",
}


def test_every_command_is_listed():
    assert set(EXPLAINS) == set(COMMANDS)


@pytest.mark.parametrize("command", sorted(EXPLAINS))
def test_help_explains_itself(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert EXPLAINS[command] in text, text[:2000]


def test_top_level_usage_names_the_user_commands(capsys):
    main([])
    text = capsys.readouterr().out
    for fragment in ("inspect PATH", "report RUN", "compare RUN_A RUN_B", "thoughts --run RUN"):
        assert fragment in text


def test_stage_summary_line(caplog):
    import logging
    import re

    from lori.cli import stage_summary

    with caplog.at_level(logging.INFO, logger="lori"):
        line = stage_summary("distill lori", 1000, "steps", "final loss 0.41")
        bare = stage_summary("report")
    assert re.fullmatch(r"done distill lori: [\d.]+ s, [\d.e+]+ steps/s \(1000 steps\); final loss 0\.41", line), line
    assert re.fullmatch(r"done report: [\d.]+ s", bare)
    assert [r.getMessage() for r in caplog.records] == [line, bare]


def test_progress_bars_reach_log_files_as_lines(tmp_path):
    import subprocess
    import sys

    code = ("from lori.progress import tqdm\n"
            "for _ in tqdm(range(5), desc='steps', mininterval=5, disable=None): pass\n")
    log = tmp_path / "stage.log"
    with open(log, "w") as fh:        # like Snakemake's `> {log} 2>&1`
        subprocess.run([sys.executable, "-c", code], stderr=fh, check=True, timeout=60)
    lines = log.read_text().splitlines()
    assert lines[0].startswith("steps:   0%") and lines[-1].startswith("steps: 100%|") and "5/5" in lines[-1]
    assert "\r" not in log.read_text()
    piped = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert piped.stderr == ""          # a pipe is not a log file: tqdm's own rule (no bar) applies

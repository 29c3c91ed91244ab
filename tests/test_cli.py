"""The `lori` console script: one entry, every subcommand with a --help that explains itself."""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lori.__main__ import COMMANDS, main

# the commands and the flags each one's --help listed at commit dc046d5; Snakemake's shell commands
# and users' scripts use them, so none may disappear (new ones may be added)
RECORDED_FLAGS = json.loads((Path(__file__).parent / "data" / "cli_flags.json").read_text())
# the user tools' --help: a phrase saying what the tool does (the stages show their module docstring)
EXPLAINS = {
    "inspect": "what is inside an artifact",
    "thoughts": "logit lens",
    "compare": "paired exact McNemar",
    "report": "self-contained report.html",
    "probe": "logistic-regression probe",
    "answer": "answer questions with a trained student",
}
STAGES = sorted(set(COMMANDS) - set(EXPLAINS))


def help_text(command: str, capsys) -> str:
    """``lori COMMAND [SUBCOMMAND] --help``: checks the exit code, returns the text."""
    with pytest.raises(SystemExit) as e:
        main([*command.split(), "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def flags_of(text: str) -> set[str]:
    """The flags of a --help's options list."""
    return set(re.findall(r"^\s+(--[\w-]+)", text, re.M))


def test_every_command_is_listed_and_known(capsys):
    main([])
    usage = capsys.readouterr().out
    assert set(RECORDED_FLAGS) <= set(COMMANDS), "a command was removed"
    for command in COMMANDS:
        assert re.search(rf"\b{command}\b", usage.split("\n", 1)[1]), command     # beyond the generated first line
    for fragment in ("inspect PATH", "report RUN", "compare RUN_A RUN_B", "thoughts --run RUN", "probe --run RUN"):
        assert fragment in usage


@pytest.mark.parametrize("command", sorted(EXPLAINS))
def test_user_tool_help_explains_itself(command, capsys):
    text = help_text(command, capsys)
    assert EXPLAINS[command] in text, text[:2000]


@pytest.mark.parametrize("stage", STAGES)
def test_stage_help_is_its_docstring_with_described_paths(stage, capsys):
    """A stage's --help shows its whole module docstring (what it reads and writes, how to run it
    alone), every required path flag has a description, and the standalone example uses real flags."""
    text = help_text(stage, capsys)
    doc = importlib.import_module(f"lori.{stage}").__doc__
    assert re.search(r"\bwrites\b", doc, re.I), f"lori/{stage}.py's docstring does not say what it writes"
    for line in filter(None, map(str.strip, doc.splitlines())):
        assert line in text, line
    usage = text[: text.index("\n\n")]
    required = re.findall(r"(?<!\[)(--[\w-]+) [A-Z_]+", re.sub(r"\[[^\]]*\]", "", usage))
    assert required, usage
    for flag in required:
        described = re.search(rf"^\s+{flag} [A-Z_]+\s+\S", text, re.M) or \
            re.search(rf"^\s+{flag} [A-Z_]+\n\s{{10,}}\S", text, re.M)
        assert described, f"{flag} has no description in lori {stage} --help"
    examples = re.findall(rf"python -m lori\.{stage}( partial| gather)?( .*)", doc)
    assert examples, f"lori/{stage}.py's docstring has no standalone example"
    for sub, args in examples:     # run alone, or as a scatter/gather subcommand
        flags = flags_of(help_text(f"{stage}{sub}", capsys)) if sub else flags_of(text)
        unknown = set(re.findall(r"--[\w-]+", args)) - flags
        assert not unknown, f"the example 'python -m lori.{stage}{sub} ...' uses unknown flag(s) {sorted(unknown)}"


@pytest.mark.parametrize("stage", STAGES)
def test_stage_usage_names_the_command(stage, capsys):
    usage = help_text(stage, capsys).split("[", 1)[0]
    assert usage.startswith((f"usage: lori {stage} ", f"usage: python -m lori.{stage} ")), usage


@pytest.mark.parametrize("command", sorted(RECORDED_FLAGS))
def test_help_keeps_every_recorded_flag(command, capsys):
    missing = set(RECORDED_FLAGS[command]) - flags_of(help_text(command, capsys))
    assert not missing, f"lori {command} lost flag(s) {sorted(missing)}"


def help_entries(text: str) -> dict[str, str]:
    """Each flag of a --help's options list -> its help text (continuation lines joined)."""
    entries, flag = {}, None
    for line in text[text.index("options:"):].splitlines()[1:]:
        m = re.match(r"^  (--[\w-]+)(.*)", line)
        if m:
            flag = m.group(1)
            entries[flag] = m.group(2)
        elif flag and line.startswith("      "):
            entries[flag] += " " + line.strip()
    return {f: " ".join(h.split()) for f, h in entries.items() if f != "--help"}


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_flag_says_its_default_and_values(stage, capsys):
    entries = help_entries(help_text(stage, capsys))
    assert entries
    for flag, text in entries.items():
        assert re.search(r"(default: \S|required)", text), f"lori {stage} {flag}: no default in {text!r}"


def test_flag_help_comes_from_the_schema_and_the_config_dataclass(capsys):
    factorize = help_entries(help_text("factorize", capsys))
    assert "hosvd: top eigenvectors of the mode Grams" in factorize["--method"]     # the schema's description
    assert "hosvd | hooi; default: hosvd" in factorize["--method"]                   # its enum, the dataclass default
    assert "int | none; default: 2" in factorize["--rank-layer"]
    assert "true | false; default: true" in factorize["--center"]
    distill = help_entries(help_text("distill", capsys))
    assert "default: lori 200, no_cot 200, coconut 200, icot_si 100" in distill["--steps-per-stage"]   # each Args default
    assert "no_cot | lori | codi | coconut | icot_si | icot_kd | pause" in distill["--method"]
    assert "hosvd" not in distill["--method"]                      # not factorize's key of the same name
    assert "generator seed" not in distill["--seed"]               # nor a dataset's seed


@pytest.mark.parametrize("stage", STAGES)
def test_docstring_examples_keep_their_line_breaks(stage, capsys):
    """A standalone example continued with ``\\`` shows as written, not joined on one line."""
    doc = importlib.import_module(f"lori.{stage}").__doc__
    continued = [l.strip() for l in doc.splitlines() if l.rstrip().endswith("\\")]
    text = help_text(stage, capsys)
    for line in continued:
        assert line in text
    source = Path(importlib.import_module(f"lori.{stage}").__file__).read_text()
    written = source[: source.index('"""', source.index('"""') + 3)].count("\\\n")
    assert len(continued) == written, f"lori/{stage}.py: make the docstring raw (r\"\"\"): its \\ joins lines"


def test_version_and_every_stage_in_usage(capsys):
    import lori

    main(["--version"])
    assert capsys.readouterr().out.strip() == f"lori {lori.__version__}"
    main([])
    usage = capsys.readouterr().out.splitlines()[0]
    for stage in ("convert_model", "prepare_data", "distill", "report"):
        assert stage in usage


def _help_invocations() -> list[tuple[str, ...]]:
    """Every ``--help`` a user or the workflow can ask for, as ``python -m`` arguments, derived from
    lori/__main__.py's COMMANDS (a new command is covered without touching this list): ``lori``
    itself; ``lori COMMAND`` for each command; each command's module run alone (``python -m
    lori.<stage>``, what Snakemake runs; for ``report`` the stage CLI, not ``lori report RUN``); and
    each scatter/gather subcommand a module's docstring shows (``python -m lori.<stage> partial ...``).
    ``lori.harness`` is left out on purpose: not a ``lori`` command, and importing it registers the
    lm-evaluation-harness model ``lori`` (a subclass of lm_eval's ``LM``), so lm_eval (and with it
    torch) loads at import, before its argparse runs; deferring that would change what
    ``import lori.harness`` does for lm_eval users."""
    out: list[tuple[str, ...]] = [("lori",)]
    for command, target in COMMANDS.items():
        module = target.partition(":")[0]
        source = Path(importlib.util.find_spec(module).origin).read_text()
        subs = dict.fromkeys(re.findall(rf"python -m {re.escape(module)} ([a-z_]+) --", source))
        out += [("lori", command), (module,), *((module, sub) for sub in subs)]
    return out


HELP_INVOCATIONS = _help_invocations()
HEAVY = ("torch", "transformers", "scipy", "matplotlib")


@pytest.mark.parametrize("invocation", HELP_INVOCATIONS, ids=" ".join)
def test_help_is_fast_and_torch_free(invocation):
    """``python -m lori COMMAND [SUB] --help`` / ``python -m lori.<stage> [SUB] --help`` in a fresh
    process: usage names the command, none of torch, transformers, scipy, matplotlib is imported,
    and the process needs well under a second of CPU (CPU time, not wall: the tests share busy
    machines; importing torch alone costs several seconds)."""
    import resource

    module, *rest = invocation
    # `lori [CMD ...]` -> "usage: lori [CMD]"; `lori.<stage> [SUB]` -> "usage: lori <stage>" (the stage parser's prog)
    expected = " ".join(["usage: lori", *rest[:1]] if module == "lori" else ["usage: lori", module.removeprefix("lori.")])
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    res = subprocess.run([sys.executable, "-X", "importtime", "-m", module, *rest, "--help"],
                         capture_output=True, text=True, timeout=120)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert res.returncode == 0 and expected in res.stdout, (res.stdout[:500], res.stderr[-2000:])
    heavy = set(re.findall(rf"\|\s+({'|'.join(HEAVY)})$", res.stderr, re.M))
    assert not heavy, f"{' '.join(invocation)} --help imports {sorted(heavy)}"
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert cpu < 1.5, f"{' '.join(invocation)} --help took {cpu:.2f} s of CPU"


def test_help_invocations_cover_every_command_and_subcommand():
    covered = {inv[1] for inv in HELP_INVOCATIONS if inv[0] == "lori" and len(inv) > 1}
    assert covered == set(COMMANDS)
    assert {("lori.factorize", "partial"), ("lori.factorize", "gather"), ("lori.dump_hidden", "partial"),
            ("lori.dump_hidden", "gather"), ("lori",), ("lori.distill",)} <= set(HELP_INVOCATIONS)


# Imports each lori module in turn, as the first lori import of a fresh process, and records the
# HF_HUB_OFFLINE each saw when it reached for the hub libraries (stopped there: no slow import).
HUB_PROBE = """
import importlib, importlib.abc, json, os, pkgutil, sys
import lori
names = sorted(m.name for m in pkgutil.walk_packages(lori.__path__, 'lori.') if not m.name.endswith('__main__'))
current, seen = None, {}
class Stop(ImportError):
    pass
class Probe(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('huggingface_hub', 'transformers', 'datasets'):
            seen.setdefault(current, os.environ.get('HF_HUB_OFFLINE', 'unset'))
            raise Stop(name)
sys.meta_path.insert(0, Probe())
for current in names:
    for m in [m for m in sys.modules if m == 'lori' or m.startswith('lori.')]:
        del sys.modules[m]
    os.environ.pop('HF_HUB_OFFLINE', None)
    try:
        importlib.import_module(current)
    except Stop:
        pass
current = '<control>'        # the probe itself works: a plain import of the hub library is seen
os.environ.pop('HF_HUB_OFFLINE', None)
try:
    importlib.import_module('transformers')
except Stop:
    pass
print(json.dumps(seen))
"""


def test_every_module_turns_the_hub_offline_before_importing_it():
    """``huggingface_hub`` reads HF_HUB_OFFLINE once, at import: a module that imports transformers
    before :func:`lori.hub.apply_offline_default` ran would let a missing model be looked up online
    (a minute of retries offline, a download otherwise), depending on which module came first."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "LORI_ALLOW_DOWNLOAD")}
    res = subprocess.run([sys.executable, "-c", HUB_PROBE], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    seen = json.loads(res.stdout.splitlines()[-1])
    # the stages import them when they run (their --help stays light), so a module import may reach
    # none of them; the control import shows the probe still sees one
    assert seen.pop("<control>", None) == "unset", "the probe no longer sees hub imports"
    online = sorted(m for m, value in seen.items() if value != "1")
    assert not online, f"imported first, these import transformers/huggingface_hub before HF_HUB_OFFLINE is set: {online}"


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

"""The documents cannot rot: every shell block of README.md and docs/ parses (`bash -n`), every
`instructray ...` command in them loads its config as `--print-config` does (keys, types, ranges,
the batch arithmetic; no Ray starts), every repository file they name exists, the Python blocks
marked `<!-- run -->` run, and the site builds with `mkdocs build --strict`."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from instructray.orchestrator import cli, jobs
from instructray.orchestrator.config import ConfigError, load_config
from instructray.orchestrator.labeling import commands as labeling

ROOT = Path(__file__).parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SHELLS = {"bash", "sh", "shell"}
FENCE = re.compile(
    r"^(?P<indent> *)```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```", re.M | re.S
)
RUN_MARK = "<!-- run -->"
# Repository files named in backticks: a top-level folder of the project, then a file name.
REPO_PATH = re.compile(
    r"`((?:deploy|orchestrator|actors|kernels|tests|docs)/[\w./-]+\.(?:ya?ml|py|md|json|txt))`"
)
SHELL_OPERATORS = {"&&", "||", "|", ";", "&"}
# `instructray ...` in running text: checked when it is a whole command (a stage or submit, some
# --flag, no placeholder such as STAGE, FILE or "...").
INLINE = re.compile(r"(?<!`)`(instructray [^`\n]+)`(?!`)")


@dataclass
class Block:
    path: Path
    line: int  # of the opening fence
    lang: str
    body: str
    marked: bool  # preceded by RUN_MARK

    def where(self, offset: int = 0) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line + 1 + offset}"


def blocks(path: Path) -> list[Block]:
    text = path.read_text()
    found = []
    for m in FENCE.finditer(text):
        line = text.count("\n", 0, m.start())
        before = text[: m.start()].rstrip().rsplit("\n", 1)[-1]
        body = "\n".join(s[len(m["indent"]) :] for s in m["body"].splitlines())
        found.append(Block(path, line, m["lang"], body, before.strip() == RUN_MARK))
    return found


def instructray_commands(block: Block) -> list[tuple[str, list[str]]]:
    """(where, argv after `instructray`) for each command line of a shell block that runs
    instructray (directly, from a venv's bin/, or after `ray job submit ... --`)."""
    found, logical, start = [], "", 0
    for i, line in enumerate(block.body.splitlines()):
        if not logical:
            start = i
        logical += line
        if line.endswith("\\"):
            logical = logical[:-1] + " "
            continue
        words, logical = shlex.split(logical, comments=True), ""
        for j, word in enumerate(words):
            if Path(word).name == "instructray" and not word.startswith("-"):
                rest = words[j + 1 :]
                cut = next((k for k, w in enumerate(rest) if w in SHELL_OPERATORS), len(rest))
                found.append((block.where(start), rest[:cut]))
                break
    return found


def inline_commands(path: Path) -> list[tuple[str, list[str]]]:
    """(where, argv after `instructray`) for each whole command in a page's running text."""
    text = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), path.read_text())
    found = []
    for m in INLINE.finditer(text):
        argv = shlex.split(m.group(1))[1:]
        if (
            argv
            and argv[0] in (*cli.STAGES, "submit")
            and any(w.startswith("--") for w in argv)
            and not any(w.isupper() or "..." in w or w[:1] in "[{<" for w in argv)
        ):
            line = text.count("\n", 0, m.start()) + 1
            found.append((f"{path.relative_to(ROOT)}:{line}", argv))
    return found


def check_command(argv: list[str]) -> str:
    """'' when `instructray *argv` would start (its arguments parse, and a stage's config loads
    and validates as with --print-config), else what is wrong."""
    if not argv:
        return "no stage"
    if argv[0] in ("-h", "--help"):
        return ""
    err = io.StringIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            if argv[0] in cli.STAGES:
                code = cli.main([*argv, "--print-config"])
            elif argv[0] == "submit":
                args, rest = jobs._parser(list(cli.STAGES)).parse_known_args(argv)
                config = ["--config", args.config] if args.config else []
                code = cli.main([args.stage, *config, *rest, "--print-config"])
            elif argv[0] == "label":  # the labeling commands' own parser: nothing runs
                args = labeling.parse(argv[1:])
                load_config(None, args.overrides)  # a sampling override names a real key
                code = 0
            elif argv[0] in cli.JOB_COMMANDS:
                args, rest = jobs._parser(list(cli.STAGES)).parse_known_args(argv)
                code = 2 if rest else 0
                print(f"unexpected arguments: {rest}", file=sys.stderr)
            else:
                return f"no command {argv[0]!r}"
    except SystemExit as e:  # argparse's refusal
        code = e.code
    except ConfigError as e:  # a label command's misspelled override
        return str(e)
    return "" if code == 0 else (err.getvalue().strip().splitlines() or ["failed"])[-1]


ALL_BLOCKS = [b for path in DOCS for b in blocks(path)]
COMMANDS = [c for b in ALL_BLOCKS if b.lang in SHELLS for c in instructray_commands(b)] + [
    c for path in DOCS for c in inline_commands(path)
]


def test_the_documents_are_found_and_hold_commands():
    assert (ROOT / "docs" / "index.md") in DOCS and len(DOCS) > 20
    stages = {argv[0] for _, argv in COMMANDS if argv}
    assert {"sft", "rm", "ppo", "pipeline", "demo", "submit"} <= stages


@pytest.mark.parametrize(
    "argv",
    [
        ["ppo", "--config", "deploy/configs/ppo-tiny-cpu.yaml", "--ppo.kl_cof=0.1"],
        ["ppo", "--config", "deploy/configs/ppo-tiny-cpu.yaml", "--rollout.num_engines=0"],
        ["submit", "ppo", "--config=deploy/configs/no-such.yaml"],
        ["label", "publish", "--db", "labels.db", "--answer", "a.jsonl"],
        ["label", "publish", "--db=l.db", "--prompts=p.jsonl", "--rollout.temprature=1"],
        ["ppo", "--config", "deploy/configs/ppo-tiny-cpu.yaml", "--learner.zero_stage=two"],
        ["scale", "JOB"],
        ["trian"],
    ],
    ids=[
        "misspelled-key",
        "out-of-range",
        "no-such-config",
        "label-misspelled-flag",
        "label-misspelled-override",
        "wrong-type",
        "missing-flag",
        "typo",
    ],
)
def test_the_checker_refuses_a_wrong_command(argv):
    assert check_command(argv) != ""


def test_the_checker_passes_a_right_command():
    assert check_command(["ppo", "--config", "deploy/configs/ppo-tiny-cpu.yaml"]) == ""
    assert check_command(["stop", "JOB", "--address=http://127.0.0.1:8265"]) == ""


def test_every_instructray_command_in_the_documents_loads_its_config():
    wrong = [
        f"{where}: instructray {shlex.join(argv)}: {why}"
        for where, argv in COMMANDS
        if (why := check_command(argv))
    ]
    assert not wrong, "\n".join(wrong)


def test_every_shell_block_parses():
    wrong = []
    for b in ALL_BLOCKS:
        if b.lang in SHELLS:
            done = subprocess.run(["bash", "-n"], input=b.body, capture_output=True, text=True)
            if done.returncode:
                wrong.append(f"{b.where()}: {done.stderr.strip()}")
    assert not wrong, "\n".join(wrong)


def test_every_repository_file_the_documents_name_exists():
    missing = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in DOCS
        for name in REPO_PATH.findall(path.read_text())
        if not (ROOT / name).exists() and "*" not in name
    ]
    assert not missing, "\n".join(missing)


def test_the_marked_python_blocks_run():
    marked = [b for b in ALL_BLOCKS if b.marked]
    assert marked, f"no block is marked {RUN_MARK}"
    for b in marked:
        assert b.lang == "python", f"{b.where()}: only Python blocks are run"
        done = subprocess.run(
            [sys.executable, "-c", b.body], cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, f"{b.where()}:\n{done.stderr[-2000:]}"


def test_the_site_builds_strictly(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "reference" / "config" / "index.html").exists()

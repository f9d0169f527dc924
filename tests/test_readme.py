"""README.md is checked: its Quick start is the Makefile's two commands, and every `slm` command line it shows
(code blocks and the commands table) parses with the CLI's own parser. A dry run: no command is executed."""

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from slmkit import cli
from slmkit.config import load_recipe, parse_overrides
from slmkit.errors import SlmError

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
# The generic forms the README writes for "any key": parsed like an override, not looked up as a key.
PLACEHOLDER_KEYS = {"section.key", "serve.key"}
# Placeholders of typed options in the commands table, and a value of that type.
TYPED_PLACEHOLDERS = {"N": "2", "T": "0.8", "K": "40", "P": "0.9", "R": "1.1", "S": "1"}


def _section(title: str) -> str:
    """The text of the `## title` section, up to the next heading of the same level."""
    found = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, flags=re.M | re.S)
    assert found, f"README.md has no '## {title}' section"
    return found.group(1)


def _code_lines(text: str) -> list[str]:
    """The lines of the fenced non-Python code blocks of `text`, backslash continuations joined."""
    lines = []
    for lang, body in re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.M | re.S):
        if lang != "python":
            lines += [line.strip() for line in body.replace("\\\n", " ").splitlines() if line.strip()]
    return lines


def _slm_args(line: str):
    """The `slm` arguments of a shell line (`slm ...`, or `-m slmkit ...` under torchrun/python), else None."""
    if not (line == "slm" or line.startswith("slm ") or " -m slmkit " in line):
        return None  # not a command: a file tree's line, another tool's
    words = shlex.split(line, comments=True)
    if words[:1] == ["slm"]:
        return words[1:]
    for i in range(len(words) - 1):
        if words[i : i + 2] == ["-m", "slmkit"]:
            return words[i + 2 :]
    return None


def _table_synopses() -> list[str]:
    """The first cell of each row of the commands table, e.g. 'slm eval --run DIR [--split val|test]'."""
    cells = re.findall(r"^\| `(slm .*?)` \|", _section("What the commands do"), flags=re.M)
    return [cell.replace("\\|", "|") for cell in cells]


def _forms(synopsis: str) -> list[list[str]]:
    """Two command lines of a synopsis: without its [optional] parts, and with all of them (first alternative)."""
    minimal = re.sub(r"\s*\[[^\]]*\]", "", synopsis)
    full = synopsis.replace("[", "").replace("]", "")
    forms = []
    for line in (minimal, full):
        words = [w.split("|")[0] for w in shlex.split(line) if w != "..."]
        forms.append([TYPED_PLACEHOLDERS.get(w, w) for w in words[1:]])
    return forms


def _cases() -> list[tuple[str, list[str]]]:
    cases = [(line, args) for line in _code_lines(README) if (args := _slm_args(line)) is not None]
    for synopsis in _table_synopses():
        cases += [(synopsis, args) for args in _forms(synopsis) if (synopsis, args) not in cases]
    return cases


CASES = _cases()


def test_the_readme_shows_slm_commands():
    # Guards the extraction itself: the commands table has a row per command, the code blocks several lines.
    assert len(_table_synopses()) >= 13
    assert len([line for line, _ in CASES if not line.startswith("slm ") or "[" not in line]) >= 7
    assert {args[0] for _, args in CASES} >= {name for name in cli._WITH_OVERRIDES} | set(cli._COMMANDS)


def _dry_run(argv: list[str]) -> None:
    """Parse `argv` as `slm` does (argparse, then --section.key=value overrides) and check the override keys."""
    args, rest = cli._parser().parse_known_args(argv)
    assert args.command, "no command"
    if args.command not in cli._WITH_OVERRIDES:
        assert not rest, f"unrecognized arguments: {rest}"
        return
    overrides = {k: v for k, v in parse_overrides(rest).items() if k not in PLACEHOLDER_KEYS}
    recipe = getattr(args, "recipe", None)
    load_recipe(None if recipe is None or recipe.isupper() else recipe, overrides)  # unknown keys, bad values


@pytest.mark.parametrize(("line", "argv"), CASES, ids=[" ".join(args) for _, args in CASES])
def test_readme_command_line_parses(line, argv, capsys):
    try:
        _dry_run(argv)
    except SystemExit:  # argparse's error
        pytest.fail(f"README line {line!r} does not parse as `slm {shlex.join(argv)}`: {capsys.readouterr().err}")
    except (AssertionError, SlmError) as e:
        pytest.fail(f"README line {line!r} is refused as `slm {shlex.join(argv)}`: {e}")


@pytest.mark.parametrize("argv", [
    ["sample", "--prompt", "And"],  # --run is required
    ["sample", "--run", "runs/x", "--promt", "And"],
    ["eval", "--run", "runs/x", "--train.lr=1"],  # eval takes no overrides
    ["train", "--train.no_such_key=1"],
    ["train", "--model.n_layer=two"],
    ["train", "--recipe", "no-such-recipe"],
    ["train", "--train.threads=1", "..."],
])  # fmt: skip
def test_the_dry_run_refuses_what_slm_refuses(argv, capsys):
    with pytest.raises((SystemExit, AssertionError, SlmError)):
        _dry_run(argv)
    capsys.readouterr()


def test_quick_start_is_the_makefiles_two_commands():
    commands = [shlex.split(line, comments=True) for line in _code_lines(_section("Quick start"))]
    assert commands == [["make", "demo"], ["make", "test"]]


def _make_dry_run(target: str) -> list[str]:
    """The commands `make TARGET` would run in a fresh clone (-n: print only; -B: as if nothing were built)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    done = subprocess.run(["make", "-n", "-B", "-C", str(ROOT), target], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [line for line in done.stdout.splitlines() if not line.startswith("make")]


def _install_steps(commands: list[str]) -> list[int]:
    """Where the venv is made, torch installed (the machine's build), then slmkit installed."""
    steps = ["-m venv .venv", "scripts/install_torch.py", "-m pip install -e ."]
    found = [next((i for i, c in enumerate(commands) if c.endswith(step) or step + " " in c), -1) for step in steps]
    assert -1 not in found and found == sorted(found), commands
    return found


def test_make_demo_installs_then_trains_and_samples():
    commands = _make_dry_run("demo")
    _install_steps(commands)
    assert commands[-1] == ".venv/bin/slm train"  # trains the default recipe, then prints a sample of the best model


def test_make_test_installs_the_dev_extras_then_runs_the_tests():
    commands = _make_dry_run("test")
    last_install = _install_steps(commands)[-1]
    dev = commands.index(".venv/bin/python -m pip install -e '.[dev]'")
    assert last_install < dev < len(commands) - 1
    assert commands[-1] == ".venv/bin/python -m pytest -n auto --maxprocesses=4"  # pytest-xdist, a dev extra

"""One progress bar per stage on a terminal, none on a pipe (issue 20.3).

The same real commands (train with a time budget, which prepares and evaluates; eval; export hf, gguf
and onnx; a sweep of two runs) run once with stdout and stderr on a pseudo-terminal and once on pipes.
"""

import fcntl
import io
import importlib.util
import os
import pty
import re
import selectors
import struct
import subprocess
import sys
import termios

import pytest

from slmkit.progress import Bar, on_terminal

from conftest import TINY_TEXT, tiny_settings

# a drawn bar: "desc:  42%|████      | 10/24 ..." (a total, never "?")
BAR = re.compile(r"^(?P<desc>[a-z][a-z0-9_ ]*): +\d+%\|[^|]*\| *[\d.]+k?/(?P<total>[\d.]+k?)\b")
# Runs the commands twice in one interpreter (torch imported once): on the terminal it was started on,
# then with stdout and stderr moved to the two pipes whose ends it is given.
SCRIPT = """
import os, sys
from slmkit.cli import main
for mode, stages in {runs!r}:
    if mode == "pipe":
        sys.stdout.flush()
        os.dup2(int(sys.argv[1]), 1)
        os.dup2(int(sys.argv[2]), 2)
    for stage, argv in stages:
        print("=== " + stage, flush=True)
        if main(argv) != 0:
            sys.exit(f"{{stage}} failed")
"""


def stages(tmp_path) -> list[tuple[str, list[str]]]:
    """The commands, into a new folder `tmp_path`."""
    tmp_path.mkdir()
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TINY_TEXT, encoding="utf-8")
    settings = tiny_settings(corpus, tmp_path / "shards")
    # a time budget only: the total steps are an estimate (once the first steps are timed)
    settings.update({"train.max_steps": 0, "train.max_minutes": 0.02, "train.log_interval": 2, "train.eval_interval": 1000})
    overrides = [f"--{k}={v}" for k, v in settings.items()]
    run = str(tmp_path / "run")
    sweep_args = [f"--{k}={v}" for k, v in {**settings, "train.max_steps": 4, "train.max_minutes": 0}.items()]
    commands = [
        ("train", ["train", "--recipe", "kjv-char-gpt2", "--out", run, *overrides]),
        ("eval", ["eval", "--run", run]),
        ("export hf", ["export", "--run", run, "--format", "hf", "--out", str(tmp_path / "hf")]),
    ]
    if importlib.util.find_spec("gguf"):
        commands.append(("export gguf", ["export", "--run", run, "--format", "gguf", "--out", str(tmp_path / "m.gguf")]))
    if importlib.util.find_spec("onnx"):
        commands.append(("export onnx", ["export", "--run", run, "--format", "onnx", "--out", str(tmp_path / "m.onnx")]))
    commands.append(("sweep", ["sweep", "--recipe", "kjv-char-gpt2", "--grid", "train.lr=1e-3,2e-3",
                               "--out", str(tmp_path / "sweep"), *sweep_args]))  # fmt: skip
    return commands


def run_twice(commands: dict[str, list]) -> tuple[str, str, str]:
    """(terminal, stdout pipe, stderr pipe): what SCRIPT writes with stdout and stderr on one pseudo-terminal
    of 100 columns, then on two pipes."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    (out_r, out_w), (err_r, err_w) = os.pipe(), os.pipe()
    code = SCRIPT.format(runs=list(commands.items()))
    process = subprocess.Popen([sys.executable, "-c", code, str(out_w), str(err_w)], stdin=subprocess.DEVNULL,
                               stdout=slave, stderr=slave, pass_fds=(out_w, err_w),
                               env=dict(os.environ, PYTHONWARNINGS="ignore"))  # fmt: skip
    for fd in (slave, out_w, err_w):
        os.close(fd)
    read = {master: [], out_r: [], err_r: []}
    with selectors.DefaultSelector() as selector:
        for fd in read:
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map():
            for key, _ in selector.select():
                try:
                    chunk = os.read(key.fd, 1 << 16)
                except OSError:  # EIO: no process holds the terminal any more
                    chunk = b""
                if chunk:
                    read[key.fd].append(chunk)
                else:
                    selector.unregister(key.fd)
                    os.close(key.fd)
    text = [b"".join(read[fd]).decode() for fd in (master, out_r, err_r)]
    assert process.wait(timeout=300) == 0, (text[0] + text[2])[-3000:]
    return text[0], text[1], text[2]


def sections(text: str) -> dict[str, str]:
    """The output of each stage of SCRIPT, by its marker line."""
    parts = re.split(r"^=== (.+?)\r?\n", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def frames(text: str) -> list[str]:
    """Every line and every redraw of a line (bars redraw after a carriage return)."""
    return [f.strip() for f in re.split(r"[\r\n]", text) if f.strip()]


def test_commands_draw_one_bar_per_stage_on_a_terminal_and_none_on_a_pipe(tmp_path):
    commands = {mode: stages(tmp_path / mode) for mode in ("tty", "pipe")}
    terminal, piped_out, piped_err = run_twice(commands)
    tty = sections(terminal)
    expected = {  # the bars each command draws, in order: one per stage
        "train": ["tokenizing", "training", "evaluating"], "eval": ["evaluating"], "export hf": ["export hf"],
        "export gguf": ["export gguf f32"], "export onnx": ["export onnx"], "sweep": ["sweep"],
    }  # fmt: skip
    assert set(tty) == {stage for stage, _ in commands["tty"]}
    for stage, out in tty.items():
        assert "/?" not in out, f"{stage}: a bar without a total"
        bars = [frame for frame in frames(out) if "%|" in frame]
        assert all(BAR.match(frame) for frame in bars), f"{stage}: a bar without a name or a total: {bars}"
        names = [BAR.match(frame)["desc"] for frame in bars]
        assert list(dict.fromkeys(names)) == expected[stage], stage  # first drawn with a total, no empty bar before
    assert frames(tty["train"])[0].startswith("tokenizing:")
    assert sum(f.startswith("done: ") for f in frames(tty["train"])) == 1  # lines written once, above the bar

    assert "\r" not in piped_out + piped_err and "█" not in piped_out + piped_err and "%|" not in piped_err
    out = {stage: text.splitlines() for stage, text in sections(piped_out).items()}
    assert set(out) == set(tty)
    train = out["train"]
    for start in ("prepared ", "training kjv-char-gpt2: ", "final evaluation: ", "done: "):
        assert sum(line.startswith(start) for line in train) == 1, (start, train)  # each stage's record, once
    assert train[0].startswith("prepared ") and train[1].startswith("training ")
    assert re.fullmatch(r"step \d+: end of the budget, final evaluation on 2 fixed val batches", train[2])
    for stage in ("eval", "export hf", "export gguf", "export onnx"):
        assert len(out.get(stage, ["one"])) == 1, (stage, out.get(stage))  # one line per stage
    assert out["eval"][0].startswith("val split: ") and out["export hf"][0].endswith("hf")
    assert len(out["sweep"]) == 3 and [line[:5] for line in out["sweep"][1:]] == ["[1/2]", "[2/2]"]  # one a run


class FakeStream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize("stdout_tty, stderr_tty", [(True, True), (True, False), (False, True)])
def test_a_bar_is_drawn_only_when_stdout_and_stderr_are_terminals(monkeypatch, stdout_tty, stderr_tty):
    stdout, stderr = FakeStream(stdout_tty), FakeStream(stderr_tty)
    monkeypatch.setattr(sys, "stdout", stdout)
    monkeypatch.setattr(sys, "stderr", stderr)
    assert on_terminal() == (stdout_tty and stderr_tty)
    with Bar(3, "stage", unit="part") as bar:
        bar.update(2, text="second")
        bar.write("a line")
        bar.move_to(3, total=3)
    drawn = stderr.getvalue()
    assert stdout.getvalue() == "a line\n"  # the stage's line, above the bar or alone
    if stdout_tty and stderr_tty:
        assert "stage:" in drawn and "3/3" in drawn and "second" in drawn
    else:
        assert drawn == ""
    Bar(3, "stage", enabled=False).update()
    assert stderr.getvalue() == drawn  # enabled=False: never a bar

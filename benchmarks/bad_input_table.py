"""Print RELIABILITY.md's bad-input table: each row of tests/integration/test_bad_input.py and its message.

    PYTHONPATH=$PWD python -P benchmarks/bad_input_table.py > /tmp/table.md
Trains one tiny run (as the tests' fixture does), then runs every case in-process in a fresh temp folder.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "integration")]


def describe(case) -> str:
    """What the row damaged or wrote, in words."""
    parts = [f"{name} = `{text!r}`" if len(repr(text)) < 80 else f"{name} = {len(text):,} characters"
             for name, text in case.files.items()]
    damage = case.damage
    if damage is not None:
        cells = dict(zip(damage.__code__.co_freevars, (c.cell_contents for c in damage.__closure__ or ())))
        if damage.__qualname__.startswith("truncate"):
            parts.append(f"{cells['name']} cut to {cells['keep']:.0%}")
        elif damage.__qualname__.startswith("replace"):
            content = cells["content"]
            shown = "empty" if not content else "binary" if isinstance(content, bytes) else f"`{content.strip()}`"
            parts.append(f"{cells['name']} replaced: {shown}")
        elif damage.__qualname__.startswith("delete"):
            parts.append(f"{cells['name']} deleted")
        else:
            parts.append((damage.__doc__ or damage.__name__.replace("_", " ")).strip().splitlines()[0])
    return "; ".join(parts)


def main() -> None:
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    import test_bad_input as t
    from conftest import TINY_TEXT, tiny_settings

    from slmkit.config import load_recipe
    from slmkit.train import train

    with tempfile.TemporaryDirectory() as root:
        root = Path(root)
        (root / "corpus.txt").write_text(TINY_TEXT, encoding="utf-8")
        with contextlib.redirect_stdout(io.StringIO()):
            train(load_recipe("kjv-char-gpt2", tiny_settings(root / "corpus.txt", root / "shards")), out=root / "run",
                  progress_bar=False)  # fmt: skip
        print("| case | command | bad input | exit | message |")
        print("|---|---|---|---|---|")
        for i, case in enumerate(t.CASES):
            tmp = root / f"case-{i}"
            tmp.mkdir()
            os.chdir(tmp)
            files = {"tmp": tmp, "missing": tmp / "no" / "such", "empty": tmp / "empty.txt",
                     "binary": tmp / "binary.bin", "latin1": tmp / "latin1.txt", "emptydir": tmp / "emptydir"}  # fmt: skip
            files["empty"].write_bytes(b"")
            files["binary"].write_bytes(os.urandom(4096))
            files["latin1"].write_bytes("Ça coûte très cher, dit l'élève.\n".encode("latin-1") * 50)
            files["emptydir"].mkdir()
            args, _ = t.setup_case(case, files, root / "run")
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                code = t.main(args)
            message = err.getvalue().strip().removeprefix("slm: error: ").replace(str(tmp), "…").replace("|", "\\|")
            command = "slm " + " ".join(case.args).replace("|", "\\|")
            print(f"| {case.id} | `{command}` | {describe(case)} | {code} | {message} |")
            os.chdir(root)


if __name__ == "__main__":
    main()

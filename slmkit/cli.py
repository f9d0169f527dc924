"""`slm` command line: each sub-command parses its arguments and calls one library function."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional

from .errors import ConfigError, SlmError

EPILOG = "Any recipe key can be overridden: --section.key=value (or --section.key value), e.g. --train.max_minutes=1"


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one-line ConfigErrors (exit 1), not usage + message (exit 2)."""

    def error(self, message: str):  # type: ignore[override]
        raise ConfigError(f"{message}; see `{self.prog} --help`")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="slm", description="Build small language models from scratch.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    _training_commands(sub)
    _sampling_commands(sub)
    _experiment_commands(sub)
    _model_file_commands(sub)
    sub.add_parser("recipes", help="list the shipped recipes")

    p = sub.add_parser("data", help="inspect prepared data")
    data = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    q = data.add_parser("info", help="tokens, documents, dtype, vocabulary size and bytes of shards")
    q.add_argument("path", metavar="PATH", help="a shard file (.bin) or a shard folder")
    return parser


def _training_commands(sub: argparse._SubParsersAction) -> None:
    """train, finetune, prepare."""
    p = sub.add_parser("train", help="prepare data if needed, train, then print a sample", epilog=EPILOG)
    p.add_argument("--recipe", default=None, help="recipe name in recipes/ or a YAML path (default: kjv-bpe)")
    p.add_argument("--out", default=None, help="run folder (default: runs/<recipe>)")
    p.add_argument("--resume", default=None, metavar="DIR", help="continue the run in DIR from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out (refused otherwise)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs still print)")

    p = sub.add_parser(
        "finetune", help="continue training a run's best model on new text, into a new run folder", epilog=EPILOG
    )
    p.add_argument("--from", dest="from_dir", required=True, metavar="DIR", help="the trained run folder to start from")
    p.add_argument("--out", default=None, help="run folder (default: runs/<recipe>-finetune)")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out (refused otherwise)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs still print)")

    p = sub.add_parser("prepare", help="corpus -> tokenizer -> train/val shards", epilog=EPILOG)
    p.add_argument("--recipe", default=None, help="recipe name in recipes/ or a YAML path (default: kjv-bpe)")
    p.add_argument("--out", default=None, metavar="DIR", help="shard folder to write (= --data.shard_dir)")
    p.add_argument("--force", action="store_true", help="rebuild the shards even if they are complete")


def _sampling_commands(sub: argparse._SubParsersAction) -> None:
    """sample, chat, eval."""
    p = sub.add_parser("sample", help="stream text from a trained run")
    p.add_argument("--run", required=True, metavar="DIR", help="run folder written by `slm train`")
    p.add_argument("--prompt", default=None, help="text to continue (default: the recipe's sample.prompt)")
    p.add_argument("--last", action="store_true", help="use the last weights instead of the best")
    p.add_argument("--num-samples", type=int, default=1, help="samples per prompt (sample i uses seed + i)")
    p.add_argument("--interactive", action="store_true", help="read prompts from stdin, one per line, until EOF, an empty line or 'exit'")
    p.add_argument("--no-cache", action="store_true", help="recompute the whole context each step (slow; for comparison)")
    p.add_argument("--int8", action="store_true", help="use the int8 model written by `slm quantize` (CPU)")
    p.add_argument("--messages", default=None, metavar="JSON",
                   help="a chat run: reply to these messages (a JSON list of {role, content}, or a .json file of one)")
    _sampling_flags(p)

    p = sub.add_parser("chat", help="talk to a chat run in the terminal (/reset, /exit)")
    p.add_argument("--run", required=True, metavar="DIR", help="run folder written by `slm finetune --data.format chat`")
    p.add_argument("--system", default="", help="a system message to start every conversation with")
    p.add_argument("--last", action="store_true", help="use the last weights instead of the best")
    p.add_argument("--int8", action="store_true", help="use the int8 model written by `slm quantize` (CPU)")
    _sampling_flags(p)

    p = sub.add_parser("eval", help="loss, perplexity and bits per byte of a run over a split or a text file")
    p.add_argument("--run", required=True, metavar="DIR", help="run folder written by `slm train`")
    p.add_argument("--data.source", dest="source", default=None, metavar="PATH",
                   help="a text file, folder or glob to evaluate (default: the run's own shards)")
    p.add_argument("--data.unknown", dest="unknown", default="", choices=("error", "drop"),
                   help="characters a char tokenizer lacks: error (default) or drop them (and say how many)")
    p.add_argument("--split", default="val", help="split of the run's shards: val (default) or test")
    p.add_argument("--int8", action="store_true", help="evaluate the int8 model written by `slm quantize`")


def _experiment_commands(sub: argparse._SubParsersAction) -> None:
    """plot, sweep, runs."""
    p = sub.add_parser("plot", help="loss and LR curves of one or more runs to a PNG")
    p.add_argument("runs", nargs="+", metavar="DIR", help="run folders holding metrics.csv")
    p.add_argument("--out", default="loss.png", help="PNG to write (default: loss.png)")

    p = sub.add_parser(
        "sweep", help="train a recipe over a grid of overrides and several seeds, one run folder each", epilog=EPILOG
    )
    p.add_argument("--recipe", default=None, help="recipe name in recipes/ or a YAML path (default: kjv-bpe)")
    p.add_argument("--file", default=None, metavar="SWEEP.yaml", help="a sweep file: recipe, seeds, samples, overrides, grid")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="values of a key to sweep (repeatable; with --samples also KEY=LO:HI or KEY=log:LO:HI)")
    p.add_argument("--seeds", type=int, default=None, help="runs per point, with train.seed, +1, +2, ... (default 1)")
    p.add_argument("--samples", type=int, default=None, help="random search: K points drawn from the grid's values")
    p.add_argument("--parallel", type=int, default=1, help="runs at a time, in processes sharing train.threads")
    p.add_argument("--out", default=None, help="folder of the run folders (default: runs/<recipe>-sweep)")
    p.add_argument("--overwrite", action="store_true", help="retrain every run, replacing what --out holds")

    p = sub.add_parser("runs", help="a table of run folders: one row per run, or per sweep point over its seeds")
    p.add_argument("dirs", nargs="*", default=["runs"], metavar="DIR", help="run folders or folders of them (default: runs)")
    p.add_argument("--sort", default=None, metavar="KEY", help="a column (best_val_loss, bits_per_byte, ...) or config key")
    p.add_argument("--format", default="table", help="table (default), csv or markdown")
    p.add_argument("--per-run", action="store_true", help="one row per run, also for seeds of one point")


def _model_file_commands(sub: argparse._SubParsersAction) -> None:
    """quantize, export, import-hf, serve."""
    p = sub.add_parser("quantize", help="write an int8 copy of a run's model (RUN/model-int8.safetensors)")
    p.add_argument("--run", required=True, metavar="DIR", help="run folder written by `slm train`")

    p = sub.add_parser("export", help="write a run as a Hugging Face transformers folder or a llama.cpp GGUF file")
    p.add_argument("--run", required=True, metavar="DIR", help="run folder written by `slm train`")
    p.add_argument("--format", default="hf", choices=["hf", "gguf", "onnx"],
                   help="hf: AutoModelForCausalLM-loadable folder (GPT-2, Llama or Qwen3); gguf: one file for "
                        "llama.cpp; onnx: the logits graph for onnxruntime")
    p.add_argument("--out", required=True, metavar="OUT", help="folder (hf), FILE.gguf or FILE.onnx to write")
    p.add_argument("--dtype", default="f32", choices=["f32", "f16", "q8_0"], help="gguf weight type (default: f32)")
    p.add_argument("--kv-cache", action="store_true",
                   help="onnx: the decoding graph with past keys/values in and out (see slmkit/export_onnx.py)")

    p = sub.add_parser("import-hf", help="turn a local Hugging Face GPT-2, Llama or Qwen3 folder into a run folder")
    p.add_argument("folder", metavar="DIR", help="folder with config.json, model.safetensors and tokenizer files")
    p.add_argument("--out", required=True, metavar="RUN", help="run folder to write")
    p.add_argument("--block-size", type=int, default=0, metavar="N",
                   help="the run's context in tokens, at most the checkpoint's (rotary models; default: the checkpoint's)")

    p = sub.add_parser(
        "serve", help="HTTP API (OpenAI-style /v1/completions; /v1/chat/completions on a chat run) and a web page to try a run",
        epilog="Limits can be overridden: --serve.max_tokens_limit=N, --serve.max_prompt_chars=N; "
        "SLM_API_KEY=KEY (or --serve.api_key=KEY) asks every client for `Authorization: Bearer KEY`",
    )
    p.add_argument("--run", required=True, metavar="DIR", help="run folder written by `slm train`")
    p.add_argument("--host", default=None, help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=None, help="port (default: 8000)")


def _sampling_flags(p: argparse.ArgumentParser) -> None:
    s = p.add_argument_group("sampling (default: the run's sample section)")  # dest = the SamplingParams field
    s.add_argument("--max-new-tokens", dest="max_new_tokens", type=int, default=None)
    s.add_argument("--temperature", type=float, default=None, help="0 = greedy")
    s.add_argument("--top-k", dest="top_k", type=int, default=None, help="0 = off")
    s.add_argument("--top-p", dest="top_p", type=float, default=None, help="nucleus sampling mass; 1 = off")
    s.add_argument(
        "--repetition-penalty", dest="repetition_penalty", type=float, default=None, help="> 1 discourages repeats; 1 = off"
    )
    s.add_argument("--stop", action="append", default=None, metavar="TEXT", help="end before this text (repeatable)")
    s.add_argument("--seed", type=int, default=None)


def _cmd_train(args: argparse.Namespace, overrides: dict) -> None:
    from .config import ConfigError, load_recipe
    from .runs import resume_config
    from .train import train

    if args.resume:
        if args.recipe:
            raise ConfigError("--resume takes its recipe from the run folder; drop --recipe")
        if args.overwrite:
            raise ConfigError("--resume continues the run in its folder; drop --overwrite")
        train(resume_config(args.resume, overrides), resume=args.resume, progress_bar=not args.no_progress)
        return
    train(load_recipe(args.recipe, overrides), out=args.out, progress_bar=not args.no_progress, overwrite=args.overwrite)


def _cmd_finetune(args: argparse.Namespace, overrides: dict) -> None:
    from .finetune import finetune

    finetune(args.from_dir, overrides, out=args.out, progress_bar=not args.no_progress, overwrite=args.overwrite)


def _cmd_prepare(args: argparse.Namespace, overrides: dict) -> None:
    from .config import load_recipe
    from .data.prepare import prepare

    if args.out is not None:
        if "data.shard_dir" in overrides:
            raise ConfigError("--out and --data.shard_dir both name the shard folder; give one")
        overrides = {**overrides, "data.shard_dir": args.out}
    print(prepare(load_recipe(args.recipe, overrides), force=args.force))


def _cmd_sample(args: argparse.Namespace) -> None:
    from .runs import BEST, LAST, load_run
    from .generate import stream_batch
    from .sampling import FIELDS

    if args.num_samples < 1:
        raise ConfigError(f"--num-samples={args.num_samples} must be >= 1")
    run = load_run(args.run, weights=LAST if args.last else BEST, int8=args.int8)
    flags = {key: getattr(args, key) for key in FIELDS if getattr(args, key) is not None}
    params = run.config.sample.params().replace(**flags).validate(prefix="sample.")
    if args.messages is not None:
        for piece in stream(run.model, run.tokenizer, params=params, messages=_messages(args.messages)):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return
    prompt = run.config.sample.prompt if args.prompt is None else args.prompt
    for prompt in _prompts_from_stdin() if args.interactive else [prompt]:
        unknown = getattr(run.tokenizer, "unknown_chars", lambda _: [])(prompt)
        if unknown:
            print(f"slm: note: dropping characters the tokenizer has never seen: {''.join(unknown)!r}", file=sys.stderr)
            prompt = "".join(c for c in prompt if c not in unknown)
        samples = [params.nth(i) for i in range(args.num_samples)]  # decoded as one batch; shown one by one
        for i, pieces in enumerate(stream_batch(run.model, run.tokenizer, prompt, samples, use_cache=not args.no_cache)):
            if args.num_samples > 1:
                sys.stdout.write(f"--- sample {i + 1}/{args.num_samples}\n")
            sys.stdout.write(prompt)
            for piece in pieces:
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
            sys.stdout.flush()


def _messages(text: str) -> list:
    """--messages: a JSON list, or the path of a .json file holding one."""
    import json

    try:
        return json.loads(Path(text).read_text(encoding="utf-8") if text.endswith(".json") else text)
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"--messages is not a JSON list of {{role, content}} nor a readable .json file ({e})") from None


def _cmd_chat(args: argparse.Namespace) -> None:
    from .runs import BEST, LAST, load_run
    from .sampling import FIELDS
    from .session import COMMANDS, ChatSession, chat_loop

    run = load_run(args.run, weights=LAST if args.last else BEST, int8=args.int8)
    flags = {key: getattr(args, key) for key in FIELDS if getattr(args, key) is not None}
    params = run.config.sample.params().replace(**flags).validate(prefix="sample.")
    session = ChatSession(run.model, run.tokenizer, params, system=args.system)
    prompt = (lambda: print("> ", end="", file=sys.stderr, flush=True)) if sys.stdin.isatty() else None
    print(f"chatting with {args.run} ({COMMANDS})", file=sys.stderr)
    if prompt is not None:
        prompt()

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    chat_loop(session, sys.stdin, write, prompt)


def _prompts_from_stdin():
    """Prompts typed (or piped) one per line, until EOF, an empty line or 'exit'."""
    while True:
        if sys.stdin.isatty():
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line or line.strip() in ("", "exit"):
            return
        yield line.rstrip("\r\n")


def _cmd_serve(args: argparse.Namespace, overrides: dict) -> None:
    from .serve import serve

    serve(args.run, host=args.host, port=args.port, overrides=overrides)


def _cmd_data(args: argparse.Namespace) -> None:
    from .data.shards import describe

    print(describe(args.path))


def _cmd_eval(args: argparse.Namespace) -> None:
    from .evaluate import evaluate_run

    print(evaluate_run(args.run, source=args.source, split=args.split, int8=args.int8, unknown=args.unknown).summary())


def _cmd_plot(args: argparse.Namespace) -> None:
    from .plot import plot_runs

    print(plot_runs(args.runs, args.out))


def _cmd_sweep(args: argparse.Namespace, overrides: dict) -> None:
    from .sweep import sweep

    sweep(args.recipe, args.grid, args.seeds, args.samples, overrides, args.out, args.parallel, args.overwrite, args.file)


def _cmd_runs(args: argparse.Namespace) -> None:
    from .runtable import format_table, run_table

    print(format_table(run_table(args.dirs, args.sort, args.per_run), args.format))


def _cmd_quantize(args: argparse.Namespace) -> None:
    from .runs import quantize_run

    result = quantize_run(args.run)
    print(
        f"{result.path}: {result.bytes_int8 / 1e6:.2f} MB int8 vs {result.bytes_fp32 / 1e6:.2f} MB fp32 "
        f"({result.bytes_fp32 / result.bytes_int8:.2f}x smaller); use it with --int8"
    )


def _cmd_export(args: argparse.Namespace) -> None:
    from .export import export_hf

    if args.format == "gguf":
        from .export_gguf import export_gguf

        print(export_gguf(args.run, args.out, args.dtype))
        return
    if args.format == "onnx":
        from .export_onnx import export_onnx

        print(export_onnx(args.run, args.out, args.kv_cache))
        return
    result = export_hf(args.run, args.out)
    print(result.out)
    if result.note:
        print(f"slm: note: {result.note}", file=sys.stderr)


def _cmd_import_hf(args: argparse.Namespace) -> None:
    from .export import import_hf

    print(import_hf(args.folder, args.out, args.block_size))


def _cmd_recipes(args: argparse.Namespace) -> None:
    from .recipes import summarize_recipes

    for row in summarize_recipes():
        print(row.line())


_WITH_OVERRIDES = {
    "train": _cmd_train, "prepare": _cmd_prepare, "finetune": _cmd_finetune, "serve": _cmd_serve, "sweep": _cmd_sweep,
}  # fmt: skip
_COMMANDS = {
    "sample": _cmd_sample, "chat": _cmd_chat, "recipes": _cmd_recipes, "data": _cmd_data, "eval": _cmd_eval,
    "plot": _cmd_plot, "quantize": _cmd_quantize, "export": _cmd_export, "import-hf": _cmd_import_hf, "runs": _cmd_runs,
}  # fmt: skip


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of `slm`; returns the exit code."""
    try:
        return _run(argv)
    except BrokenPipeError:
        # The reader of stdout has gone (`slm sample ... | head`): end quietly, as cat does. Point
        # stdout at /dev/null so the interpreter's last flush does not fail again on the way out.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE: the status a shell reports for cat in the same place


def _run(argv: Optional[list[str]]) -> int:
    """Parse argv, run the command; SlmError becomes one line on stderr and exit code 1."""
    from .config import parse_overrides

    parser = _parser()
    try:
        args, rest = parser.parse_known_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        if args.command in _WITH_OVERRIDES:  # these take --section.key=value overrides
            _WITH_OVERRIDES[args.command](args, parse_overrides(rest))
        else:
            if rest:
                raise ConfigError(f"unrecognized arguments: {' '.join(rest)}; see `slm {args.command} --help`")
            _COMMANDS[args.command](args)
    except SlmError as e:
        print(f"slm: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("slm: interrupted", file=sys.stderr)
        return 130
    return 0

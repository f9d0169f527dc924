"""slmkit: build small language models from scratch.

    import slmkit
    run = slmkit.load_run("runs/kjv-char")
    print(slmkit.generate(run.model, run.tokenizer, "In the beginning", max_new_tokens=100))
"""

from .config import RunConfig, load_recipe
from .data.prepare import prepare
from .errors import SlmError
from .evaluate import evaluate_run
from .export import export_hf, import_hf
from .finetune import finetune
from .generate import generate, stream
from .model import GPT, GPTConfig
from .plot import plot_runs
from .runs import Run, load_run, quantize_run
from .tokenizer import Tokenizer, load_tokenizer
from .train import train

__all__ = [
    "GPT",
    "GPTConfig",
    "Run",
    "RunConfig",
    "SlmError",
    "Tokenizer",
    "evaluate_run",
    "export_hf",
    "finetune",
    "generate",
    "import_hf",
    "load_recipe",
    "load_run",
    "load_tokenizer",
    "plot_runs",
    "prepare",
    "quantize_run",
    "stream",
    "train",
]
__version__ = "0.1.0"

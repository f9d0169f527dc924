"""slmkit: build small language models from scratch.

    import slmkit
    run = slmkit.load_run("runs/kjv-char")
    print(slmkit.generate(run.model, run.tokenizer, "In the beginning", max_new_tokens=100))
"""

from .checkpoint import Run, load_run
from .config import RunConfig, load_recipe
from .errors import SlmError
from .finetune import finetune
from .generate import generate, stream
from .model import GPT, GPTConfig
from .tokenizer import Tokenizer, load_tokenizer
from .train import train

__all__ = [
    "GPT",
    "GPTConfig",
    "Run",
    "RunConfig",
    "SlmError",
    "Tokenizer",
    "finetune",
    "generate",
    "load_recipe",
    "load_run",
    "load_tokenizer",
    "stream",
    "train",
]
__version__ = "0.1.0"

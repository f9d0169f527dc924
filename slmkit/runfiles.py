"""The run folder's layout: the name of every file in it (no torch, so `slm runs` and `slm plot` read run
folders without importing it; slmkit/runs.py writes and loads them).

    runs/<name>/
      config.yaml             CONFIG: the resolved recipe
      tokenizer.json          TOKENIZER: the tokenizer
      tokenizer.sha256        FINGERPRINT: sha256 of tokenizer.json at creation (`sha256sum -c` reads it);
                              a run whose tokenizer was replaced since is refused (older runs have none)
      chat_template.json      CHAT_TEMPLATE: a chat run's markers (special tokens after the vocabulary) and template
      special_tokens_map.json SPECIAL_TOKENS: an imported tokenizer's end-of-text token when it is not <|endoftext|>
      model.safetensors       BEST: weights of the best evaluation
      last.safetensors        LAST: weights at the last checkpoint
      state.pt                STATE: weights, optimizer, step, RNG states, sampler position (torch.load weights_only)
      metrics.csv  train.log  METRICS, LOG: appended to by training (a resumed run continues them)
      checkpoints/            CHECKPOINTS: with train.keep_last_k, the last k checkpoints
      tensorboard/            TENSORBOARD: with train.tensorboard
      loss.png                PLOT: loss and LR curves drawn at the end of training
      model-int8.safetensors  INT8: the int8 model of `slm quantize` (quantize.int8_state's tensors)

    runs/<recipe>-sweep/      a folder of run folders written by `slm sweep` (slmkit/sweep.py)
      sweep.yaml              SWEEP: the recipe, the fixed overrides and every run's overrides
"""

from __future__ import annotations

from .tokenizer.chat import TEMPLATE_FILE
from .tokenizer.hf import SPECIAL_TOKENS_FILE

CONFIG = "config.yaml"
TOKENIZER = "tokenizer.json"
FINGERPRINT = "tokenizer.sha256"
CHAT_TEMPLATE = TEMPLATE_FILE  # written beside tokenizer.json by a ChatTokenizer, read back by load_tokenizer
SPECIAL_TOKENS = SPECIAL_TOKENS_FILE  # written beside tokenizer.json by an HFTokenizer whose end-of-text is not EOT
BEST = "model.safetensors"
LAST = "last.safetensors"
STATE = "state.pt"
METRICS = "metrics.csv"
LOG = "train.log"
INT8 = "model-int8.safetensors"
CHECKPOINTS = "checkpoints"
TENSORBOARD = "tensorboard"
PLOT = "loss.png"
SWEEP = "sweep.yaml"
RUN_FILES = (
    CONFIG, TOKENIZER, FINGERPRINT, CHAT_TEMPLATE, SPECIAL_TOKENS, BEST, LAST, STATE, METRICS, LOG, INT8, CHECKPOINTS,
    TENSORBOARD, PLOT,
)

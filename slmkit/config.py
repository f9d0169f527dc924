"""Typed configuration: one dataclass per pipeline stage, loaded from YAML recipes.

A recipe is a YAML mapping `{section: {key: value}}`; command-line overrides
`--section.key=value` are applied on top. Unknown keys, wrong types and
out-of-range values raise `ConfigError` with a one-line message.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from .atomic import atomic_write_text
from .errors import ConfigError
from .sampling import FIELDS, SamplingParams

DEFAULT_RECIPE = "kjv-bpe"
MAX_RECIPE_BYTES = 1_000_000  # a recipe is a page of YAML


@dataclass
class DataConfig:
    """Where the text comes from and how it is split and normalized."""

    source: str = "kjv"  # kjv | tinyshakespeare | hf:<dataset>[:<config>] | a file, folder or glob
    format: str = "text"  # text | chat: JSONL conversations, the loss on assistant tokens only (see slmkit/chat.py)
    val_fraction: float = 0.1  # the last fraction of documents is the val split
    text_field: str = "text"  # field holding the text in .jsonl/.parquet records and HF datasets
    lowercase: bool = False
    collapse_whitespace: bool = False
    drop_empty_lines: bool = False
    errors: str = "strict"  # strict | replace: what to do with bytes that are not UTF-8
    keep_crlf: bool = False  # keep Windows line endings (\r\n); by default they become \n
    unknown: str = "error"  # error | drop: characters a char tokenizer lacks (eval and fine-tune on other text)
    shard_dir: str = ""  # where shards go; empty = shards/<source>-<tokenizer>-<hash>
    num_workers: int = 0  # tokenizer processes writing shards; 0 = one per CPU core

    def validate(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction={self.val_fraction} must be between 0 and 1 (e.g. 0.1)")
        if self.errors not in ("strict", "replace"):
            raise ConfigError(f"data.errors={self.errors!r} must be 'strict' or 'replace'")
        if self.format not in ("text", "chat"):
            raise ConfigError(f"data.format={self.format!r} must be 'text' or 'chat' (JSONL conversations)")
        if self.unknown not in ("error", "drop"):
            raise ConfigError(f"data.unknown={self.unknown!r} must be 'error' or 'drop'")
        if not self.source:
            raise ConfigError("data.source is empty: give 'kjv', a file, a folder or a glob")
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers={self.num_workers} must be >= 0 (0 = one per CPU core)")


@dataclass
class TokenizerConfig:
    """Which tokenizer to fit on the train split (or load) for the corpus."""

    kind: str = "char"  # a kind declared in slmkit/tokenizer/ (`slm` lists them): char | word | bpe | wordpiece | gpt2
    vocab_size: int = 0  # 0 = the kind's default (char: every character of the train split)
    min_frequency: int = 2  # word/bpe/wordpiece: tokens seen fewer times are not learned

    def validate(self) -> None:
        from .tokenizer.registry import get_kind  # the kinds declare their own vocabulary limits

        get_kind(self.kind).check_vocab_size(self.vocab_size)
        if self.min_frequency < 0:
            raise ConfigError(f"tokenizer.min_frequency={self.min_frequency} must be >= 0")


POS_EMBEDDINGS = ("learned", "sinusoidal", "rotary", "none")
NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "gelu_exact", "relu2", "swiglu")


@dataclass
class ModelConfig:
    """Shape of the GPT (see slmkit.model.GPT)."""

    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 128
    dropout: float = 0.0
    bias: bool = True  # bias in Linear layers and LayerNorms, as GPT-2
    vocab_size: int = 0  # 0 = taken from the tokenizer
    pos_embedding: str = "learned"  # learned (GPT-2 wpe) | sinusoidal (fixed) | rotary (RoPE on q, k) | none
    d_ff: int = 0  # feed-forward hidden width; 0 = 4 * n_embd
    norm: str = "layernorm"  # layernorm | rmsnorm
    mlp: str = "gelu"  # gelu (tanh approximation, GPT-2) | gelu_exact (erf, nanoGPT's nn.GELU()) | relu2 (ReLU squared) | swiglu (gate * up, then down)
    qk_norm: bool = False  # RMS-normalize q and k per head (no weight) before attention
    zero_init_proj: bool = False  # attention and MLP output projections start at zero (modded-nanogpt)
    tie_embeddings: bool = True  # lm_head shares the token embedding matrix (GPT-2)
    logit_softcap: float = 0.0  # > 0: logits = cap * tanh(logits / cap) (Gemma 2, modded-nanogpt); 0 = off
    # The options pretrained Llama/Qwen3 checkpoints need (slm import-hf sets them from config.json):
    n_kv_head: int = 0  # key/value heads (grouped-query attention: each serves n_head / n_kv_head queries); 0 = n_head
    head_dim: int = 0  # size of each attention head; 0 = n_embd / n_head (Qwen3-0.6B: 128 with n_embd 1024, 16 heads)
    rope_theta: float = 10000.0  # rotary base (SmolLM2 100000, Qwen3 1000000)
    norm_eps: float = 0.0  # epsilon of every norm; 0 = the norm's default: 1e-5 layernorm, 1e-6 rmsnorm and qk_norm
    qk_norm_gain: bool = False  # qk_norm with a learned gain per head dimension, shared by the heads (Qwen3's q/k_norm)

    @property
    def head_size(self) -> int:
        """Size of each attention head."""
        return self.head_dim or self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        """Number of key/value heads (n_head unless grouped-query attention)."""
        return self.n_kv_head or self.n_head

    def eps(self, norm: str) -> float:
        """Epsilon of a `norm` ('layernorm' or 'rmsnorm', which QK-norm is too)."""
        return self.norm_eps or (1e-5 if norm == "layernorm" else 1e-6)

    def validate(self) -> None:
        for key in ("n_layer", "n_head", "n_embd", "block_size"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"model.{key}={getattr(self, key)} must be a positive integer")
        if self.n_embd % self.n_head and not self.head_dim:
            raise ConfigError(
                f"model.n_embd={self.n_embd} is not divisible by model.n_head={self.n_head}; "
                "pick sizes where n_embd is a multiple of n_head (or set model.head_dim)"
            )
        self._validate_attention()
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout={self.dropout} must be in [0, 1)")
        if self.vocab_size < 0:
            raise ConfigError(f"model.vocab_size={self.vocab_size} must be >= 0")
        for key, valid in (("pos_embedding", POS_EMBEDDINGS), ("norm", NORMS), ("mlp", MLPS)):
            if getattr(self, key) not in valid:
                raise ConfigError(f"model.{key}={getattr(self, key)!r} is not known; valid: {', '.join(valid)}")
        if self.d_ff < 0:
            raise ConfigError(f"model.d_ff={self.d_ff} must be >= 0 (0 = 4 * n_embd)")
        if self.logit_softcap < 0 or not math.isfinite(self.logit_softcap):
            raise ConfigError(f"model.logit_softcap={self.logit_softcap} must be a finite number >= 0 (0 = off, e.g. 15)")
        if self.pos_embedding == "rotary" and self.head_size % 2:
            raise ConfigError(
                f"model.pos_embedding=rotary needs an even head size, got {self.head_size}; "
                "change model.n_embd, model.n_head or model.head_dim"
            )

    def _validate_attention(self) -> None:
        """The options of pretrained Llama/Qwen3 checkpoints (n_kv_head, head_dim, rope_theta, norm_eps, qk_norm_gain)."""
        for key in ("n_kv_head", "head_dim"):
            if getattr(self, key) < 0:
                raise ConfigError(f"model.{key}={getattr(self, key)} must be >= 0 (0 = the default)")
        if self.n_head % self.kv_heads:
            raise ConfigError(f"model.n_kv_head={self.n_kv_head} must divide model.n_head={self.n_head}")
        if self.rope_theta <= 0:
            raise ConfigError(f"model.rope_theta={self.rope_theta} must be > 0 (10000 is RoPE's usual base)")
        if not 0.0 <= self.norm_eps < 1.0:
            raise ConfigError(f"model.norm_eps={self.norm_eps} must be in [0, 1) (0 = the norm's default)")
        if self.qk_norm_gain and not self.qk_norm:
            raise ConfigError("model.qk_norm_gain=true needs model.qk_norm=true")


@dataclass
class TrainConfig:
    """Optimizer, schedule, budget and cadence of the training loop."""

    batch_size: int = 32
    lr: float = 1e-3
    min_lr: float = 1e-4  # cosine decays to this
    warmup_steps: int = 100  # linear warmup; with a time budget it ends by 10% of the budget at the latest
    warmup_fraction: float = 0.0  # > 0: warm up over this fraction of the budget instead of warmup_steps
    cooldown_fraction: float = 1.0  # cosine: decay to min_lr over this last fraction of the budget (1 = all of it)
    weight_decay: float = 0.1
    decay_embeddings: bool = False  # also decay the embedding tables (nanoGPT decays every 2-D tensor)
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # max global grad norm; 0 = off
    max_steps: int = 0  # 0 = no step limit (the time budget governs)
    max_minutes: float = 5.0  # 0 = no time limit
    eval_interval: int = 250  # steps between evaluations on fixed val batches
    eval_batches: int = 20  # fixed val batches per evaluation; 0 = the whole val split
    log_interval: int = 10  # steps between progress-bar and log updates
    seed: int = 1337
    device: str = "auto"  # auto (cuda > mps > cpu) | cpu | cuda | mps
    threads: int = 0  # CPU threads for torch; 0 = torch's default
    optimizer: str = "adamw"  # adamw | adam | muon (Muon for hidden matrices, AdamW for the rest)
    muon_lr: float = 0.02  # learning rate of the Muon group
    embedding_lr: float = 0.0  # lr of the embedding tables (a tied head's too); 0 = train.lr
    muon_momentum: float = 0.95
    muon_ns_steps: int = 5  # Newton-Schulz iterations per Muon update (fewer: cheaper, less orthogonal)
    muon_beta2: float = 0.0  # > 0: NorMuon, each row of the update over the root of this EMA of its mean square
    schedule: str = "cosine"  # constant | cosine | exponential | plateau (all after linear warmup)
    gamma: float = 0.95  # exponential: lr *= gamma per epoch
    plateau_factor: float = 0.5  # plateau: lr *= factor ...
    plateau_patience: int = 2  # ... after this many evaluations without improvement
    early_stop_patience: int = 0  # stop after this many evaluations without improvement; 0 = off
    early_stop_min_delta: float = 0.0  # an improvement must beat the best val loss by more than this
    max_epochs: int = 0  # 0 = no epoch limit; an epoch = train tokens / tokens per step
    grad_accum_steps: int = 1  # micro-batches per optimizer step
    precision: str = "auto"  # auto (fp32 on cpu/mps, bf16 on cuda if supported else fp16) | fp32 | bf16 | fp16
    compile: bool = False  # torch.compile the model
    eval_full: bool = False  # evaluate on the whole val split instead of eval_batches fixed batches
    sample_interval: int = 0  # steps between samples (sample.prompt, sample.temperature); 0 = off
    tensorboard: bool = False  # also log to <run>/tensorboard (needs the tensorboard package)
    keep_last_k: int = 0  # also keep the last k checkpoints in <run>/checkpoints; 0 = only last
    stop_at_val_loss: float = 0.0  # stop once a full-val-split evaluation reaches this loss; 0 = off
    seq_len: int = 0  # training window in tokens; 0 = model.block_size
    # > 0 with seq_len < block_size: the last fraction of the budget trains block_size windows instead,
    # batch_size * seq_len / block_size of them (the same tokens per step): short windows early, long ones late
    full_context_fraction: float = 0.0
    max_nonfinite_steps: int = 5  # stop after this many NaN/inf steps in a row (each is skipped)

    def validate(self) -> None:
        for key in ("batch_size", "eval_interval", "log_interval", "grad_accum_steps", "max_nonfinite_steps"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"train.{key}={getattr(self, key)} must be a positive integer")
        for key in (
            "max_steps", "warmup_steps", "threads", "eval_batches", "plateau_patience", "early_stop_patience",
            "max_epochs", "sample_interval", "keep_last_k", "seq_len", "muon_ns_steps",
        ):  # fmt: skip
            if getattr(self, key) < 0:
                raise ConfigError(f"train.{key}={getattr(self, key)} must be >= 0")
        for key in ("lr", "min_lr", "weight_decay", "grad_clip", "max_minutes", "muon_lr", "embedding_lr",
                    "early_stop_min_delta", "stop_at_val_loss"):  # fmt: skip
            value = getattr(self, key)
            if value < 0 or not math.isfinite(value):
                raise ConfigError(f"train.{key}={value} must be a finite number >= 0")
        if self.lr == 0:
            raise ConfigError("train.lr=0 would not train; give a positive learning rate such as 1e-3")
        if self.max_steps == 0 and self.max_minutes == 0 and self.max_epochs == 0:
            raise ConfigError("train.max_steps, train.max_epochs and train.max_minutes are all 0; set one of them")
        for key, valid in (
            ("optimizer", OPTIMIZERS), ("schedule", SCHEDULES), ("precision", ("auto", "fp32", "bf16", "fp16")),
        ):  # fmt: skip
            if getattr(self, key) not in valid:
                raise ConfigError(f"train.{key}={getattr(self, key)!r} is not known; valid: {', '.join(valid)}")
        for key in ("gamma", "plateau_factor"):
            if not 0.0 < getattr(self, key) <= 1.0:
                raise ConfigError(f"train.{key}={getattr(self, key)} must be in (0, 1], e.g. 0.95")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ConfigError(f"train.warmup_fraction={self.warmup_fraction} must be in [0, 1), e.g. 0.05 (0 = warmup_steps)")
        if not 0.0 < self.cooldown_fraction <= 1.0:
            raise ConfigError(f"train.cooldown_fraction={self.cooldown_fraction} must be in (0, 1], e.g. 0.3 (1 = the whole run)")
        if not 0.0 <= self.full_context_fraction <= 1.0:
            raise ConfigError(f"train.full_context_fraction={self.full_context_fraction} must be in [0, 1], e.g. 0.25 (0 = off)")
        if not 0.0 <= self.muon_momentum < 1.0:
            raise ConfigError(f"train.muon_momentum={self.muon_momentum} must be in [0, 1), e.g. 0.95")
        if not 0.0 <= self.muon_beta2 < 1.0:
            raise ConfigError(f"train.muon_beta2={self.muon_beta2} must be in [0, 1), e.g. 0.95 (0 = plain Muon)")
        if self.device not in ("auto", "cpu", "cuda", "mps") and not self.device.startswith("cuda:"):
            raise ConfigError(f"train.device={self.device!r}; valid: auto, cpu, cuda, cuda:N, mps")


OPTIMIZERS = ("adamw", "adam", "muon")
SCHEDULES = ("constant", "cosine", "exponential", "plateau")


@dataclass
class SampleConfig:
    """The sample printed during and after training, and `slm sample`'s defaults (see SamplingParams)."""

    prompt: str = ""
    max_new_tokens: int = 300
    temperature: float = 0.8
    top_k: int = 0  # 0 = no top-k filtering
    seed: int = 1337
    top_p: float = 1.0  # nucleus sampling: the smallest set of tokens holding this much probability; 1 = off
    repetition_penalty: float = 1.0  # > 1 makes tokens already in the context less likely (CTRL); 1 = off

    def params(self) -> SamplingParams:
        """These options as the SamplingParams generate takes (not validated: validate() does that)."""
        return SamplingParams(**{key: getattr(self, key) for key in FIELDS if hasattr(self, key)})

    def validate(self) -> None:
        self.params().validate(prefix="sample.")


@dataclass
class ServeConfig:
    """`slm serve`: where the HTTP API listens and the limits it enforces on each request."""

    host: str = "127.0.0.1"  # loopback only; another address exposes an API without authentication
    port: int = 8000
    max_tokens_limit: int = 1024  # largest max_tokens a request may ask for
    max_prompt_chars: int = 8192  # longest prompt accepted, in characters
    max_batch: int = 16  # sequences decoded together (continuous batching); 1 = one at a time
    max_queue: int = 256  # sequences waiting for a batch slot; beyond it requests get HTTP 503 + Retry-After
    request_timeout: float = 600.0  # seconds a request may take, waiting included; 0 = no limit
    threads: int = 1  # torch threads for generation (0 = torch's default); on a busy CPU more can be slower
    body_timeout: float = 30.0  # seconds a client may take to send a request's body; slower ones get 408; 0 = no limit
    api_key: str = ""  # when set (or SLM_API_KEY), every request but /health and the page needs `Authorization: Bearer KEY`
    cors_origins: str = ""  # comma-separated origins whose browser pages may call the API ("*": any); "" = CORS off

    def validate(self) -> None:
        if not self.host:
            raise ConfigError("serve.host is empty; use 127.0.0.1 (this machine only) or an address to listen on")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"serve.port={self.port} must be between 0 and 65535 (e.g. 8000)")
        for key in ("max_tokens_limit", "max_prompt_chars", "max_batch"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"serve.{key}={getattr(self, key)} must be a positive integer")
        for key in ("max_queue", "request_timeout", "threads", "body_timeout"):
            if getattr(self, key) < 0:
                raise ConfigError(f"serve.{key}={getattr(self, key)} must be >= 0")


@dataclass
class RunConfig:
    """A whole recipe: every stage's section."""

    name: str = DEFAULT_RECIPE
    reproduces: str = ""  # the number of the seed system this recipe reproduces, if any (not an RNG seed: train.seed)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)

    def validate(self) -> "RunConfig":
        for section in SECTIONS:
            getattr(self, section).validate()
        if self.train.seq_len > self.model.block_size:
            raise ConfigError(
                f"train.seq_len={self.train.seq_len} exceeds model.block_size={self.model.block_size}; "
                "lower it or use 0 (= block_size)"
            )
        tc, block = self.train, self.model.block_size
        if tc.full_context_fraction and self.data.format == "chat":
            raise ConfigError("train.full_context_fraction is for plain text; chat windows start at each conversation")
        if tc.full_context_fraction and tc.seq_len in (0, block):
            raise ConfigError(
                f"train.full_context_fraction={tc.full_context_fraction} needs train.seq_len below "
                f"model.block_size={block} (the windows it lengthens); set --train.seq_len, e.g. {block // 2}"
            )
        if tc.full_context_fraction and (tc.batch_size * tc.seq_len) % block:
            raise ConfigError(
                f"train.full_context_fraction needs train.batch_size * train.seq_len ({tc.batch_size * tc.seq_len}) "
                f"to be a multiple of model.block_size={block} (the same tokens per step in longer windows)"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS = ("data", "tokenizer", "model", "train", "sample", "serve")
LABELS = ("name", "reproduces")  # top-level keys that are plain strings


def _coerce(value: Any, kind: Any, key: str) -> Any:
    """Return `value` as type `kind`, or raise ConfigError naming `key`."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(value, args[0], key)
    wrong = ConfigError(f"{key}={value!r} should be {getattr(kind, '__name__', kind)}")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise wrong
    if kind is int:
        if isinstance(value, bool):
            raise wrong
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                raise wrong from None
        raise wrong
    if kind is float:
        if isinstance(value, bool):
            raise wrong
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise wrong from None
        raise wrong
    if kind is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise wrong
    raise ConfigError(f"{key}: unsupported type {kind}")


@functools.cache
def _type_hints(section: type) -> dict[str, Any]:
    """A section's field types (resolving the annotations costs ~1 ms: once per class, not per key)."""
    return typing.get_type_hints(section)


def apply_override(cfg: RunConfig, key: str, value: Any) -> None:
    """Set dotted `key` (e.g. 'train.lr') on cfg, checking that it exists and its type."""
    if key in LABELS:
        setattr(cfg, key, _coerce(value, str, key))
        return
    section, _, name = key.partition(".")
    if section not in SECTIONS or not name:
        raise ConfigError(f"unknown key {key!r}; keys look like section.key with section one of: {', '.join(SECTIONS)}")
    obj = getattr(cfg, section)
    hints = _type_hints(type(obj))
    if name not in hints:
        valid = ", ".join(f"{section}.{f.name}" for f in dataclasses.fields(obj))
        raise ConfigError(f"unknown key {key!r}; valid keys in {section}: {valid}")
    setattr(obj, name, _coerce(value, hints[name], key))


def from_dict(raw: Any, origin: str = "recipe") -> RunConfig:
    """Build a RunConfig from a nested mapping such as a parsed recipe."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: expected a mapping of sections (data, model, train, ...), got {type(raw).__name__}")
    cfg = RunConfig()
    for section, body in raw.items():
        if section in LABELS:
            apply_override(cfg, section, body)
            continue
        if section not in SECTIONS:
            raise ConfigError(f"{origin}: unknown section {section!r}; valid: {', '.join(LABELS + SECTIONS)}")
        if body is None:
            continue
        if not isinstance(body, dict):
            raise ConfigError(f"{origin}: section {section!r} should be a mapping of keys")
        for key, value in body.items():
            apply_override(cfg, f"{section}.{key}", value)
    return cfg


def parse_yaml(text: str) -> Any:
    """YAML text as Python values, safely; libyaml's parser when PyYAML has it (~20x faster than pure Python)."""
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def recipes_dir() -> Path:
    """The folder holding the shipped recipes (the repository's recipes/)."""
    return Path(str(importlib.resources.files("slmkit"))).parent / "recipes"


def list_recipes() -> list[Path]:
    """Every shipped recipe file, sorted by name."""
    return sorted(recipes_dir().glob("*.yaml"))


def find_recipe(name_or_path: str) -> Path:
    """Resolve a recipe given by name (`kjv-bpe`) or by path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"recipe file {name_or_path} does not exist")
        return path
    candidate = recipes_dir() / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    names = ", ".join(p.stem for p in list_recipes())
    raise ConfigError(f"unknown recipe {name_or_path!r}; give a YAML path or one of: {names}")


def load_recipe(name_or_path: Optional[str] = None, overrides: Optional[dict[str, Any]] = None) -> RunConfig:
    """Load a recipe (default: kjv-bpe, then named after its data and tokenizer), apply
    `{"section.key": value}` overrides, validate."""
    path = find_recipe(name_or_path or DEFAULT_RECIPE)
    if path.stat().st_size > MAX_RECIPE_BYTES:  # parsing megabytes of YAML takes seconds for nothing
        raise ConfigError(
            f"recipe {path} is {path.stat().st_size:,} bytes, too big for a recipe; "
            "is it a data file? give it as --data.source instead"
        )
    try:
        raw = parse_yaml(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"recipe {path} is not valid YAML ({first}); fix the file") from None
    cfg = from_dict(raw, origin=str(path))
    if not (isinstance(raw, dict) and "name" in raw):
        cfg.name = path.stem
    for key, value in (overrides or {}).items():
        apply_override(cfg, key, value)
    cfg.validate()
    if name_or_path is None and "name" not in (overrides or {}):
        cfg.name = run_name(cfg)
    return cfg


def run_name(cfg: RunConfig) -> str:
    """The name of a run given no recipe: its data and tokenizer, e.g. `kjv-bpe` or `sotu-char`."""
    from .data.sources import source_label  # the source kinds name their data

    return f"{source_label(cfg.data.source)}-{cfg.tokenizer.kind}"


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """Turn ['--train.lr=3e-4', '--model.n_layer', '6'] into {'train.lr': 3e-4, 'model.n_layer': 6}."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise ConfigError(f"unexpected argument {arg!r}; overrides look like --section.key=value")
        key = arg[2:]
        if "=" in key:
            key, text = key.split("=", 1)
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            i += 1
            text = args[i]
        else:
            raise ConfigError(f"option --{key} needs a value: --{key}=VALUE")
        try:
            out[key] = parse_yaml(text) if text != "" else ""
        except yaml.YAMLError:
            out[key] = text
        if isinstance(out[key], (dict, list)):
            out[key] = text  # keep odd strings like '[a]' literal; types are checked later
        i += 1
    return out


def save_config(cfg: RunConfig, path: Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def load_config(path: Path) -> RunConfig:
    """Read a resolved config.yaml written by save_config."""
    try:
        raw = parse_yaml(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path} is missing; is this a run folder made by `slm train`?") from None
    except (yaml.YAMLError, UnicodeDecodeError):
        raise ConfigError(f"{path} is not valid YAML; restore it from the recipe") from None
    if not raw:  # an empty file would silently become the default recipe
        raise ConfigError(f"{path} is empty; restore it from the recipe the run was trained with")
    if isinstance(raw, dict) and "seed" in raw:  # run folders written before the label was renamed
        raw["reproduces"] = raw.pop("seed")
    return from_dict(raw, origin=str(path)).validate()

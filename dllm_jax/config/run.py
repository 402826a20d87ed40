"""Configs of a training run: mesh, optimisation, data, the host loop, and the experiment."""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

from dllm_jax.config.model import ModelConfig, check_sequence_length
from dllm_jax.config.noise import NoiseConfig
from dllm_jax.validate import check_seed, check_types, number, one_of, positive_int


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh shape; -1 in one axis means 'all remaining devices'."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1

    def __post_init__(self):
        check_types(self)
        sizes = (self.data, self.fsdp, self.tensor)
        if any(s == 0 or s < -1 for s in sizes) or sizes.count(-1) > 1:
            raise ValueError(
                f"MeshConfig sizes must be positive (one may be -1), got data={self.data}, "
                f"fsdp={self.fsdp}, tensor={self.tensor}"
            )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation: AdamW, linear warmup + cosine decay, clipping, optional EMA.

    ``grad_clip`` is the global-norm clipping threshold; 0 turns clipping off.

    ``init_from``: start the parameters from another run instead of at random: a run
    directory of this library (its latest checkpoint, EMA weights if it kept them), e.g. an
    AR run adapted into a diffusion model with the same backbone sizes. The optimiser starts
    fresh. Used only when this run has no checkpoint yet; a resume ignores it. "" = random.
    """

    batch_size: int = 32
    seq_len: int = 128
    steps: int = 1000
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.98
    grad_clip: float = 1.0
    ema_decay: float = 0.0
    seed: int = 0
    init_from: str = ""

    def __post_init__(self):
        check_types(self)
        check_seed(self, "seed")
        positive_int(self, "batch_size", "seq_len", "steps")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(
                f"TrainConfig.warmup_steps must be an integer >= 0, got {self.warmup_steps!r}"
            )
        if not number(self, "lr") > 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")
        if not 0 <= number(self, "min_lr_ratio") <= 1:
            raise ValueError(f"TrainConfig.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not 0 <= number(self, "ema_decay") < 1:
            raise ValueError(f"TrainConfig.ema_decay must be in [0, 1), got {self.ema_decay}")
        if not number(self, "grad_clip") >= 0:
            raise ValueError(f"TrainConfig.grad_clip must be >= 0 (0 = no clipping), got {self.grad_clip}")
        for name in ("b1", "b2"):
            if not 0 <= number(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be in [0, 1), got {getattr(self, name)}")
        if number(self, "weight_decay") < 0:
            raise ValueError(f"TrainConfig.weight_decay must be >= 0, got {self.weight_decay}")


def check_block_training(model: ModelConfig, noise: NoiseConfig, seq_len: int) -> None:
    """A block-causal model trains with the BD3-LM objective: whole blocks, one t per block."""
    if seq_len % model.block_size:
        raise ValueError(
            f"TrainConfig.seq_len={seq_len} must be a multiple of ModelConfig.block_size="
            f"{model.block_size} (block diffusion trains on whole blocks)"
        )
    if model.time_conditioning:
        raise ValueError(
            "a block-causal model must not be time-conditioned (ModelConfig.time_conditioning="
            "False): each block has its own t, and the exact cache stores finished blocks at none"
        )
    if noise.ar_fraction or noise.ar_fraction_end:
        raise ValueError(
            "NoiseConfig.ar_fraction is for bidirectional models; a block-causal model is AR over "
            "blocks already (block_size=1 is the AR objective)"
        )
    if noise.context_ar_weight and not (model.shift and model.context_attention == "causal"):
        raise ValueError(
            f"NoiseConfig.context_ar_weight={noise.context_ar_weight} trains the clean stream as an AR "
            f"model: it needs ModelConfig.shift=True and context_attention='causal' (got shift="
            f"{model.shift}, context_attention={model.context_attention!r})"
        )
    if noise.context_distill and not (model.shift and model.context_attention == "causal"
                                      and noise.process == "masked"):
        raise ValueError(
            f"NoiseConfig.context_distill={noise.context_distill} takes targets from the clean stream's AR "
            f"predictions: it needs process='masked', ModelConfig.shift=True and context_attention='causal' "
            f"(got process={noise.process!r}, shift={model.shift}, context_attention={model.context_attention!r})"
        )


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where text comes from and how it becomes token batches.

    Attributes:
      source: ``embedded`` (stdlib docs, no download), ``local:<path>[,<path>]`` or
        ``tfds:<name>[@<data_dir>]``.
      tokenizer: path of a sentencepiece ``.model`` to load; empty = train one on the
        training split with ``vocab_size`` pieces and store it in the run directory.
      pack: pack documents into full sequences (eos-separated); False pads each document.
      chat_tail: conversations (``chat:<dir>``) only: which ``<|end|>`` positions after a
        reply are learned. ``block``: up to the end of the block holding the first one
        (causal models: that one; block-causal models: the rest of its block; bidirectional
        models: the whole row, as LLaDA); ``all``: the whole row for every model.
    """

    source: str = "embedded"
    tokenizer: str = ""
    vocab_size: int = 2048
    tokenizer_type: Literal["bpe", "unigram"] = "bpe"
    pack: bool = True
    chat_tail: Literal["block", "all"] = "block"
    seed: int = 0

    def __post_init__(self):
        check_types(self)
        check_seed(self, "seed")
        positive_int(self, "vocab_size")
        if not self.source:
            raise ValueError("DataConfig.source must name a corpus, got ''")
        one_of(self, "tokenizer_type", ("bpe", "unigram"))
        one_of(self, "chat_tail", ("block", "all"))


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """The host loop: logging, evaluation, samples and checkpoints.

    ``context_times``: the noise levels at which every eval also measures the NLL per
    corrupted token (``dllm_jax.evaluation.context_use``); () turns the diagnostic off.
    """

    log_every: int = 20
    eval_every: int = 200
    eval_batches: int = 4
    eval_time_points: int = 8
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    sample_steps: tuple[int, ...] = (8, 32, 128)
    num_samples: int = 2
    sample_length: int = 64
    context_times: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 0.99)

    def __post_init__(self):
        check_types(self)
        positive_int(
            self, "log_every", "eval_every", "eval_batches", "eval_time_points",
            "checkpoint_every", "keep_checkpoints", "num_samples", "sample_length",
        )
        if not isinstance(self.sample_steps, tuple):
            raise ValueError(
                f"LoopConfig.sample_steps must be a tuple of step counts, e.g. (8, 32), got {self.sample_steps!r}"
            )
        if any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 for k in self.sample_steps):
            raise ValueError(f"LoopConfig.sample_steps must be integers >= 1, got {self.sample_steps}")
        if not isinstance(self.context_times, tuple) or any(
            isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t <= 1
            for t in self.context_times
        ):
            raise ValueError(
                f"LoopConfig.context_times must be a tuple of times in (0, 1], got {self.context_times!r}"
            )


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Everything one training run needs; an experiment is a function returning one."""

    name: str
    model: ModelConfig
    noise: NoiseConfig = NoiseConfig()
    train: TrainConfig = TrainConfig()
    data: DataConfig = DataConfig()
    loop: LoopConfig = LoopConfig()
    mesh: MeshConfig = MeshConfig()

    def __post_init__(self):
        check_types(self)
        check_sequence_length(self.train.seq_len, self.model)
        wants_causal = self.noise.process == "ar"
        if wants_causal != (self.model.attention == "causal"):
            raise ValueError(
                f"NoiseConfig.process={self.noise.process!r} needs "
                f"{'causal' if wants_causal else 'non-causal'} attention, got "
                f"ModelConfig.attention={self.model.attention!r}"
            )
        if self.model.attention == "block_causal":
            check_block_training(self.model, self.noise, self.train.seq_len)
        elif self.noise.context_ar_weight or self.noise.context_distill or self.noise.block_stagger:
            raise ValueError(
                f"NoiseConfig.context_ar_weight={self.noise.context_ar_weight}, context_distill="
                f"{self.noise.context_distill} and block_stagger={self.noise.block_stagger} are for "
                f"block-causal models, got ModelConfig.attention={self.model.attention!r}"
            )
        if self.data.tokenizer == "" and self.data.vocab_size != self.model.num_tokens:
            raise ValueError(
                f"DataConfig.vocab_size={self.data.vocab_size} must equal "
                f"ModelConfig.num_tokens={self.model.num_tokens} (the tokenizer's pieces are "
                "the model's ordinary tokens)"
            )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ExperimentConfig:
        sub = {
            "model": ModelConfig, "noise": NoiseConfig, "train": TrainConfig,
            "data": DataConfig, "loop": LoopConfig, "mesh": MeshConfig,
        }
        if not isinstance(d, dict):
            raise ValueError(f"an experiment config must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config section(s) {unknown}; expected some of {sorted(known)}")
        kwargs = {}
        for k, v in d.items():
            if k not in sub:
                kwargs[k] = v
                continue
            fields = {f.name for f in dataclasses.fields(sub[k])}
            if not isinstance(v, dict):
                raise ValueError(f"config section {k!r} must be an object of fields, got {v!r}")
            extra = sorted(set(v) - fields)
            if extra:
                raise ValueError(
                    f"unknown field(s) {', '.join(f'{k}.{e}' for e in extra)} (written by another version "
                    f"of dllm_jax?); {sub[k].__name__} has {sorted(fields)}"
                )
            kwargs[k] = sub[k](**_tuples(v))
        return cls(**kwargs)


def _tuples(d: dict) -> dict:
    """JSON turns tuples into lists; frozen configs want tuples back."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}

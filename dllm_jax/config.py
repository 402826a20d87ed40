"""Frozen, typed, eagerly validated configs.

Every config is a frozen dataclass; ``__post_init__`` raises ``ValueError`` naming the bad
field, its value and what was expected. Experiments are functions returning configs; CLI
overrides are parsed only in ``experiments/``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal, NamedTuple

import numpy as np

from dllm_jax.validate import check_seed, check_types, number, one_of, positive_int

ATTENTION_KINDS = ("bidirectional", "causal", "block_causal")
SCHEDULE_KINDS = ("loglinear", "cosine", "polynomial")
PROCESS_KINDS = ("masked", "uniform", "ar")
DTYPES = ("float32", "bfloat16")
NUM_SPECIAL_TOKENS = 3  # pad, bos, mask — appended after the ordinary tokens.


class SpecialIds(NamedTuple):
    pad: int
    bos: int
    mask: int


def special_ids(num_tokens: int) -> SpecialIds:
    """Ids of the special tokens, which follow the ``num_tokens`` ordinary ones."""
    return SpecialIds(pad=num_tokens, bos=num_tokens + 1, mask=num_tokens + 2)


TIME_DISTRIBUTIONS = ("uniform", "logit_normal")
WEIGHTINGS = ("elbo", "flat")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Transformer backbone.

    Attributes:
      num_tokens: ordinary tokens, ids ``[0, num_tokens)``; the model predicts these only.
        Special ids (pad, bos, mask) follow, see ``special_ids``.
      max_len: longest sequence the rotary tables and masks are built for.
      d_model, num_layers, num_heads: sizes; ``d_model`` must be divisible by ``num_heads``.
      mlp_dim: SwiGLU hidden width (default ``4 * d_model``).
      attention: ``bidirectional`` (diffusion), ``causal`` (AR), ``block_causal`` (block
        diffusion; blocks of ``block_size`` positions attend to themselves and the past).
      time_conditioning: adaptive layer norm on t (DiT-style adaLN-Zero, as in SEDD/MDLM).
      dtype: compute dtype; parameters are always stored in float32.
      vocab_multiple: the embedding table is padded to a multiple of this (TPU-friendly).
      remat: rematerialise each block in the backward pass (less memory, more compute).
      shift: Dream's shifted prediction: the network's output at position i predicts token
        i + 1 (position 0 predicts itself), so a token's prediction is computed where its
        left neighbour sits — the structure of an AR model. The returned logits are already
        re-aligned (``logits[:, i]`` is always the distribution of token i), so processes
        and samplers see no difference.
      attention_bias: ``none``, or ``alibi``: ALiBi's distance penalty -m_h |i - j| added to
        the attention logits (on top of rotary positions), so attention starts local.
      embed_init_std: standard deviation of the input embedding at initialisation.
      head_init_scale: the output projection's initial weights are LeCun-normal times this
        factor (0 = zero init: uniform logits at step 0).
      context_attention: block-causal models only: how finished (clean) blocks attend among
        themselves: ``block_causal`` (BD3-LM) or ``causal`` (Fast-dLLM v2: an AR model adapted
        to blocks keeps its causal context; needs ``generate(cache="exact")``).
    """

    num_tokens: int
    max_len: int = 128
    d_model: int = 128
    num_layers: int = 2
    num_heads: int = 4
    mlp_dim: int | None = None
    attention: Literal["bidirectional", "causal", "block_causal"] = "bidirectional"
    block_size: int = 1
    time_conditioning: bool = False
    time_embed_dim: int = 128
    dtype: Literal["float32", "bfloat16"] = "float32"
    rope_theta: float = 10_000.0
    vocab_multiple: int = 1
    remat: bool = False
    shift: bool = False
    attention_bias: Literal["none", "alibi"] = "none"
    embed_init_std: float = 1.0
    head_init_scale: float = 1.0
    context_attention: Literal["block_causal", "causal"] = "block_causal"

    def __post_init__(self):
        check_types(self)
        positive_int(
            self, "num_tokens", "max_len", "d_model", "num_layers", "num_heads",
            "block_size", "time_embed_dim", "vocab_multiple",
        )
        if self.mlp_dim is not None:
            positive_int(self, "mlp_dim")
        if self.num_tokens < 2:
            raise ValueError(
                f"ModelConfig.num_tokens must be >= 2 ordinary tokens, got {self.num_tokens}"
            )
        if self.d_model % self.num_heads:
            raise ValueError(
                f"ModelConfig.num_heads={self.num_heads} must divide d_model={self.d_model}"
            )
        if (self.d_model // self.num_heads) % 2:
            raise ValueError(
                f"head dim d_model/num_heads={self.d_model // self.num_heads} must be even "
                "for rotary embeddings"
            )
        one_of(self, "attention", ATTENTION_KINDS)
        one_of(self, "dtype", DTYPES)
        one_of(self, "attention_bias", ("none", "alibi"))
        one_of(self, "context_attention", ("block_causal", "causal"))
        if self.context_attention != "block_causal" and self.attention != "block_causal":
            raise ValueError(
                f"ModelConfig.context_attention={self.context_attention!r} is for block_causal models, "
                f"got attention={self.attention!r}"
            )
        if not number(self, "rope_theta") > 0:
            raise ValueError(f"ModelConfig.rope_theta must be > 0, got {self.rope_theta}")
        if not number(self, "embed_init_std") > 0:
            raise ValueError(f"ModelConfig.embed_init_std must be > 0, got {self.embed_init_std}")
        if not number(self, "head_init_scale") >= 0:
            raise ValueError(f"ModelConfig.head_init_scale must be >= 0, got {self.head_init_scale}")
        if self.shift and self.attention == "causal":
            raise ValueError(
                "ModelConfig.shift (Dream's shifted prediction) is for diffusion models "
                "(bidirectional or block_causal), got attention='causal'"
            )

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def hidden_dim(self) -> int:
        return self.mlp_dim or 4 * self.d_model

    @property
    def special(self) -> SpecialIds:
        return special_ids(self.num_tokens)

    @property
    def vocab_size(self) -> int:
        """Rows of the input embedding: ordinary tokens + specials, rounded up."""
        n = self.num_tokens + NUM_SPECIAL_TOKENS
        return int(math.ceil(n / self.vocab_multiple) * self.vocab_multiple)


@dataclasses.dataclass(frozen=True)
class NoiseConfig:
    """The training objective: a noise process with its schedule, or the AR baseline.

    The fields below ``t_min`` change how the model is *trained* only. Evaluation always
    reports the true bound (the ELBO integrated over uniform times on [t_min, t_max]).

    Attributes:
      process: ``masked`` (absorbing), ``uniform`` or ``ar``.
      schedule: ``loglinear`` (alpha = 1 - t), ``cosine`` or ``polynomial``.
      exponent: the polynomial schedule's power (alpha = 1 - t**exponent).
      t_min: the bound integrates over [t_min, 1] (masked) or [t_min, 1 - t_min]
        (uniform); uniform training times over that range make the loss unbiased for it.
      time_distribution: how training times are drawn from the stratified uniforms:
        ``uniform`` on [t_low, t_high], or ``logit_normal`` (t = sigmoid(logit_mean +
        logit_std * z), bell-shaped) truncated to [t_low, t_high]. Both map the stratified
        uniforms through an inverse CDF, so the batch stays stratified.
      t_low, t_high: clip training times to [t_low, t_high] (BD3-LM's clipped schedules);
        (0, 1) = no clipping. Intersected with the process's [t_min, t_max].
      logit_mean, logit_std: the logit-normal's location and scale.
      weighting: ``elbo`` (each corrupted token's loss weighted by the ELBO's
        -alpha'/(1 - alpha), normalised by all tokens: the bound itself) or ``flat``
        (plain cross-entropy on the corrupted tokens, averaged over them: MaskGIT/LLaDA-style
        training; for the uniform process every position, since any may be corrupted).
      ar_fraction: this share of the training rows (chosen per example, from its key) is
        trained with the AR loss on the same backbone under a causal mask (Eso-LM-style
        mixing); the rest with the diffusion loss. 0 = pure diffusion.
      ar_fraction_end: the share at the last step, reached linearly from ``ar_fraction``
        at step 0 (a curriculum from AR to diffusion in one run); None = constant.
      ar_anneal_end: the share of training, in (0, 1], by which ``ar_fraction_end`` is
        reached (then held): 0.5 = anneal over the first half, pure end share after.
    """

    process: Literal["masked", "uniform", "ar"] = "masked"
    schedule: Literal["loglinear", "cosine", "polynomial"] = "loglinear"
    exponent: float = 1.0
    t_min: float = 1e-3
    time_distribution: Literal["uniform", "logit_normal"] = "uniform"
    t_low: float = 0.0
    t_high: float = 1.0
    logit_mean: float = 0.0
    logit_std: float = 1.0
    weighting: Literal["elbo", "flat"] = "elbo"
    ar_fraction: float = 0.0
    ar_fraction_end: float | None = None
    ar_anneal_end: float = 1.0

    def __post_init__(self):
        check_types(self)
        one_of(self, "process", PROCESS_KINDS)
        one_of(self, "schedule", SCHEDULE_KINDS)
        one_of(self, "time_distribution", TIME_DISTRIBUTIONS)
        one_of(self, "weighting", WEIGHTINGS)
        for name in ("exponent", "t_min", "t_low", "t_high", "logit_mean", "logit_std", "ar_fraction"):
            number(self, name)
        if not self.exponent > 0:
            raise ValueError(f"NoiseConfig.exponent must be > 0, got {self.exponent}")
        if not 0 <= self.t_min < 0.5:
            raise ValueError(f"NoiseConfig.t_min must be in [0, 0.5), got {self.t_min}")
        if not 0 <= self.t_low < self.t_high <= 1:
            raise ValueError(
                f"NoiseConfig.t_low and t_high must satisfy 0 <= t_low < t_high <= 1, got "
                f"t_low={self.t_low}, t_high={self.t_high}"
            )
        t_max = 1.0 - self.t_min if self.process == "uniform" else 1.0
        if self.process != "ar" and (self.t_high <= self.t_min or self.t_low >= t_max):
            raise ValueError(
                f"NoiseConfig training range [t_low={self.t_low}, t_high={self.t_high}] does not "
                f"overlap the process's range [t_min={self.t_min}, {t_max}]"
            )
        if not self.logit_std > 0:
            raise ValueError(f"NoiseConfig.logit_std must be > 0, got {self.logit_std}")
        if self.ar_fraction_end is None:
            if not 0 <= self.ar_fraction < 1:
                raise ValueError(f"NoiseConfig.ar_fraction must be in [0, 1), got {self.ar_fraction}")
        else:
            number(self, "ar_fraction_end")
            if not 0 <= self.ar_fraction <= 1:
                raise ValueError(f"NoiseConfig.ar_fraction must be in [0, 1], got {self.ar_fraction}")
            if not 0 <= self.ar_fraction_end < 1:
                raise ValueError(
                    f"NoiseConfig.ar_fraction_end must be in [0, 1) (the run must end training "
                    f"diffusion), got {self.ar_fraction_end}"
                )
        if not 0 < number(self, "ar_anneal_end") <= 1:
            raise ValueError(f"NoiseConfig.ar_anneal_end must be in (0, 1], got {self.ar_anneal_end}")
        if self.process == "ar":
            recipe = {"time_distribution": "uniform", "t_low": 0.0, "t_high": 1.0,
                      "weighting": "elbo", "ar_fraction": 0.0, "ar_fraction_end": None,
                      "ar_anneal_end": 1.0}
            changed = [f"{k}={getattr(self, k)!r}" for k, v in recipe.items() if getattr(self, k) != v]
            if changed:
                raise ValueError(
                    f"NoiseConfig.process='ar' has no noise to shape; these diffusion training "
                    f"options must keep their defaults: {', '.join(changed)}"
                )


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


def check_sequence_length(seq_len: int, model: ModelConfig) -> None:
    """Raise if sequences of ``seq_len`` do not fit the model."""
    if seq_len > model.max_len:
        raise ValueError(
            f"sequence length {seq_len} exceeds the model's max_len={model.max_len}"
        )


def check_tokens(tokens, num_tokens_total: int, name: str = "tokens") -> None:
    """Raise if a concrete array holds an id outside ``[0, num_tokens_total)``.

    Embedding lookups inside jit do not fail on a bad id (the gather clamps or fills), so
    ids are checked here, at eager boundaries (data loading, prompts, user input). Pass the
    model's ``ModelConfig.vocab_size`` (ordinary tokens + specials). Not for use under jit.

    Args:
      tokens: integer numpy or jax array of any shape, concrete.
      num_tokens_total: number of valid ids; ids must be in ``[0, num_tokens_total)``.
      name: what the array is called in the error message.

    Raises:
      TypeError: if ``tokens`` is not an integer array.
      ValueError: if ``num_tokens_total`` is not positive, or if any id is out of range
        (the message names the first offending value, its index and the allowed range).
    """
    if not isinstance(num_tokens_total, (int, np.integer)) or num_tokens_total < 1:
        raise ValueError(f"num_tokens_total must be a positive integer, got {num_tokens_total!r}")
    ids = np.asarray(tokens)
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"{name} must be an integer array, got dtype {ids.dtype}")
    bad = (ids < 0) | (ids >= num_tokens_total)
    if bad.any():
        index = np.unravel_index(int(np.argmax(bad)), ids.shape)
        raise ValueError(
            f"{name} holds id {int(ids[index])} at index {tuple(int(i) for i in index)}; "
            f"ids must be in [0, {num_tokens_total})"
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
    """

    source: str = "embedded"
    tokenizer: str = ""
    vocab_size: int = 2048
    tokenizer_type: Literal["bpe", "unigram"] = "bpe"
    pack: bool = True
    seed: int = 0

    def __post_init__(self):
        check_types(self)
        check_seed(self, "seed")
        positive_int(self, "vocab_size")
        if not self.source:
            raise ValueError("DataConfig.source must name a corpus, got ''")
        one_of(self, "tokenizer_type", ("bpe", "unigram"))


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

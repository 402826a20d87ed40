"""The backbone's config: architecture, vocabulary and its special ids."""

from __future__ import annotations

import dataclasses
import math
from typing import Literal, NamedTuple

from dllm_jax.validate import check_types, number, one_of, positive_int

ATTENTION_KINDS = ("bidirectional", "causal", "block_causal")
DTYPES = ("float32", "bfloat16")
NUM_SPECIAL_TOKENS = 3  # pad, bos, mask — appended after the ordinary tokens.


class SpecialIds(NamedTuple):
    pad: int
    bos: int
    mask: int


def special_ids(num_tokens: int) -> SpecialIds:
    """Ids of the special tokens, which follow the ``num_tokens`` ordinary ones."""
    return SpecialIds(pad=num_tokens, bos=num_tokens + 1, mask=num_tokens + 2)


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
      layer_saves: what a full pass keeps of each layer for the backward pass (without
        ``remat``): ``dots``, the matmul outputs only (attention's score product included;
        norms, activations and the softmax's exp and normalisation are recomputed:
        ``jax.checkpoint_policies.dots_saveable``), or ``all`` (what JAX keeps by default:
        also the softmax's (B, H, L, L) intermediates, stacked by the layer scan). ``dots`` ran the CPU train step 1.15x (d_model 512) and 1.17x
        (md4's configuration) faster: benchmarks/train_step. The same numbers either way.
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
      attention_impl: ``jax.nn.dot_product_attention``'s implementation: ``xla`` (any
        platform) or ``cudnn`` (NVIDIA's fused kernel; bf16 only).
      scan_unroll: layers per iteration of the layer scan in full passes (training,
        evaluation); ``num_layers`` unrolls it. The scan keeps the program's size and compile
        time independent of depth; unrolling drops its per-layer bookkeeping (weight slices,
        stacked residuals), but with ``layer_saves="dots"`` the scan was the faster of the
        two on CPU (benchmarks/train_step). Numerically the same model.
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
    layer_saves: Literal["dots", "all"] = "dots"
    shift: bool = False
    attention_bias: Literal["none", "alibi"] = "none"
    embed_init_std: float = 1.0
    head_init_scale: float = 1.0
    context_attention: Literal["block_causal", "causal"] = "block_causal"
    num_kv_heads: int | None = None
    qkv_bias: bool = False
    tie_embeddings: bool = False
    norm_eps: float = 1e-6
    rope_scaling: Literal["none", "linear", "llama3"] = "none"
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_len: int = 8192
    start_id: int | None = None
    attention_impl: Literal["xla", "cudnn"] = "xla"
    scan_unroll: int = 1

    def __post_init__(self):
        check_types(self)
        self._check_sizes()
        self._check_rope()
        self._check_attention()
        self._check_numbers()

    def _check_sizes(self):
        """Vocabulary, widths, heads and the start token."""
        positive_int(
            self, "num_tokens", "max_len", "d_model", "num_layers", "num_heads",
            "block_size", "time_embed_dim", "vocab_multiple", "scan_unroll",
        )
        if self.num_layers % self.scan_unroll:
            raise ValueError(
                f"ModelConfig.scan_unroll={self.scan_unroll} must divide num_layers={self.num_layers}"
            )
        if self.mlp_dim is not None:
            positive_int(self, "mlp_dim")
        if self.num_kv_heads is not None:
            positive_int(self, "num_kv_heads")
            if self.num_heads % self.num_kv_heads:
                raise ValueError(
                    f"ModelConfig.num_kv_heads={self.num_kv_heads} must divide num_heads={self.num_heads} "
                    "(each group of query heads shares one key/value head)"
                )
        if self.start_id is not None and not 0 <= self.start_id < self.num_tokens + NUM_SPECIAL_TOKENS:
            raise ValueError(
                f"ModelConfig.start_id={self.start_id} must be a token id in [0, {self.num_tokens + NUM_SPECIAL_TOKENS})"
            )
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

    def _check_rope(self):
        """Rotary embeddings and their scaling."""
        positive_int(self, "rope_original_max_len")
        one_of(self, "rope_scaling", ("none", "linear", "llama3"))
        if not number(self, "rope_factor") >= 1:
            raise ValueError(f"ModelConfig.rope_factor must be >= 1, got {self.rope_factor}")
        if not 0 < number(self, "rope_low_freq_factor") < number(self, "rope_high_freq_factor"):
            raise ValueError(
                "ModelConfig needs 0 < rope_low_freq_factor < rope_high_freq_factor, got "
                f"{self.rope_low_freq_factor} and {self.rope_high_freq_factor}"
            )
        if not number(self, "rope_theta") > 0:
            raise ValueError(f"ModelConfig.rope_theta must be > 0, got {self.rope_theta}")

    def _check_attention(self):
        """Attention kinds, implementation, shifted prediction."""
        one_of(self, "attention_impl", ("xla", "cudnn"))
        one_of(self, "layer_saves", ("dots", "all"))
        if self.attention_impl == "cudnn" and self.dtype != "bfloat16":
            raise ValueError("ModelConfig.attention_impl='cudnn' needs dtype='bfloat16' (cuDNN's fused attention "
                             f"runs in half precision), got dtype={self.dtype!r}")
        one_of(self, "attention", ATTENTION_KINDS)
        one_of(self, "dtype", DTYPES)
        one_of(self, "attention_bias", ("none", "alibi"))
        one_of(self, "context_attention", ("block_causal", "causal"))
        if self.context_attention != "block_causal" and self.attention != "block_causal":
            raise ValueError(
                f"ModelConfig.context_attention={self.context_attention!r} is for block_causal models, "
                f"got attention={self.attention!r}"
            )
        if self.shift and self.attention == "causal":
            raise ValueError(
                "ModelConfig.shift (Dream's shifted prediction) is for diffusion models "
                "(bidirectional or block_causal), got attention='causal'"
            )

    def _check_numbers(self):
        """Norm epsilon and initialisation scales."""
        if not number(self, "norm_eps") > 0:
            raise ValueError(f"ModelConfig.norm_eps must be > 0, got {self.norm_eps}")
        if not number(self, "embed_init_std") > 0:
            raise ValueError(f"ModelConfig.embed_init_std must be > 0, got {self.embed_init_std}")
        if not number(self, "head_init_scale") >= 0:
            raise ValueError(f"ModelConfig.head_init_scale must be >= 0, got {self.head_init_scale}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def kv_heads(self) -> int:
        """Key/value heads: ``num_kv_heads``, or ``num_heads`` (plain multi-head attention)."""
        return self.num_kv_heads or self.num_heads

    @property
    def hidden_dim(self) -> int:
        return self.mlp_dim or 4 * self.d_model

    @property
    def bos_input(self) -> int:
        """The AR start token: ``start_id``, else our bos."""
        return self.special.bos if self.start_id is None else self.start_id

    @property
    def special(self) -> SpecialIds:
        return special_ids(self.num_tokens)

    @property
    def vocab_size(self) -> int:
        """Rows of the input embedding: ordinary tokens + specials, rounded up."""
        n = self.num_tokens + NUM_SPECIAL_TOKENS
        return int(math.ceil(n / self.vocab_multiple) * self.vocab_multiple)


def check_sequence_length(seq_len: int, model: ModelConfig) -> None:
    """Raise if sequences of ``seq_len`` do not fit the model."""
    if seq_len > model.max_len:
        raise ValueError(
            f"sequence length {seq_len} exceeds the model's max_len={model.max_len}"
        )

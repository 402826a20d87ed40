"""Array aliases and the axis glossary used in names and signatures.

Axis letters (suffixes of variable names, e.g. ``logits_BLV``):

  B  batch (examples)             L  sequence length (positions)
  S  key/value length (attention) D  model width (d_model)
  H  attention heads              Dh head dimension
  K  denoising steps (sampler)
  F  MLP hidden width             V  vocabulary (model logits over ordinary tokens)
  N  number of layers             T  time-grid points

Token ids: ordinary tokens (what the model reads *and* predicts) are ``[0, num_tokens)``.
Special ids follow them, in this fixed order (see ``dllm_jax.config.special_ids``):
``pad = num_tokens``, ``bos = num_tokens + 1``, ``mask = num_tokens + 2``. The model never
predicts a special id; an end-of-sequence token, if the tokenizer has one, is ordinary.
"""

from __future__ import annotations

from typing import Any

import jax
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

PyTree = Any
Key = PRNGKeyArray

Tokens = Int[Array, "B L"]
TokenLogits = Float[Array, "B L V"]
Times = Float[Array, "B"]
LossMask = Bool[Array, "B L"]
Hidden = Float[Array, "B L D"]

__all__ = [
    "Array",
    "Bool",
    "Float",
    "Hidden",
    "Int",
    "Key",
    "TokenLogits",
    "LossMask",
    "PyTree",
    "Times",
    "Tokens",
    "jax",
]

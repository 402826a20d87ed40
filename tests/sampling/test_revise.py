"""Self-correction rounds and ``revise``.

With the exact denoiser of a point-mass distribution, a masked round rewrites exactly the
masked positions to the one sequence the distribution holds (a corrupted input is restored
at the rate 1 - (1 - t)^rounds), and a round with uniform noise rewrites every free
position (any token may be noise); fixed positions never move; the
draws do not depend on the batch split. Bad inputs are clear errors.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_jax.config import MeshConfig, ModelConfig, special_ids
from dllm_jax.diffusion import (
    HybridProcess,
    LogLinear,
    MaskedProcess,
    UniformProcess,
    oracle_denoiser,
)
from dllm_jax.diffusion.autoregressive import ARObjective
from dllm_jax.nn.model import create_model
from dllm_jax.rng import example_keys
from dllm_jax.sampling.revise import correction_rounds, revise
from dllm_jax.sampling.rules import make_rule
from dllm_jax.sharding import make_mesh

V, L = 5, 8
MASK = special_ids(V).mask
TARGET = np.array([3, 1, 4, 1, 0, 2, 2, 3], np.int32)
PROCESSES = {
    "masked": MaskedProcess(V, LogLinear(), mask_id=MASK),
    "uniform": UniformProcess(V, LogLinear()),
    "hybrid": HybridProcess(V, LogLinear(), mask_id=MASK, p_uniform=0.3),
}


def corrupted(batch: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    wrong = rng.uniform(size=(batch, L)) < 0.3
    other = (TARGET[None] + rng.integers(1, V, (batch, L))) % V  # a different token
    return np.where(wrong, other, TARGET[None]).astype(np.int32), wrong


@pytest.mark.parametrize("kind", sorted(PROCESSES))
def test_rounds_restore_at_the_renoising_rate(kind):
    process, t, rounds, B = PROCESSES[kind], 0.25, 3, 4000
    denoise = oracle_denoiser(process, TARGET[None], np.ones(1))
    tokens, wrong = corrupted(B)
    fixed = np.zeros((B, L), bool)
    fixed[:, 0] = True
    tokens[:, 0] = (TARGET[0] + 1) % V  # a wrong token at a fixed position stays wrong
    hist, changed = jax.jit(lambda k, x, f: correction_rounds(denoise, process, k, x, f, rounds, t))(
        example_keys(0, jnp.arange(B)), jnp.asarray(tokens), jnp.asarray(fixed))
    hist, changed = np.asarray(hist), np.asarray(changed)
    assert np.all(hist[:, :, 0] == tokens[:, 0])
    final = hist[-1]
    free = ~fixed
    # never worse: a position right before stays right, a wrong one is right iff renoised once
    assert np.all(final[free & ~wrong] == np.broadcast_to(TARGET, (B, L))[free & ~wrong])
    restored = np.mean(final[free & wrong] == np.broadcast_to(TARGET, (B, L))[free & wrong])
    # masked: a wrong token is rewritten iff masked in some round; uniform noise: every token
    # may be noise, so the exact (point-mass) posterior rewrites every free position at once
    expected = 1.0 - (1.0 - t) ** rounds if kind == "masked" else 1.0
    n = int((free & wrong).sum())
    print(f"\n{kind}: restored {restored:.4f}, expected {expected:.4f} (n={n})")
    assert abs(restored - expected) < 4.0 * np.sqrt(expected * (1 - expected) / n) + 1e-12
    np.testing.assert_array_equal(changed, np.sum(hist[1:] != hist[:-1], axis=-1))
    # the same rows in another batch split draw the same
    half, _ = correction_rounds(denoise, process, example_keys(0, jnp.arange(B // 2, B)),
                                jnp.asarray(tokens[B // 2:]), jnp.asarray(fixed[B // 2:]), rounds, t)
    np.testing.assert_array_equal(np.asarray(half[-1]), final[B // 2:])


@pytest.fixture(scope="module")
def tiny_model():
    config = ModelConfig(num_tokens=V, max_len=16, d_model=32, num_layers=1, num_heads=2)
    graphdef, params = create_model(config, make_mesh(MeshConfig()))
    return graphdef, params


def test_revise_runs_the_model_and_counts_nfe(tiny_model):
    graphdef, params = tiny_model
    tokens, _ = corrupted(3)
    out = revise(graphdef, params, tokens, PROCESSES["hybrid"], rounds=4, t=0.2, seed=1)
    assert out.history.shape == (5, 3, L) and out.changed.shape == (4, 3)
    np.testing.assert_array_equal(out.history[0], tokens)
    np.testing.assert_array_equal(out.nfe, 4)
    assert out.tokens.min() >= 0 and out.tokens.max() < V
    again = revise(graphdef, params, tokens, PROCESSES["hybrid"], rounds=4, t=0.2, seed=1)
    np.testing.assert_array_equal(again.tokens, out.tokens)
    # Rows revised in two batches with their indices: the tokens of one call; round n of a
    # longer run is the run of n rounds.
    split = [revise(graphdef, params, tokens[rows], PROCESSES["hybrid"], rounds=4, t=0.2, seed=1,
                    indices=np.arange(3)[rows]).tokens for rows in (slice(0, 2), slice(2, 3))]
    np.testing.assert_array_equal(np.concatenate(split), out.tokens)
    two = revise(graphdef, params, tokens, PROCESSES["hybrid"], rounds=2, t=0.2, seed=1)
    np.testing.assert_array_equal(two.tokens, out.history[2])
    with pytest.raises(ValueError, match=r"indices must be \(3,\) integers"):
        revise(graphdef, params, tokens, PROCESSES["hybrid"], rounds=1, indices=[0, 1])


def test_revise_bad_inputs(tiny_model):
    graphdef, params = tiny_model
    tokens, _ = corrupted(2)
    process = PROCESSES["masked"]
    with pytest.raises(ValueError, match="longer than the model's max_len=16"):
        revise(graphdef, params, np.zeros((1, 17), np.int32), process, rounds=1)
    with pytest.raises(ValueError, match="needs a diffusion noise process"):
        revise(graphdef, params, tokens, ARObjective(V, special_ids(V).bos), rounds=1)
    with pytest.raises(ValueError, match="rounds must be an integer >= 1"):
        revise(graphdef, params, tokens, process, rounds=0)
    with pytest.raises(ValueError, match=r"t must be a noise level in \(0, 1\)"):
        revise(graphdef, params, tokens, process, rounds=1, t=1.0)
    with pytest.raises(ValueError, match=r"ordinary ids in \[0, 5\)"):
        revise(graphdef, params, np.full((1, 4), MASK, np.int32), process, rounds=1)
    with pytest.raises(ValueError, match="needs a MaskedProcess"):
        make_rule("remdm", PROCESSES["uniform"], schedule="cap")
    with pytest.raises(ValueError, match="needs a UniformProcess"):
        make_rule("pc", PROCESSES["masked"])

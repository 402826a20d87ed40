"""Every step rule of ``dllm_jax.sampling.rules`` against its exact K-step output law.

``rule_reference`` enumerates each rule's output distribution with the exact denoiser on
the tiny target of ``oracle_reference`` (float64, independent of the library). The JAX
samplers' 100k draws must fit those laws (chi-square) with the exactly expected mean NFE;
orders that unmask one token per step must be exact; the cache must keep the ancestral
law with fewer network evaluations; bad configurations must raise. One table (``-s``)
prints each rule's exact TV to its target and E[NFE] by K. Rules that change the target on
purpose (confidence, threshold, temperature, top-k/p, guidance) get no TV assertion.
"""

from __future__ import annotations

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import oracle_reference as ref
import pytest
import rule_reference as rr
from test_ancestral_oracle import chisquare_pvalue

from dllm_jax.config import special_ids
from dllm_jax.diffusion import LogLinear, MaskedProcess, UniformProcess, oracle_denoiser
from dllm_jax.sampling import (
    CachedMaskedAncestral,
    example_keys,
    guided,
    make_rule,
    sample,
)
from dllm_jax.sampling.draws import Logits

NUM_SAMPLES = 100_000
MASK_ID = special_ids(ref.V).mask
MASKED = MaskedProcess(ref.V, LogLinear(), mask_id=MASK_ID)
UNIFORM = UniformProcess(ref.V, LogLinear())
PROMPT_TOKEN, GUIDANCE = 1, 1.0  # CFG: position 0 fixed to token 1, weight w = 1
ONE_PER_STEP = ("random", "max_prob", "margin", "entropy")


@dataclasses.dataclass(frozen=True)
class Case:
    name: str  # ``make_rule`` name
    options: tuple = ()  # (key, value) pairs
    processing: rr.Processing = rr.Processing()
    prompted: bool = False  # CFG with position 0 fixed to PROMPT_TOKEN
    table_steps: tuple = (1, 2, 4, 8)
    sampled_steps: tuple = ()  # K values drawn 100k times with the JAX sampler


LONG = (1, 2, 4, 8, 16)
CONVERGED = 256  # K at which ancestral sampling is within TV 0.01 of p
CASES = {
    "ancestral": Case("ancestral", table_steps=(*LONG, CONVERGED), sampled_steps=(8,)),
    "cached": Case("cached", table_steps=(*LONG, CONVERGED), sampled_steps=(8,)),
    "random": Case("random", sampled_steps=(3,)),
    "max_prob": Case("max_prob", sampled_steps=(2,)),
    "margin": Case("margin", sampled_steps=(3,)),
    "entropy": Case("entropy", sampled_steps=(2,)),
    "confidence": Case("confidence", sampled_steps=(3,)),
    "left_to_right": Case("left_to_right", sampled_steps=(2,)),
    "threshold 0.7": Case("threshold", (("threshold", 0.7),), sampled_steps=(4,)),
    "threshold 0.9": Case("threshold", (("threshold", 0.9),), sampled_steps=(8,)),
    "entropy_bounded 0.5": Case("entropy_bounded", (("gamma", 0.5),)),
    "entropy_bounded 0.8": Case("entropy_bounded", (("gamma", 0.8),), sampled_steps=(4,)),
    "remdm cap 0.5": Case(
        "remdm", (("schedule", "cap"), ("eta", 0.5)), table_steps=LONG, sampled_steps=(4,)
    ),
    "remdm rescale 0.5": Case(
        "remdm", (("schedule", "rescale"), ("eta", 0.5)), table_steps=LONG, sampled_steps=(4,)
    ),
    # Enumerating the decode-time confidences is exact but explodes beyond K = 4.
    "remdm conf": Case(
        "remdm", (("schedule", "conf"),), table_steps=(1, 2, 3, 4), sampled_steps=(4,)
    ),
    "uniform ancestral": Case("pc", (("corrector_steps", 0),), table_steps=LONG),
    "pc 1 corrector": Case("pc", (("corrector_steps", 1),), table_steps=LONG, sampled_steps=(2,)),
    "temperature 0.7": Case(
        "ancestral", processing=rr.Processing(temperature=0.7), sampled_steps=(4,)
    ),
    "top_k 2": Case("ancestral", processing=rr.Processing(top_k=2), sampled_steps=(4,)),
    "top_p 0.8": Case("ancestral", processing=rr.Processing(top_p=0.8), sampled_steps=(4,)),
    "cfg w=1": Case("ancestral", prompted=True, sampled_steps=(4,)),
}
SAMPLED = [(label, k) for label, case in CASES.items() for k in case.sampled_steps]


def target(case: Case) -> np.ndarray:
    """p, or p(. | x^0 = PROMPT_TOKEN) for the prompted case."""
    if not case.prompted:
        return rr.P_S
    keep_S = ref.sequences()[:, 0] == PROMPT_TOKEN
    return np.where(keep_S, rr.P_S, 0.0) / rr.P_S[keep_S].sum()


def reference_rule(case: Case):
    if case.prompted:
        marginals = rr.guided_marginals({0: PROMPT_TOKEN}, GUIDANCE)
    else:
        marginals = rr.masked_marginals
    if case.processing != rr.Processing():
        marginals = rr.processed(marginals, case.processing)
    opts = dict(case.options)
    if case.name in ("ancestral", "cached"):
        return getattr(rr, case.name)(marginals)
    if case.name == "threshold":
        return rr.threshold(opts["threshold"], marginals)
    if case.name == "entropy_bounded":
        return rr.entropy_bounded(opts["gamma"], marginals)
    if case.name == "remdm":
        return rr.remdm(opts["schedule"], opts.get("eta", 0.0), marginals)
    return rr.ordered(case.name, marginals)


@functools.cache
def exact(label: str, num_steps: int):
    """(exact law over the 81 sequences, exact expected NFE per sample)."""
    case = CASES[label]
    if case.name == "pc":
        return rr.pc_reference(num_steps, dict(case.options)["corrector_steps"], case.processing)
    init = (PROMPT_TOKEN if case.prompted else rr.MASK,) + (rr.MASK,) * (ref.L - 1)
    extra = True if case.name == "cached" else None  # the first step always evaluates
    law, nfe = rr.propagate(reference_rule(case), init, num_steps, extra)
    return law, nfe * (2 if case.prompted else 1)  # CFG: two passes per evaluation


def jax_rule(case: Case):
    p = case.processing
    logits = Logits(temperature=p.temperature, top_k=p.top_k, top_p=p.top_p)
    return make_rule(
        case.name, UNIFORM if case.name == "pc" else MASKED, logits=logits, **dict(case.options)
    )


@functools.cache
def draws(label: str, num_steps: int):
    """(tokens_BL, nfe_B) of NUM_SAMPLES JAX draws, one jit per (rule, K)."""
    case = CASES[label]
    rule = jax_rule(case)
    oracle = oracle_denoiser(rule.process, ref.sequences(), rr.P_S)

    def run(keys_B):
        if not case.prompted:
            return sample(oracle, rule, keys_B, ref.L, num_steps)
        fixed_BL = jnp.zeros((keys_B.shape[0], ref.L), bool).at[:, 0].set(True)
        prompt_BL = jnp.where(fixed_BL, PROMPT_TOKEN, 0)
        denoise = guided(oracle, fixed_BL, MASK_ID, GUIDANCE)
        return sample(denoise, rule, keys_B, ref.L, num_steps, prompt_BL, fixed_BL)

    keys_B = example_keys(seed=0, index_B=jnp.arange(NUM_SAMPLES))
    # XLA's backend optimisations cost ~5 s of compile per sampler here and save ~1 s of run.
    compiled = jax.jit(run).lower(keys_B).compile({"xla_backend_optimization_level": 0})
    tokens_BL, nfe_B = compiled(keys_B)
    tokens_BL, nfe_B = np.asarray(tokens_BL), np.asarray(nfe_B)
    assert tokens_BL.min() >= 0 and tokens_BL.max() < ref.V, "special id left in a sample"
    return tokens_BL, nfe_B


def counts(tokens_BL) -> np.ndarray:
    index_B = np.ravel_multi_index(tokens_BL.T, (ref.V,) * ref.L)
    return np.bincount(index_B, minlength=ref.NUM_SEQUENCES)


def test_engine_reproduces_the_ancestral_reference():
    """The enumeration engine against the transition-matrix reference it did not share."""
    for k in (1, 2, 4, 8):
        law, nfe = exact("ancestral", k)
        np.testing.assert_allclose(law, ref.ancestral_reference("masked", k, rr.P_S), atol=1e-12)
        assert abs(nfe - k) < 1e-9
        uniform = exact("uniform ancestral", k)[0]
        np.testing.assert_allclose(
            uniform, ref.ancestral_reference("uniform", k, rr.P_S), atol=1e-12
        )


@pytest.mark.parametrize("label,num_steps", SAMPLED, ids=[f"{lb}-K{k}" for lb, k in SAMPLED])
def test_sampler_matches_exact_law(label, num_steps):
    tokens_BL, nfe_B = draws(label, num_steps)
    law, exact_nfe = exact(label, num_steps)
    pvalue = chisquare_pvalue(counts(tokens_BL), law)
    mean, sem = nfe_B.mean(), nfe_B.std() / np.sqrt(nfe_B.size)
    print(
        f"\n{label} K={num_steps}: chi-square p {pvalue:.3f}; "
        f"NFE {mean:.4f} ± {sem:.4f} (exact {exact_nfe:.4f})"
    )
    assert pvalue > 1e-3
    # Mean NFE within 5 standard errors of the exact expectation (exactly, if it is fixed).
    assert abs(mean - exact_nfe) <= 5 * sem + 1e-9


@pytest.mark.parametrize("order", ONE_PER_STEP)
def test_one_token_per_step_orders_are_exact(order):
    """Unmasking one position per step from its exact conditional is the chain rule in an
    order that depends only on what is revealed: exact, whatever the order."""
    for k in (4, 8):
        law, nfe = exact(order, k)
        tv = ref.total_variation(law, rr.P_S)
        assert tv < 1e-9, (order, k, tv)
        assert abs(nfe - ref.L) < 1e-9  # K = 8 skips the steps that unmask nothing


def test_cache_keeps_the_law_with_fewer_evaluations():
    for k in (2, 4, 8, 16, CONVERGED):
        cached_law, cached_nfe = exact("cached", k)
        np.testing.assert_allclose(cached_law, exact("ancestral", k)[0], atol=1e-12)
        assert cached_nfe < k
    # Both converge to p; the cache needs at most L evaluations however large K is.
    assert ref.total_variation(exact("cached", CONVERGED)[0], rr.P_S) < 0.01
    assert exact("cached", CONVERGED)[1] <= ref.L
    # Same keys, same draws: the cache changes which evaluations run, not the sample.
    cached_BL, cached_nfe_B = draws("cached", 8)
    plain_BL, plain_nfe_B = draws("ancestral", 8)
    same = np.mean(np.all(cached_BL == plain_BL, axis=-1))
    print(
        f"\nK=8: cached mean NFE {cached_nfe_B.mean():.3f} vs uncached "
        f"{plain_nfe_B.mean():.3f}; identical samples {same:.5f}"
    )
    # Identical on CPU; the slack allows a last-ulp logit difference between the two
    # programs to flip a rare draw on other backends. Stale or wrong logits flip many.
    assert same >= 0.9999
    assert cached_nfe_B.mean() < plain_nfe_B.mean() == 8


def test_print_rule_by_steps_table():
    """Exact TV to the target and exact E[NFE] (measured mean NFE where sampled)."""
    columns = sorted({k for case in CASES.values() for k in case.table_steps + case.sampled_steps})
    lines = [f"{'rule':<20}" + "".join(f"{'K=' + str(k):>22}" for k in columns)]
    for label, case in CASES.items():
        cells = []
        for k in columns:
            if k not in case.table_steps + case.sampled_steps:
                cells.append(f"{'':>22}")
                continue
            law, nfe = exact(label, k)
            measured = f"/{draws(label, k)[1].mean():.2f}" if k in case.sampled_steps else ""
            cells.append(
                f"{ref.total_variation(law, target(case)):.4f} ({nfe:.2f}{measured})".rjust(22)
            )
        lines.append(f"{label:<20}" + "".join(cells))
    print(
        "\nexact TV to target (exact E[NFE] / measured mean NFE of 100k draws)\n" + "\n".join(lines)
    )


# --- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [0.0, -0.1, 1.5, float("nan")])
def test_threshold_outside_unit_interval_raises(threshold):
    with pytest.raises(
        ValueError, match=re.escape(f"threshold must be in (0, 1], got {threshold}")
    ):
        make_rule("threshold", MASKED, threshold=threshold)


def test_unknown_rule_name_raises():
    with pytest.raises(ValueError, match=r"unknown step rule 'top2'.*'ancestral'.*'pc'"):
        make_rule("top2", MASKED)


@pytest.mark.parametrize(
    "name,process,options",
    [("pc", MASKED, {}), ("threshold", UNIFORM, {"threshold": 0.9}), ("cached", UNIFORM, {})],
)
def test_rule_for_the_other_process_raises(name, process, options):
    with pytest.raises(ValueError, match=f"needs a .*Process, got {type(process).__name__}"):
        make_rule(name, process, **options)


@pytest.mark.parametrize(
    "name,options,message",
    [
        ("entropy_bounded", {"gamma": -0.1}, "gamma must be >= 0, got -0.1"),
        ("remdm", {"schedule": "loop"}, "unknown ReMDM schedule 'loop'"),
        ("remdm", {"schedule": "cap", "eta": 1.5}, "eta must be in [0, 1], got 1.5"),
        ("pc", {"corrector_steps": -1}, "corrector_steps must be an integer >= 0, got -1"),
    ],
)
def test_bad_rule_options_raise(name, options, message):
    process = UNIFORM if name == "pc" else MASKED
    with pytest.raises(ValueError, match=re.escape(message)):
        make_rule(name, process, **options)


def test_cache_refuses_a_time_conditioned_denoiser():
    keys_B = example_keys(0, jnp.arange(2))
    rule = make_rule("cached", MASKED)
    uniform_oracle = oracle_denoiser(UNIFORM, ref.sequences(), rr.P_S)
    for denoise in (uniform_oracle, lambda x, t: jnp.zeros((*x.shape, ref.V))):
        with pytest.raises(ValueError, match="needs a denoiser that ignores t.*MaskedAncestral"):
            sample(denoise, rule, keys_B, ref.L, 4)
    masked_oracle = oracle_denoiser(MASKED, ref.sequences(), rr.P_S)
    assert masked_oracle.time_conditioned is False and uniform_oracle.time_conditioned is True
    CachedMaskedAncestral(MASKED).check_denoiser(masked_oracle)  # accepted
    # Guidance forwards the flag.
    fixed_BL = jnp.zeros((2, ref.L), bool)
    CachedMaskedAncestral(MASKED).check_denoiser(guided(masked_oracle, fixed_BL, MASK_ID, 1.0))


@pytest.mark.parametrize("num_steps", [0, -1])
def test_bad_num_steps_raise_for_new_rules(num_steps):
    keys_B = example_keys(0, jnp.arange(2))
    oracle = oracle_denoiser(MASKED, ref.sequences(), rr.P_S)
    with pytest.raises(ValueError, match=f"num_steps.*got {num_steps}"):
        sample(oracle, make_rule("confidence", MASKED), keys_B, ref.L, num_steps)


@pytest.mark.parametrize("temperature", [0.0, -0.5])
def test_nonpositive_temperature_raises(temperature):
    with pytest.raises(ValueError, match=f"temperature must be > 0, got {temperature}"):
        make_rule("max_prob", MASKED, logits=Logits(temperature=temperature))


def test_negative_guidance_weight_raises():
    with pytest.raises(ValueError, match="guidance weight must be a finite number >= 0, got -1"):
        guided(lambda x, t: x, jnp.zeros((1, ref.L), bool), MASK_ID, -1.0)


def test_remdm_conf_scores_the_models_own_probability():
    """Greedy draws (top_k = 1) make every processed probability 1; ReMDM-conf's psi must
    stay the model's own softmax probability of the decoded token."""
    rule = make_rule("remdm", MASKED, schedule="conf", logits=Logits(top_k=1))
    logits_LV = jnp.log(jnp.array([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8]]))

    def denoise(tokens_BL, t_B):
        return jnp.broadcast_to(logits_LV, (*tokens_BL.shape, ref.V))

    tokens_BL = jnp.full((1, 3), MASK_ID)
    keys_BL = jax.random.split(jax.random.key(0), 3).reshape(1, 3)
    new_BL, _, psi_BL = rule.step(denoise, tokens_BL, jnp.float32(1.0), jnp.float32(0.0), keys_BL,
                                  rule.init_state(tokens_BL))
    np.testing.assert_array_equal(new_BL[0], [0, 1, 2])  # t = 1 -> 0 unmasks all, greedily
    np.testing.assert_allclose(psi_BL[0], [0.6, 0.7, 0.8], rtol=1e-5)

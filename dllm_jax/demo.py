"""A short end-to-end demo on a synthetic distribution with a known likelihood.

Trains a masked diffusion model and an AR model of the same size on the same Markov-chain
sequences, prints both validation bounds beside the true NLL, then samples the diffusion
model at several step counts and scores the samples under the *true* chain — so "more
steps, better samples" is measured exactly, without a judge model.

    python -m dllm_jax.demo [--steps 500] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from dllm_jax.config import MeshConfig, ModelConfig, NoiseConfig, TrainConfig
from dllm_jax.data import MarkovChain, batches
from dllm_jax.diffusion import make_objective
from dllm_jax.nn import apply_model
from dllm_jax.sampling import ancestral, example_keys, sample
from dllm_jax.sharding import make_mesh
from dllm_jax.training import create_train_state, jit_train_step, make_eval_step, make_train_step
from dllm_jax.training.loop import evaluate

V, L = 12, 24


def train(process: str, chain: MarkovChain, steps: int, seed: int, mesh):
    model = ModelConfig(num_tokens=V, max_len=L, d_model=64, num_layers=2, num_heads=4,
                        attention="causal" if process == "ar" else "bidirectional")
    cfg = TrainConfig(batch_size=64, seq_len=L, steps=steps, lr=3e-3, warmup_steps=30, seed=seed)
    objective = make_objective(NoiseConfig(process=process), V)
    graphdef, state, tx = create_train_state(model, cfg, mesh)
    step = jit_train_step(make_train_step(objective, graphdef, tx, cfg), state, mesh)
    it = batches(chain.sample(20_000, L, seed=seed + 1), cfg.batch_size)
    start = time.perf_counter()
    for i in range(steps):
        state, metrics = step(state, {k: jnp.asarray(v) for k, v in next(it).items()})
        if (i + 1) % max(1, steps // 5) == 0:
            print(f"  [{process}] step {i + 1:4d}  loss {float(metrics['loss']):.4f} nats/token")
    elapsed = time.perf_counter() - start
    val = chain.sample(1024, L, seed=seed + 2)
    batch = {"tokens": jnp.asarray(val), "loss_mask": jnp.ones(val.shape, bool), "index": jnp.arange(len(val))}
    eval_fn = make_eval_step(objective, graphdef, mesh, seed=seed)
    bound = evaluate(eval_fn, state.params, [batch], 1 if process == "ar" else 16)["val_loss"]
    return graphdef, state, objective, bound, elapsed


def chain_nll(chain: MarkovChain, tokens: np.ndarray) -> float:
    """Mean per-token NLL of sequences under the true chain (the exact 'gen ppl' judge)."""
    T, pi = chain.transition, chain.stationary
    nll = -np.log(pi[tokens[:, 0]]) - np.log(T[tokens[:, :-1], tokens[:, 1:]]).sum(1)
    return float(nll.mean() / tokens.shape[1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(f"devices: {jax.devices()}")
    chain = MarkovChain(V, branching=2, seed=args.seed)
    mesh = make_mesh(MeshConfig())
    true_nll = chain.nll_per_token(L)
    print(f"Markov chain: V={V}, L={L}, true NLL {true_nll:.4f} nats/token, "
          f"unigram entropy {chain.unigram_entropy():.4f}")
    results = {}
    for process in ("masked", "ar"):
        results[process] = train(process, chain, args.steps, args.seed, mesh)
    print("\nvalidation (nats/token; diffusion: ELBO bound on a 16-point stratified time grid)")
    for process, (*_, bound, elapsed) in results.items():
        print(f"  {process:7s} {bound:.4f}   ratio to true {bound / true_nll:.3f}   train {elapsed:.1f}s")

    graphdef, state, objective, *_ = results["masked"]
    rule = ancestral(objective)
    denoise = lambda x, t: apply_model(graphdef, state.params, x, t)
    keys = example_keys(args.seed, jnp.arange(512))
    print("\nsamples from the masked model, scored under the true chain (lower is better)")
    print(f"  {'K':>4s}  {'NLL/token':>9s}  first sample")
    for k in (2, 8, 32, 128):
        run = jax.jit(lambda kk, k=k: sample(denoise, rule, kk, L, k))
        tokens, nfe = run(keys)
        tokens = np.asarray(tokens)
        print(f"  {k:4d}  {chain_nll(chain, tokens):9.4f}  {' '.join(map(str, tokens[0]))}")
    data = chain.sample(512, L, seed=args.seed + 3)
    print(f"  data  {chain_nll(chain, data):9.4f}  {' '.join(map(str, data[0]))}")


if __name__ == "__main__":
    main()

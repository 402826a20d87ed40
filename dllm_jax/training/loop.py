"""The host loop: data -> sharded train step -> eval, samples, metrics, checkpoints.

A run directory holds ``config.json``, ``tokenizer.model``, ``metrics.jsonl``, TensorBoard
event files and ``checkpoints/``. Starting a run in a directory that already has a
checkpoint resumes it (bitwise the same losses as an uninterrupted run on the same device
count); a directory from an incompatible config is refused before anything is written.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from dllm_jax.checkpoint import Checkpointer
from dllm_jax.config import ExperimentConfig
from dllm_jax.data.corpus import make_source
from dllm_jax.data.pipeline import GlobalBatches, make_sequences
from dllm_jax.diffusion import ARObjective, BlockDiffusion, make_objective, training_objective
from dllm_jax.evaluation.context_use import context_use, make_context_fn, model_apply
from dllm_jax.evaluation.likelihood import LN2, stratified_likelihood
from dllm_jax.nn.model import apply_model
from dllm_jax.sampling import ancestral, example_keys, sample
from dllm_jax.sampling.canvas import round_up
from dllm_jax.sampling.generate import generate
from dllm_jax.sampling.kv_decode import ar_sample_cached
from dllm_jax.sharding import make_mesh
from dllm_jax.training.metrics_log import MetricsLogger
from dllm_jax.training.run_dir import (  # noqa: F401 (re-exported: where users found them)
    check_compatible,
    check_init_source,
    has_checkpoint,
    init_params,
    load_judge,
    load_or_train_tokenizer,
    load_run,
    saved_config,
    write_config,
)
from dllm_jax.training.state import create_train_state
from dllm_jax.training.step import jit_train_step, make_eval_step, make_train_step


def _say(*args):
    if jax.process_index() == 0:
        print(*args, flush=True)


def _check_finite(first_step: int, losses, state) -> None:
    """Stop a diverged run before it is checkpointed: losses of steps first_step.. and params."""
    for i, loss in enumerate(losses):
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"training diverged: loss {loss} at step {first_step + i}; stopping without saving this "
                "state (the last checkpoint is untouched). Lower train.lr or check the data."
            )
    if not bool(_all_finite(state.params)):
        raise FloatingPointError(f"training diverged: non-finite parameters after step {first_step + len(losses) - 1}; "
                                 "stopping without saving this state (the last checkpoint is untouched)")


@jax.jit
def _all_finite(tree):
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def chat_tail_block(exp: ExperimentConfig) -> int | None:
    """``ChatSequences``' ``tail_block`` for the run's model and ``data.chat_tail``."""
    if exp.data.chat_tail == "all" or exp.model.attention == "bidirectional":
        return None
    return 1 if exp.model.attention == "causal" else exp.model.block_size


def run_sequences(exp: ExperimentConfig, tok, split: str, shuffle: bool = True):
    """The run's sequences of ``split`` (conversations or documents)."""
    return make_sequences(make_source(exp.data.source, split), tok, exp.train.seq_len, seed=exp.data.seed,
                          pack=exp.data.pack, shuffle=shuffle, tail_block=chat_tail_block(exp))


def eval_batches(exp, tok, mesh):
    """The run's fixed validation batches: ``loop.eval_batches`` global batches, unshuffled."""
    batches = GlobalBatches(run_sequences(exp, tok, "validation", shuffle=False), exp.train.batch_size, mesh)
    return [next(batches) for _ in range(exp.loop.eval_batches)]


class Sampler:
    """Jitted samplers (one compile per step count) with params as an argument."""

    def __init__(self, exp: ExperimentConfig, objective, graphdef):
        self.exp, self.objective, self.graphdef = exp, objective, graphdef
        self._fns = {}

    def __call__(self, params, num_steps: int):
        length = min(self.exp.loop.sample_length, self.exp.model.max_len)
        if isinstance(self.objective, BlockDiffusion):  # block by block, with the exact cache
            blk = self.objective.block_size
            rows = [[]] * self.exp.loop.num_samples
            out = generate(self.graphdef, params, rows, length=round_up(length, blk), rule=ancestral(self.objective),
                           num_steps=num_steps, seed=10_000 + num_steps, block_size=blk, cache="exact")
            return out.tokens[:, :length]
        if num_steps not in self._fns:
            g = self.graphdef
            if isinstance(self.objective, ARObjective):
                bos = self.objective.bos_id
                fn = lambda p, k: ar_sample_cached(g, p, k, length, bos)
            else:
                rule = ancestral(self.objective)
                fn = lambda p, k: sample(lambda x, t: apply_model(g, p, x, t), rule, k, length, num_steps)[0]
            self._fns[num_steps] = jax.jit(fn)
        keys = example_keys(10_000 + num_steps, jnp.arange(self.exp.loop.num_samples))
        return np.asarray(self._fns[num_steps](params, keys))

    def texts(self, params, tok) -> dict[int, list[str]]:
        """Decoded samples per step count (AR: one entry, keyed by the sample length)."""
        if isinstance(self.objective, ARObjective):
            steps = (min(self.exp.loop.sample_length, self.exp.model.max_len),)
        else:
            steps = self.exp.loop.sample_steps
        return {k: [tok.decode(row.tolist()) for row in self(params, k)] for k in steps}


def evaluate(eval_fn, params, batches, time_points: int):
    """Validation bound: mean nats/token over batches on a stratified grid of time offsets.

    ``dllm_jax.evaluation.stratified_likelihood`` does the work (and also gives a CI).
    """
    nats = stratified_likelihood(eval_fn, params, batches, time_points).nats_per_token
    return {"val_loss": nats, "val_bits_per_token": nats / LN2, "val_ppl": math.exp(min(nats, 50.0))}


def train(exp: ExperimentConfig, run_dir: str | Path, *, stop_at: int | None = None, verbose: bool = True) -> dict:
    """Train (or resume) ``exp`` in ``run_dir``; ``stop_at`` ends early as if interrupted.

    Returns a summary: per-step losses of this invocation, the final validation metrics,
    samples, timings.
    """
    run_dir = Path(run_dir)
    mesh, tok, source = _open_run(exp, run_dir)
    objective = make_objective(exp.noise, exp.model.num_tokens, exp.model)
    graphdef, state, tx = create_train_state(exp.model, exp.train, mesh)
    batches = GlobalBatches(run_sequences(exp, tok, "train"), exp.train.batch_size, mesh)
    ckpt = Checkpointer(run_dir / "checkpoints", max_to_keep=exp.loop.keep_checkpoints, best_metric="val_loss")
    state, start = _restore_or_init(exp, run_dir, ckpt, state, batches, tok, source)
    trained = training_objective(exp.noise, exp.model, objective)  # eval keeps the true bound
    step_fn = jit_train_step(make_train_step(trained, graphdef, tx, exp.train), state, mesh)
    evaluator = _Evaluator(exp, objective, graphdef, tok, mesh)
    logger = MetricsLogger(run_dir, enabled=jax.process_index() == 0)
    last = min(exp.train.steps, stop_at) if stop_at is not None else exp.train.steps
    batch = next(batches)
    compiled, compile_s = _compile(exp, step_fn, state, batch, mesh)
    logger.log(start, {"compile_seconds": compile_s})
    progress = _Progress(exp, logger, start, verbose)
    summary = {}
    try:
        for step in range(start, last):
            if step > start:
                batch = next(batches)
            with jax.set_mesh(mesh):
                state, metrics = compiled(state, batch)
            done = step + 1
            progress.add(metrics)
            if done % exp.loop.log_every == 0 or done == last:
                progress.flush(done, state, metrics)
            if done % exp.loop.eval_every == 0 or done == exp.train.steps:
                summary = evaluator.log(done, state, logger)
            if done % exp.loop.checkpoint_every == 0 or done == last:
                progress.check(state)
                meta = {"step": done, "data_state": batches.get_state(), "tokenizer_sha256": tok.sha256,
                        "config": exp.to_dict()}
                ckpt.save(done, {"state": state}, meta,
                          metrics={"val_loss": summary["val_loss"]} if "val_loss" in summary else None)
            if done % exp.loop.eval_every == 0 or done % exp.loop.checkpoint_every == 0:
                progress.restart_clock()  # keep eval/checkpoint time out of tokens/s
        if not summary:  # nothing evaluated in this invocation (e.g. the run was already done)
            summary = evaluator(state)
    finally:  # a diverged or interrupted run still finishes its writes
        ckpt.wait()
        ckpt.close()
        logger.close()
    wall = time.perf_counter() - progress.t_start
    tokens_per_step = exp.train.batch_size * exp.train.seq_len
    return {**summary, "losses": progress.losses, "start_step": start, "end_step": last, "compile_seconds": compile_s,
            "wall_seconds": wall, "state": state, "graphdef": graphdef, "tokenizer": tok,
            "tokens_per_second": (last - start) * tokens_per_step / max(wall, 1e-9)}


def _open_run(exp: ExperimentConfig, run_dir: Path):
    """Check the run directory against ``exp`` before anything is written, then create it:
    (mesh, tokenizer, init source or None)."""
    saved = saved_config(run_dir)
    if saved is not None:
        check_compatible(saved, exp)  # before anything is written
    source = check_init_source(exp) if exp.train.init_from and not has_checkpoint(run_dir) else None
    run_dir.mkdir(parents=True, exist_ok=True)
    mesh = make_mesh(exp.mesh)
    tok = load_or_train_tokenizer(exp, run_dir, source)
    if jax.process_index() == 0:
        write_config(run_dir, exp)
    return mesh, tok, source


def _restore_or_init(exp, run_dir, ckpt, state, batches, tok, source):
    """(state, first step): resumed from the latest checkpoint, else from ``init_from``."""
    if ckpt.latest_step() is not None:
        meta = ckpt.metadata()
        if meta.get("tokenizer_sha256") != tok.sha256:
            raise ValueError("the tokenizer does not match the one the checkpoint was trained with")
        restored, meta = ckpt.restore({"state": state})
        batches.set_state(meta["data_state"])
        _say(f"resumed from step {int(meta['step'])} in {run_dir}")
        return restored["state"], int(meta["step"])
    if source is not None:
        state = init_params(source, state, tok)
    return state, 0


def _compile(exp, step_fn, state, batch, mesh):
    """The train step compiled for ``batch``'s shapes, and the seconds it took (printed)."""
    t0 = time.perf_counter()
    with jax.set_mesh(mesh):
        compiled = step_fn.jitted.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    mem = jax.devices()[0].memory_stats() or {}
    _say(f"{exp.name}: {exp.noise.process} | params {sum(x.size for x in jax.tree.leaves(state.params)):,} | "
         f"compile {compile_s:.1f}s" + (f" | device memory {mem.get('bytes_in_use', 0) / 2**20:.0f} MiB" if mem else ""))
    return compiled, compile_s


class _Progress:
    """Losses of the steps since the last log line; the log line (tokens/s, ETA)."""

    def __init__(self, exp, logger, start: int, verbose: bool):
        self.exp, self.logger, self.start, self.verbose = exp, logger, start, verbose
        self.losses, self.pending = [], []
        self.t_start = self.t_log = time.perf_counter()

    def add(self, metrics):
        self.pending.append(metrics["loss"])

    def check(self, state):
        """Raise before a non-finite loss or state can be logged or saved."""
        done = self.start + len(self.losses) + len(self.pending)
        _check_finite(done - len(self.pending) + 1, [float(x) for x in self.pending], state)

    def flush(self, done: int, state, metrics):
        self.check(state)
        self.losses.extend(float(x) for x in self.pending)
        now = time.perf_counter()
        tok_s = len(self.pending) * self.exp.train.batch_size * self.exp.train.seq_len / (now - self.t_log)
        eta = (self.exp.train.steps - done) * (now - self.t_start) / (done - self.start)
        loss = self.losses[-1]
        self.logger.log(done, {"loss": loss, "bits_per_token": loss / LN2, "tokens_per_second": tok_s,
                               "grad_norm": float(metrics["grad_norm"])})
        if self.verbose:
            _say(f"  step {done:5d}/{self.exp.train.steps} | loss {loss:.4f} | {tok_s:,.0f} tok/s | "
                 f"ETA {time.strftime('%M:%S', time.gmtime(eta))}")
        self.pending, self.t_log = [], now

    def restart_clock(self):
        self.t_log = time.perf_counter()


class _Evaluator:
    """The validation bound, the context-use diagnostic and samples of the current params."""

    def __init__(self, exp, objective, graphdef, tok, mesh):
        self.exp, self.objective, self.graphdef, self.tok, self.mesh = exp, objective, graphdef, tok, mesh
        self.eval_fn = make_eval_step(objective, graphdef, mesh, seed=exp.train.seed)
        self.data = eval_batches(exp, tok, mesh)
        self.sampler = Sampler(exp, objective, graphdef)
        self.time_points = 1 if isinstance(objective, ARObjective) else exp.loop.eval_time_points
        self.context_fn = make_context_fn(objective, model_apply(graphdef), mesh, seed=exp.train.seed)

    def __call__(self, state) -> dict:
        params = state.ema if state.ema is not None else state.params
        out = evaluate(self.eval_fn, params, self.data, self.time_points)
        if self.exp.loop.context_times:
            use = context_use(self.objective, self.graphdef, params, self.data, self.mesh,
                              times=self.exp.loop.context_times, context_fn=self.context_fn)
            out.update(use.metrics())
            out["context_use"] = use
        return {**out, "samples": self.sampler.texts(params, self.tok)}

    def log(self, done: int, state, logger) -> dict:
        summary = self(state)
        logger.log(done, {k: v for k, v in summary.items() if k not in ("samples", "context_use")},
                   samples={str(k): v for k, v in summary["samples"].items()})
        _say(f"  eval @ {done}: {summary['val_loss']:.4f} nats/token, {summary['val_bits_per_token']:.4f} "
             f"bits/token, ppl {'=' if self.exp.noise.process == 'ar' else '<='} {summary['val_ppl']:.2f}"
             + (f" | NLL per corrupted token at t=0.1: {summary['nll_t0.10']:.3f} "
                f"(unigram {summary['unigram_entropy']:.3f})" if "nll_t0.10" in summary else ""))
        return summary


def with_overrides(exp: ExperimentConfig, **sections) -> ExperimentConfig:
    """``with_overrides(exp, train={"steps": 10})``: replace fields section by section."""
    out = {}
    for name, fields in sections.items():
        out[name] = dataclasses.replace(getattr(exp, name), **fields)
    return dataclasses.replace(exp, **out)

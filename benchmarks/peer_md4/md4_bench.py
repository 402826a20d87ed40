#!/usr/bin/env python3
"""CPU benchmark of google-deepmind/md4 (train step + ancestral sampler).

Uses md4's own code, unmodified:
  * config: md4/configs/md4/openwebtext.py get_config(), with overrides below
  * model/optimizer/state: md4.train.create_train_state (MD4 + llama-style
    transformer backbone, optax.chain(identity|clip, adamw(schedule)))
  * train step: md4.train.train_step wrapped exactly as in
    md4.train.train_and_evaluate: jax.pmap(partial(train_step, ...),
    axis_name="batch", donate_argnums=(0,)), called with keyword args.
  * sampler: md4.sampling.generate (pmap; prior_sample -> fori_loop over
    model.timesteps sample_step calls -> decode).

Only three import-time stubs are installed so md4/train.py imports without
TensorFlow / dataset code: md4.input_pipeline, md4.input_pipeline_v2 (only used
by train_and_evaluate) and the package __init__ of clu.metric_writers (pulls
TensorFlow; submodules such as clu.metric_writers.interface load normally).

Run with the virtualenv of install_md4.sh (OUT = its output folder):
  OUT/venv/bin/python md4_bench.py --md4-src OUT/md4src --md4-git MD4_GIT_DIR --reps 5 > md4_cpu.json
  OUT/venv/bin/python md4_bench.py --md4-src OUT/md4src --quick   # smoke test
"""

import argparse
import functools
import importlib.metadata
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
import types

MD4_COMMIT = "b9fbf29216f818cccff46cb5727199f86f35593e"


def parse_args():
  p = argparse.ArgumentParser()
  p.add_argument("--md4-git", help="the md4 git clone, to record its HEAD")
  p.add_argument("--md4-src", required=True,
                 help="extracted md4 source tree (contains md4/)")
  p.add_argument("--reps", type=int, default=10, help="timed runs (median)")
  p.add_argument("--warmup", type=int, default=2,
                 help="untimed runs after the compiling call")
  p.add_argument("--ks", default="8,64,256", help="sampler step counts K")
  p.add_argument("--train-batch", type=int, default=32)
  p.add_argument("--sample-batch", type=int, default=4)
  p.add_argument("--seq-len", type=int, default=128)
  p.add_argument("--vocab", type=int, default=8192)
  p.add_argument("--layers", type=int, default=6)
  p.add_argument("--d-model", type=int, default=256)
  p.add_argument("--heads", type=int, default=8)
  p.add_argument("--no-donated-variant", action="store_true",
                 help="skip the extra train-step variant that passes the "
                      "state positionally so donate_argnums=(0,) applies")
  p.add_argument("--quick", action="store_true",
                 help="smoke test: reps=1, warmup=1, K=8 only, no variant")
  a = p.parse_args()
  if a.quick:
    a.reps, a.warmup, a.ks, a.no_donated_variant = 1, 1, "8", True
  a.ks = [int(k) for k in a.ks.split(",") if k]
  return a


def install_import_stubs(md4_src):
  sys.path.insert(0, md4_src)
  for name in ("md4.input_pipeline", "md4.input_pipeline_v2"):
    sys.modules[name] = types.ModuleType(name)
  spec = importlib.util.find_spec("clu")
  mw = types.ModuleType("clu.metric_writers")
  mw.__path__ = [os.path.join(os.path.dirname(spec.origin), "metric_writers")]
  sys.modules["clu.metric_writers"] = mw
  from clu.metric_writers import interface  # pylint: disable=g-import-not-at-top
  mw.MetricWriter = interface.MetricWriter
  import clu  # pylint: disable=g-import-not-at-top
  clu.metric_writers = mw


def timed(fn, reps, warmup):
  """fn() must block until ready. Returns (first_call_s, [timed runs])."""
  t0 = time.perf_counter()
  fn()
  first = time.perf_counter() - t0
  for _ in range(warmup):
    fn()
  ts = []
  for _ in range(reps):
    t0 = time.perf_counter()
    fn()
    ts.append(time.perf_counter() - t0)
  return first, ts


def main():
  a = parse_args()
  install_import_stubs(a.md4_src)

  import flax  # pylint: disable=g-import-not-at-top,multiple-import
  import flax.jax_utils as flax_utils  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax
  import tensorflow_probability  # pylint: disable=g-import-not-at-top
  from md4 import sampling  # pylint: disable=g-import-not-at-top
  from md4 import train as md4_train  # pylint: disable=g-import-not-at-top
  from md4 import utils as md4_utils  # pylint: disable=g-import-not-at-top
  from md4.configs.md4 import openwebtext  # pylint: disable=g-import-not-at-top
  from md4.networks import transformer  # pylint: disable=g-import-not-at-top

  assert a.d_model % a.heads == 0
  config = openwebtext.get_config()
  config.vocab_size = a.vocab
  config.data_shape = (a.seq_len,)
  config.n_layers = a.layers
  config.num_heads = a.heads
  # md4: transformer dim = feature_dim * num_heads (feature_dim = head dim).
  config.feature_dim = a.d_model // a.heads
  config.dropout_rate = 0.0
  config.batch_size = a.train_batch
  # everything else as openwebtext.py: cond_type adaln_zero, mlp_type glu,
  # depth_scaled_init, linear schedule, cont_time, sampler ancestral,
  # cosine sampling grid, adamw b2 0.999 wd 0.0, clip 0, ema 0.9999,
  # lr 3e-4 cosine with 2000 warmup over 1e6 steps.

  ndev = jax.local_device_count()
  assert a.train_batch % ndev == 0 and a.sample_batch % ndev == 0
  schedule_fn = functools.partial(
      md4_train.get_learning_rate,
      base_learning_rate=config.learning_rate,
      num_steps=config.num_train_steps,
      warmup_steps=config.warmup_steps,
      schedule_type=config.learning_rate_schedule,
  )
  rng = md4_utils.get_rng(config.seed)
  rng, model_rng = jax.random.split(rng)
  model, optimizer, train_state, metrics_class = md4_train.create_train_state(
      config, model_rng,
      input_shape=(a.train_batch // ndev,) + tuple(config.data_shape),
      schedule_fn=schedule_fn)
  n_params = int(sum(x.size for x in jax.tree.leaves(train_state.params)))
  dim = config.feature_dim * config.num_heads
  hidden = int(2 * 4 * dim / 3)
  hidden = 32 * ((hidden + 31) // 32)  # transformer.FeedForward, multiple_of=32
  assert transformer.ModelArgs().multiple_of == 32

  train_state = flax_utils.replicate(train_state)
  train_step_func = functools.partial(
      md4_train.train_step,
      model=model,
      optimizer=optimizer,
      train_metrics_class=metrics_class,
      learning_rate_fn=schedule_fn,
      ema_rate=config.ema_rate,
      num_microbatches=config.get("num_microbatches", None),
  )
  # exactly as md4.train.train_and_evaluate
  p_train_step = jax.pmap(train_step_func, axis_name="batch",
                          donate_argnums=(0,))

  tokens = np.random.RandomState(0).randint(
      0, a.vocab, size=(a.train_batch, a.seq_len)).astype(np.int32)
  batch = md4_utils.reshape_batch({"text": tokens})

  results = {}
  holder = {"state": train_state}

  def run_train(step_fn, positional):
    def fn():
      old = holder["state"]
      if positional:
        new, m = step_fn(old, batch)
      else:
        new, m = step_fn(train_state=old, batch=batch)
      jax.block_until_ready((new, m))
      holder["state"] = new
      holder["donated"] = bool(jax.tree.leaves(old.params)[0].is_deleted())
    return fn

  first, ts = timed(run_train(p_train_step, False), a.reps, a.warmup)
  results["train_step_s"] = statistics.median(ts)
  results["train_step_first_call_s"] = first
  results["train_step_runs_s"] = ts
  results["train_state_donated_as_md4_calls_it"] = holder["donated"]

  if not a.no_donated_variant:
    p_train_step_pos = jax.pmap(
        lambda ts_, b_: train_step_func(train_state=ts_, batch=b_),
        axis_name="batch", donate_argnums=(0,))
    first, ts = timed(run_train(p_train_step_pos, True), a.reps, a.warmup)
    results["train_step_donated_variant_s"] = statistics.median(ts)
    results["train_step_donated_variant_first_call_s"] = first
    results["train_state_donated_in_variant"] = holder["donated"]

  train_state = holder["state"]
  # md4's generate samples with ema_params + state from the replicated state.
  sample_rng = flax_utils.replicate(jax.random.PRNGKey(1))
  dummy_inputs = md4_utils.reshape_batch(
      {"text": np.zeros((a.sample_batch, a.seq_len), np.int32)})["text"]
  sampler = {}
  for k in a.ks:
    model_k = model.clone(timesteps=k)  # generate loops model.timesteps times

    def fn(model_k=model_k):
      out = sampling.generate(model_k, train_state, sample_rng, dummy_inputs)
      jax.block_until_ready(out)
      return out

    first, ts = timed(fn, a.reps, a.warmup)
    out = np.asarray(fn())
    med = statistics.median(ts)
    sampler[str(k)] = {
        "total_s": med,
        "per_step_s": med / k,
        "per_network_pass_s": med / (k + 1),
        "network_passes": k + 1,
        "first_call_s": first,
        "runs_s": ts,
        "out_shape": list(out.shape),
        "out_in_vocab": bool(((out >= 0) & (out < a.vocab)).all()),
    }
  results["sampler"] = sampler

  try:
    head = None if a.md4_git is None else subprocess.run(["git", "-C", a.md4_git, "rev-parse", "HEAD"],
                          capture_output=True, text=True, timeout=10
                          ).stdout.strip() or None
  except Exception:  # pylint: disable=broad-except
    head = None
  report = {
      "bench": "md4",
      "md4_commit": MD4_COMMIT,
      "md4_mirror_head": head,
      "jax": jax.__version__,
      "jaxlib": importlib.metadata.version("jaxlib"),
      "flax": flax.__version__,
      "optax": optax.__version__,
      "tfp": tensorflow_probability.__version__,
      "backend": jax.default_backend(),
      "devices": ndev,
      "cpu_count": os.cpu_count(),
      "xla_flags": os.environ.get("XLA_FLAGS"),
      "quick": a.quick,
      "reps": a.reps,
      "warmup": a.warmup,
      "config": {
          "d_model": dim,
          "layers": config.n_layers,
          "heads": config.num_heads,
          "head_dim": config.feature_dim,
          "mlp_type": config.mlp_type,
          "mlp_hidden_dim": hidden,
          "vocab": config.vocab_size,
          "input_embed_rows": config.vocab_size + 1,
          "seq_len": config.data_shape[0],
          "cond_type": config.cond_type,
          "time_cond_embed_dim": config.feature_dim,
          "noise_schedule": config.noise_schedule,
          "cont_time": config.cont_time,
          "sampler": config.sampler,
          "sampling_grid": config.sampling_grid,
          "dropout_rate": config.dropout_rate,
          "depth_scaled_init": config.depth_scaled_init,
          "dtype": "float32",
          "optimizer": f"optax.chain(identity, adamw(b1=0.9,b2={config.b2},wd={config.weight_decay}))",
          "ema_rate": config.ema_rate,
          "param_count": n_params,
          "train_batch": a.train_batch,
          "sample_batch": a.sample_batch,
      },
      "results": results,
  }
  print(json.dumps(report))


if __name__ == "__main__":
  main()

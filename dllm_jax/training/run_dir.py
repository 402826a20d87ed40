"""A run directory: its config, tokenizer and checkpoints, loaded and checked.

``load_run`` / ``load_judge`` read a run; ``saved_config`` and ``check_compatible`` decide
whether a config may resume one (from the checkpoint's own metadata, before anything is
written); ``init_params`` starts a new run's parameters from another run
(``TrainConfig.init_from``: e.g. an AR model adapted into a diffusion model).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np

from dllm_jax.checkpoint import Checkpointer
from dllm_jax.config import DataConfig, ExperimentConfig, NoiseConfig, TrainConfig, special_ids
from dllm_jax.data.corpus import make_source
from dllm_jax.data.hf_tokenizer import TOKENIZER_FILE, HFTokenizer, load_tokenizer
from dllm_jax.data.tokenizer import Tokenizer
from dllm_jax.diffusion import make_objective
from dllm_jax.evaluation.quality import Judge, judge_from_model
from dllm_jax.files import read_json, write_atomic
from dllm_jax.nn.convert import is_hf_folder, load_hf, read_config
from dllm_jax.nn.model import abstract_model
from dllm_jax.sharding import make_mesh
from dllm_jax.training.state import TrainState, create_train_state

# Fields that must match to resume: everything that shapes the state or the data stream.
# The mesh may change: checkpoints restore into whatever sharding the new mesh gives.
_RESUME_KEYS = ("model", "noise", "data")


def _say(*args):
    if jax.process_index() == 0:
        print(*args, flush=True)


def check_compatible(saved: dict, exp: ExperimentConfig) -> None:
    """Raise if a run directory was made by a config this run cannot resume.

    A field the saved config lacks (written before the field existed) counts as its default.
    """
    new = exp.to_dict()
    diffs = []
    for key in _RESUME_KEYS:
        for field, value in new[key].items():
            old = saved.get(key, {}).get(field, _field_default(getattr(exp, key), field))
            if isinstance(old, list):
                old = tuple(old)
            if old != value:
                diffs.append(f"{key}.{field}: checkpoint has {old!r}, config has {value!r}")
    if diffs:
        raise ValueError("run directory holds a checkpoint from an incompatible config:\n  " + "\n  ".join(diffs))


def _field_default(section, field: str):
    f = next(f for f in dataclasses.fields(section) if f.name == field)
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def saved_config(run_dir: Path) -> dict | None:
    """The config a run directory was trained with: its latest checkpoint's, else config.json.

    The checkpoint's own metadata is the authority (``config.json`` may be missing or stale);
    None for a fresh directory.
    """
    ckpt_dir = run_dir / "checkpoints"
    if ckpt_dir.is_dir():
        ckpt = Checkpointer(ckpt_dir)
        try:
            if ckpt.latest_step() is not None:
                config = ckpt.metadata().get("config")
                if config is not None:
                    return config
        finally:
            ckpt.close()
    config_file = run_dir / "config.json"
    return read_json(config_file) if config_file.exists() else None


def write_config(run_dir: Path, exp: ExperimentConfig) -> None:
    """Write config.json atomically, only when it changes, naming what changed on a resume."""
    config_file = run_dir / "config.json"
    text = json.dumps(exp.to_dict(), indent=2)
    if config_file.exists():
        old_text = config_file.read_text()
        if old_text == text:
            return
        try:
            old = json.loads(old_text)
        except json.JSONDecodeError:
            old = {}
        new = exp.to_dict()
        changed = [f"{k}.{f}: {old.get(k, {}).get(f)!r} -> {v!r}" for k in new if isinstance(new[k], dict)
                   for f, v in new[k].items() if _jsonable(old.get(k, {}).get(f)) != _jsonable(v)]
        if changed:
            _say("config.json updated for this resume (each checkpoint keeps the config it was saved with): "
                 + "; ".join(changed))
    write_atomic(config_file, text)


def _jsonable(v):
    return json.loads(json.dumps(v))


def load_or_train_tokenizer(exp: ExperimentConfig, run_dir: Path, source: Path | None = None):
    """The run's tokenizer: ``data.tokenizer`` if set, else the run's own ``tokenizer.model``
    (or ``tokenizer.json``), else (a new run initialised from ``source``, a run or a Hugging
    Face folder) a copy of the source's, else trained on the corpus."""
    stored = run_dir / "tokenizer.model"
    n = exp.model.num_tokens
    if exp.data.tokenizer:
        tok = load_tokenizer(exp.data.tokenizer, n)
    elif stored.exists():
        tok = Tokenizer.load(stored)
    elif (run_dir / TOKENIZER_FILE).exists():
        tok = HFTokenizer.load(run_dir, n)
    elif source is not None and (source / TOKENIZER_FILE).exists() and is_hf_folder(source):
        tok = HFTokenizer.load(source, n)
        if jax.process_index() == 0:
            tok.save_hf(run_dir)  # the tokenizer its weights know
    elif source is not None and (source / "tokenizer.model").exists() and jax.process_index() == 0:
        write_atomic(stored, (source / "tokenizer.model").read_bytes())  # the pieces its weights know
        tok = Tokenizer.load(stored)
    else:
        source = make_source(exp.data.source, "train")
        # Deterministic in (corpus, vocab, seed): every process trains the same model.
        path = stored if jax.process_index() == 0 else run_dir / f".tokenizer.{jax.process_index()}.model"
        tok = Tokenizer.train((source[i] for i in range(len(source))), exp.data.vocab_size, path,
                              model_type=exp.data.tokenizer_type, seed=exp.data.seed)
    if tok.num_tokens != exp.model.num_tokens:
        raise ValueError(
            f"tokenizer has {tok.num_tokens} pieces but ModelConfig.num_tokens="
            f"{exp.model.num_tokens}: the checkpoint/model and tokenizer do not match"
        )
    return tok


def load_run(run_dir: str | Path, step: int | None = None, use_ema: bool = True):
    """Load a finished or running run: (exp, graphdef, params, tokenizer, objective, step).

    Raises a clear error for a directory without a config or without a usable checkpoint.
    """
    run_dir = Path(run_dir)
    if is_hf_folder(run_dir) and not (run_dir / "checkpoints").is_dir():
        return _load_hf_folder(run_dir)
    config_file = run_dir / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.json)")
    try:
        exp = ExperimentConfig.from_dict(read_json(config_file))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{config_file}: {e}") from None
    tok = load_or_train_tokenizer(exp, run_dir)
    mesh = make_mesh(exp.mesh)
    graphdef, state, _ = create_train_state(exp.model, exp.train, mesh)
    ckpt = Checkpointer(run_dir / "checkpoints", max_to_keep=exp.loop.keep_checkpoints, best_metric="val_loss")
    restored, meta = ckpt.restore({"state": state}, step=step)
    ckpt.close()
    if meta.get("tokenizer_sha256") != tok.sha256:
        raise ValueError(f"the tokenizer in {run_dir} does not match the one its checkpoint was trained with")
    state = restored["state"]
    params = state.ema if (use_ema and state.ema is not None) else state.params
    return exp, graphdef, params, tok, make_objective(exp.noise, exp.model.num_tokens, exp.model), int(meta["step"])


def _load_hf_folder(folder: Path):
    """``load_run`` of a Hugging Face folder: the imported model at step 0, as an AR model
    (a causal one) or as the diffusion model its ``dllm_jax.json`` describes."""
    model = read_config(folder)
    process = "ar" if model.attention == "causal" else "masked"
    exp = ExperimentConfig(name=folder.name, model=model, noise=NoiseConfig(process=process),
                           data=DataConfig(vocab_size=model.num_tokens),
                           train=TrainConfig(seq_len=min(TrainConfig().seq_len, model.max_len)))
    if not (folder / TOKENIZER_FILE).is_file():
        raise FileNotFoundError(f"{folder}: no {TOKENIZER_FILE} (sampling and evaluation need the tokenizer)")
    tok = HFTokenizer.load(folder, model.num_tokens)
    imported = load_hf(folder, make_mesh(exp.mesh))
    return exp, imported.graphdef, imported.params, tok, make_objective(exp.noise, model.num_tokens, model), 0


def experiment_for_model(exp: ExperimentConfig, model) -> ExperimentConfig:
    """``exp`` with ``model`` as its backbone: the data section follows its vocabulary, an
    AR process its causal attention (masked diffusion otherwise, unless ``exp`` names one)."""
    process = "ar" if model.attention == "causal" else (exp.noise.process if exp.noise.process != "ar" else "masked")
    noise = dataclasses.replace(exp.noise, process=process)
    data = dataclasses.replace(exp.data, vocab_size=model.num_tokens)
    seq_len = min(exp.train.seq_len, model.max_len)
    return dataclasses.replace(exp, model=model, noise=noise, data=data,
                               train=dataclasses.replace(exp.train, seq_len=seq_len))


# Fields of the run's own model config kept when the backbone comes from a Hugging Face
# folder: they change no parameter shape (time conditioning adds fresh layers).
_KEPT_FROM_RUN = ("attention", "block_size", "shift", "context_attention", "dtype", "remat", "max_len",
                  "time_conditioning", "time_embed_dim")


def init_from_hf(exp: ExperimentConfig, folder: str | Path) -> ExperimentConfig:
    """``exp`` set to start from the Hugging Face folder ``folder``: the backbone's sizes
    come from the folder, the attention kind, block size, shift, dtype, max_len and time
    conditioning from ``exp.model``; ``train.init_from`` names the folder.

    The tokenizer is the folder's (copied into the run directory when the run starts).
    """
    folder = Path(folder)
    if not is_hf_folder(folder):
        raise FileNotFoundError(f"{folder} is not a Hugging Face model folder (config.json + model.safetensors "
                                "or model.safetensors.index.json)")
    model = dataclasses.replace(read_config(folder), **{f: getattr(exp.model, f) for f in _KEPT_FROM_RUN})
    exp = experiment_for_model(dataclasses.replace(exp, data=dataclasses.replace(exp.data, tokenizer="")), model)
    return dataclasses.replace(exp, train=dataclasses.replace(exp.train, init_from=str(folder)))


def load_judge(run_dir, step: int | None = None, use_ema: bool = True) -> Judge:
    """A causal (AR) model from a run directory (``load_run``).

    Compare ``judge.tokenizer.sha256`` with the samples' tokenizer before scoring: a judge
    reads token ids, so it must share the tokenizer of the model that made the samples.
    """
    exp, graphdef, params, tok, _, loaded_step = load_run(run_dir, step=step, use_ema=use_ema)
    ids = special_ids(exp.model.num_tokens)
    return Judge(judge_from_model(graphdef, params), tok, tok.eos_id, exp.model.bos_input, ids.pad, loaded_step)


def has_checkpoint(run_dir: Path) -> bool:
    ckpt_dir = Path(run_dir) / "checkpoints"
    if not ckpt_dir.is_dir():
        return False
    ckpt = Checkpointer(ckpt_dir)
    try:
        return ckpt.latest_step() is not None
    finally:
        ckpt.close()


def check_init_source(exp: ExperimentConfig) -> Path:
    """The run ``TrainConfig.init_from`` names, checked before anything is written: it must
    be a run directory whose model has the parameter shapes of ``exp.model`` (new parameters
    of this model, e.g. time conditioning's, are allowed)."""
    source = Path(exp.train.init_from)
    hf = is_hf_folder(source)
    config = None if hf else saved_config(source) if source.is_dir() else None
    if config is None and not hf:
        raise FileNotFoundError(f"TrainConfig.init_from={str(source)!r} is not a run directory (no config.json "
                                "or checkpoint) nor a Hugging Face folder (config.json + safetensors)")
    try:
        src_model = read_config(source) if hf else ExperimentConfig.from_dict(config).model
    except (TypeError, ValueError) as e:
        raise ValueError(f"TrainConfig.init_from={str(source)!r}: its config is not valid: {e}") from None
    src = dict(jax.tree_util.tree_flatten_with_path(abstract_model(src_model)[1])[0])
    wrong = [f"{jax.tree_util.keystr(path)}: source {src[path].shape}, this model {leaf.shape}"
             for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_model(exp.model)[1])[0]
             if path in src and src[path].shape != leaf.shape]
    if wrong:
        raise ValueError(f"TrainConfig.init_from={str(source)!r} has parameters of other shapes (the backbones "
                         "must have the same sizes):\n  " + "\n  ".join(wrong))
    return source


def init_params(source: str | Path, state: TrainState, tok: Tokenizer) -> TrainState:
    """``state`` with its parameters (and EMA) taken from the run in ``source``.

    The source's latest checkpoint is read (its EMA weights if it kept them). Every
    parameter of the new model must exist in the source with the same shape, except those
    the new model adds (e.g. time conditioning's adaLN-Zero layers, which start as the
    identity): these keep their fresh initialisation. Attention kind, block size and
    ``shift`` may differ: they change no parameter. The tokenizers must be identical. The
    optimiser state is fresh (Adam's moments start at zero whatever the parameters).
    """
    source = Path(source)
    if is_hf_folder(source) and not (source / "checkpoints").is_dir():
        mesh = jax.tree.leaves(state.params)[0].sharding.mesh
        imported = load_hf(source, mesh)
        src_params, src_step, what = imported.params, 0, f"Hugging Face {imported.config.attention} model"
        src_tok = HFTokenizer.load(source, tok.num_tokens) if (source / TOKENIZER_FILE).exists() else tok
    else:
        src_exp, _, src_params, src_tok, _, src_step = load_run(source)
        what = f"{src_exp.noise.process}, attention {src_exp.model.attention}"
    if src_tok.sha256 != tok.sha256:
        raise ValueError(f"TrainConfig.init_from={str(source)!r}: its tokenizer differs from this run's "
                         "(both must tokenize the same text the same way)")
    src = dict(jax.tree_util.tree_flatten_with_path(src_params)[0])
    dst_leaves = jax.tree_util.tree_flatten_with_path(state.params)[0]
    leaves, fresh, wrong = [], [], []
    for path, leaf in dst_leaves:
        name = jax.tree_util.keystr(path)
        if path not in src:
            fresh.append(name)
            leaves.append(leaf)
        elif src[path].shape != leaf.shape:
            wrong.append(f"{name}: source {src[path].shape}, this model {leaf.shape}")
        elif isinstance(src[path], jax.Array) and src[path].sharding == leaf.sharding:
            leaves.append(src[path].astype(leaf.dtype))  # imported straight into this sharding
        else:
            leaves.append(jax.device_put(np.asarray(src[path], leaf.dtype), leaf.sharding))
    if wrong:  # check_init_source catches this before a run writes anything
        raise ValueError(f"TrainConfig.init_from={str(source)!r} has parameters of other shapes:\n  "
                         + "\n  ".join(wrong))
    params = jax.tree.unflatten(jax.tree.structure(state.params), leaves)
    _say(f"initialised from {source} (step {src_step}, {what}): {len(leaves) - len(fresh)} parameter arrays copied"
         + (f", {len(fresh)} new ones kept at their initialisation ({', '.join(fresh[:4])}"
            f"{', ...' if len(fresh) > 4 else ''})" if fresh else ""))
    ema = None if state.ema is None else jax.tree.map(lambda p: p.copy(), params)
    return state.replace(params=params, ema=ema)

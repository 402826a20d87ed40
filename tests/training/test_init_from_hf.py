"""Training, sampling and evaluating from a Hugging Face folder (a tiny random Qwen2 built
by ``transformers``): ``train --init_from FOLDER`` starts from exactly its weights with its
tokenizer, and ``sample`` / ``evaluate`` read the folder directly, the likelihood equal to
the one ``transformers`` computes."""

from __future__ import annotations

import jax
import numpy as np
import pytest

pytest.importorskip("torch")  # the test extra installs torch + transformers
import torch  # noqa: E402
from hf_models import build_folder  # noqa: E402

from dllm_jax.data.hf_tokenizer import HFTokenizer  # noqa: E402
from dllm_jax.nn.convert import load_hf  # noqa: E402
from dllm_jax.sharding import make_mesh  # noqa: E402
from dllm_jax.training.loop import eval_batches, load_run, train, with_overrides  # noqa: E402
from dllm_jax.training.run_dir import init_from_hf, init_params  # noqa: E402
from dllm_jax.training.state import create_train_state  # noqa: E402
from experiments import block_study, configs  # noqa: E402
from experiments import evaluate as evaluate_cli  # noqa: E402
from experiments import sample as sample_cli  # noqa: E402
from experiments import train as train_cli  # noqa: E402

SHORT = {"train": {"steps": 2, "batch_size": 4, "seq_len": 32},
         "loop": {"eval_every": 2, "checkpoint_every": 2, "eval_batches": 1, "sample_length": 16, "num_samples": 2}}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf") / "qwen2"
    return path, build_folder(path, "qwen2", tie=True, vocab=320, max_pos=128)


def test_block_diffusion_adapted_from_a_hf_folder_starts_from_its_weights(folder, tmp_path):
    path, _ = folder
    exp = init_from_hf(configs.shrink(block_study.block(4)), path)
    exp = with_overrides(exp, **SHORT)
    assert (exp.model.attention, exp.model.block_size, exp.model.d_model, exp.model.kv_heads) == ("block_causal", 4, 64, 2)
    assert exp.model.qkv_bias and exp.model.tie_embeddings and exp.model.num_tokens == 320
    imported = load_hf(path, make_mesh(exp.mesh))
    graphdef, state, _ = create_train_state(exp.model, exp.train, make_mesh(exp.mesh))
    state = init_params(path, state, HFTokenizer.load(path, 320))
    for a, b in zip(jax.tree.leaves(imported.params), jax.tree.leaves(state.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    result = train(exp, tmp_path / "adapted", verbose=False)
    assert result["start_step"] == 0 and np.isfinite(result["val_loss"])
    assert (tmp_path / "adapted" / "tokenizer.json").read_text() == (path / "tokenizer.json").read_text()
    again = train(with_overrides(exp, train={"steps": 3}), tmp_path / "adapted", verbose=False)
    assert again["start_step"] == 2  # a resume reads its own checkpoint and tokenizer


def test_train_cli_init_from_a_hf_folder(folder, tmp_path):
    path, _ = folder
    sets = [f"{s}.{k}={v}" for s, fields in SHORT.items() for k, v in fields.items()]
    train_cli.main(["--config", "quickstart", "--process", "ar", "--init_from", str(path),
                    "--run_dir", str(tmp_path / "ar"), "--set", *sets])
    exp, *_ = load_run(tmp_path / "ar")
    assert exp.train.init_from == str(path) and exp.model.attention == "causal" and exp.model.start_id == 0


def test_sample_and_evaluate_read_the_folder_directly(folder, capsys):
    path, model = folder
    sample_cli.main([str(path), "--num_samples", "2", "--length", "12"])
    assert "--- K = 12" in capsys.readouterr().out
    out = evaluate_cli.main([str(path), "--batches", "1", "--context_times"])
    # the same validation batch scored by transformers: mean NLL of each token given the
    # model's start token (its eos, as for Qwen2) and the tokens before it
    exp, _, _, tok, _, _ = load_run(path)
    batch = eval_batches(exp, tok, make_mesh(exp.mesh))[0]
    tokens, mask = np.array(batch["tokens"], np.int64), np.array(batch["loss_mask"], np.float64)
    inputs = np.concatenate([np.full((tokens.shape[0], 1), exp.model.start_id), tokens[:, :-1]], axis=1)
    with torch.no_grad():
        logits = model(torch.as_tensor(inputs)).logits.double()
    per_token = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.as_tensor(tokens).reshape(-1),
                                                  reduction="none").numpy()
    nll = (per_token * mask.reshape(-1)).sum() / mask.sum()
    print("evaluate:", out["nats_per_token"], "transformers:", float(nll))
    assert abs(out["nats_per_token"] - float(nll)) < 1e-4

"""The trainer on CPU with tiny random LLaMA models."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from conftest import make_word_tokenizer, mixed_spec, synthetic_records, write_jsonl  # noqa: E402

from longmix.data.mixture import MixtureConfig  # noqa: E402
from longmix.data.prepare import PrepareConfig, prepare  # noqa: E402
from longmix.data.store import PackedDataset  # noqa: E402
from longmix.train.loop import TrainConfig, TrainError, TrainWindows, micro_batch_tensors, train  # noqa: E402
from longmix.train.model import (  # noqa: E402
    ModelError,
    apply_rope,
    chunked_cross_entropy,
    dynamic_ntk_theta,
    load_model,
    rope_settings,
)
from longmix.train.shape import ModelShape  # noqa: E402

VOCAB = 512


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A prepared folder (seq_len 256, word tokenizer) and a tiny model config."""
    root = tmp_path_factory.mktemp("train")
    tok = make_word_tokenizer(root / "tok", vocab_size=VOCAB)
    write_jsonl(root / "corpus" / "a.jsonl", synthetic_records(mixed_spec()))
    prepare(
        PrepareConfig(
            inputs=(str(root / "corpus"),),
            out=str(root / "data"),
            tokenizer=str(tok),
            seq_len=256,
            mixture=MixtureConfig("per-source", long_threshold=256),
            workers=1,
        ),
        progress=False,
        log=lambda m: None,
    )
    tiny().save_pretrained(root / "cfg")
    return root


def tiny(**kw) -> transformers.LlamaConfig:
    settings = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=64,
        rope_theta=10000.0,
    )
    settings.update(kw)
    return transformers.LlamaConfig(**settings)


def config(workspace: Path, name: str, **kw) -> TrainConfig:
    settings = dict(
        data=str(workspace / "data"),
        out=str(workspace / name),
        init_config=str(workspace / "cfg" / "config.json"),
        seq_len=128,
        batch_tokens=256,
        steps=4,
        lr=3e-3,
        rope_theta=1e5,
        progress=False,
        save_dtype="float32",
    )
    settings.update(kw)
    return TrainConfig(**settings)


def losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines()]


def test_a_few_steps_reduce_the_loss(workspace):
    record = train(config(workspace, "learn", steps=30, lr=1e-2))
    curve = losses(workspace / "learn")
    assert len(curve) == 30 and record["step"] == 30
    assert np.mean(curve[-5:]) < np.mean(curve[:5]) - 0.1
    assert (workspace / "learn" / "loss.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((workspace / "learn" / "log.jsonl").read_text().splitlines()[-1])
    assert {"loss", "lr", "tokens_per_s", "grad_norm", "tokens"} <= set(saved)


def test_chunked_loss_equals_full_loss_and_gradients():
    torch.manual_seed(0)
    hidden = torch.randn(300, 32, requires_grad=True)
    weight = torch.randn(100, 32, requires_grad=True)
    labels = torch.randint(0, 100, (300,))
    labels[::7] = -100
    full = torch.nn.functional.cross_entropy(
        hidden @ weight.T, labels, ignore_index=-100, reduction="sum"
    )
    full_grads = torch.autograd.grad(full, (hidden, weight))
    chunked = chunked_cross_entropy(hidden, weight, labels, chunk=64)
    chunked_grads = torch.autograd.grad(chunked, (hidden, weight))
    torch.testing.assert_close(chunked, full)
    for a, b in zip(chunked_grads, full_grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("backend", ["loop", "flex"])
def test_document_masked_attention_equals_documents_run_separately(workspace, backend):
    model = load_model(
        None,
        str(workspace / "cfg" / "config.json"),
        attention=backend,
        seq_len=128,
        rope_theta=None,
        rope_scaling=None,
        rope_factor=1.0,
        checkpointing=False,
        seed=0,
    ).eval()
    torch.manual_seed(1)
    lengths = [37, 64, 27]
    docs = [torch.randint(0, VOCAB, (n,)) for n in lengths]
    cu = torch.tensor([0, *np.cumsum(lengths)], dtype=torch.int32)
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    with torch.no_grad():
        packed = model.model(
            input_ids=torch.cat(docs)[None],
            position_ids=positions,
            cu_seq_lens_q=cu,
            cu_seq_lens_k=cu,
            max_length_q=max(lengths),
            max_length_k=max(lengths),
        ).last_hidden_state[0]
        model.config._attn_implementation = "sdpa"
        separate = torch.cat([model.model(input_ids=d[None]).last_hidden_state[0] for d in docs])
    torch.testing.assert_close(packed, separate, atol=1e-5, rtol=1e-4)


def test_doc_mask_training_runs_and_builds_restarting_positions(workspace):
    windows = TrainWindows(PackedDataset(workspace / "data"), 128, seed=0)
    batch = micro_batch_tensors(
        [windows.sample(0), windows.sample(1)], doc_mask=True, device=torch.device("cpu")
    )
    cu = batch["cu_seq_lens_q"]
    assert batch["input_ids"].shape == (1, 256) and cu[-1] == 256
    assert torch.all(batch["position_ids"][0, cu[:-1].long()] == 0) and 128 in cu.tolist()
    record = train(config(workspace, "docmask", doc_mask=True, steps=2))
    assert record["step"] == 2 and np.isfinite(record["loss"])


def test_killed_and_resumed_run_matches_an_uninterrupted_one(workspace):
    straight = config(workspace, "straight", steps=6, save_every=2)
    train(straight)

    def preempt(record):
        if record["step"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    interrupted = config(workspace, "interrupted", steps=6, save_every=2)
    record = train(interrupted, on_step=preempt)
    assert record["stopped"] == "SIGTERM" and record["step"] == 3
    assert not (workspace / "interrupted" / "model").exists()
    with pytest.raises(TrainError, match="--resume"):
        train(interrupted)
    train(config(workspace, "interrupted", steps=6, save_every=2, resume=True))
    assert len(losses(workspace / "interrupted")) == 6
    assert losses(workspace / "interrupted") == losses(workspace / "straight")


@pytest.mark.parametrize("scaling", [None, "linear", "yarn", "dynamic"])
def test_saved_model_gives_the_training_logits_on_a_short_input(workspace, scaling):
    run = workspace / f"rope-{scaling}"
    train(config(workspace, run.name, steps=1, rope_scaling=scaling, rope_factor=4.0))
    trained = load_model(
        None,
        str(workspace / "cfg" / "config.json"),
        attention="sdpa",
        seq_len=128,
        rope_theta=1e5,
        rope_scaling=scaling,
        rope_factor=4.0,
        checkpointing=False,
        seed=0,
    )
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(run / "model").eval()
    trained.load_state_dict(reloaded.state_dict())
    short = torch.randint(0, VOCAB, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(trained.eval()(short).logits, reloaded(short).logits)
    params = rope_settings(reloaded.config)
    if scaling == "dynamic":  # frozen into a fixed base: short inputs see the training RoPE
        assert params["rope_type"] == "default"
        assert params["rope_theta"] == pytest.approx(dynamic_ntk_theta(1e5, 4.0, 128, 64, 16))
    else:
        assert params["rope_type"] == (scaling or "default") and params["rope_theta"] == 1e5
    assert reloaded.config.max_position_embeddings == 128


def test_tied_embeddings_are_saved_once(workspace, tmp_path):
    from safetensors import safe_open

    tiny(tie_word_embeddings=True).save_pretrained(tmp_path / "tied")
    train(config(workspace, "tied", steps=1, init_config=str(tmp_path / "tied" / "config.json")))
    with safe_open(str(workspace / "tied" / "model" / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "lm_head.weight" not in keys and "model.embed_tokens.weight" in keys
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(workspace / "tied" / "model")
    assert reloaded.lm_head.weight.data_ptr() == reloaded.model.embed_tokens.weight.data_ptr()


def test_rope_theta_is_applied():
    cfg = tiny()
    apply_rope(cfg, theta=5e5, scaling=None, factor=1.0, seq_len=32768)
    assert rope_settings(cfg)["rope_theta"] == 5e5 and cfg.max_position_embeddings == 32768
    with pytest.raises(ModelError, match="unknown RoPE scaling"):
        apply_rope(tiny(), theta=None, scaling="ntk", factor=2.0, seq_len=128)


def test_bad_inputs_fail_before_training(workspace, tmp_path):
    with pytest.raises(TrainError, match="longer than the prepared sequences"):
        train(config(workspace, "e1", seq_len=512))
    with pytest.raises(TrainError, match="smaller than one micro-batch"):
        train(config(workspace, "e2", batch_tokens=64))
    with pytest.raises(TrainError, match="training length"):
        train(config(workspace, "e3", steps=0, tokens=0))
    small = tmp_path / "small"
    tiny(vocab_size=100).save_pretrained(small)
    with pytest.raises(TrainError, match="vocabulary of 512"):
        train(config(workspace, "e4", init_config=str(small / "config.json")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no model weights"):
        train(config(workspace, "e5", init_config=None, model=str(tmp_path / "empty")))
    with pytest.raises(TrainError, match="needs a CUDA GPU"):
        train(config(workspace, "e6", doc_mask=True, attention="varlen"))
    other_tok = make_word_tokenizer(tmp_path / "othertok", vocab_size=VOCAB, separator="</s>")
    model_dir = tmp_path / "model"
    transformers.LlamaForCausalLM(tiny()).save_pretrained(model_dir)
    (model_dir / "tokenizer.json").write_bytes((other_tok / "tokenizer.json").read_bytes())
    with pytest.raises(TrainError, match="vocabulary differs"):
        train(config(workspace, "e7", init_config=None, model=str(model_dir)))


def test_yaml_config_and_saved_settings(workspace, tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        f"data: {workspace / 'data'}\nout: {workspace / 'yaml'}\ninit_config: {workspace / 'cfg' / 'config.json'}\n"
        "seq_len: 128\nbatch_tokens: 256\nsteps: 1\nprogress: false\n"
    )
    cfg = TrainConfig.from_yaml(path, lr=1e-4)
    assert cfg.lr == 1e-4 and cfg.seq_len == 128
    train(cfg)
    import yaml

    saved = yaml.safe_load((workspace / "yaml" / "config.yaml").read_text())
    assert (
        saved["lr"] == 1e-4
        and saved["resolved_accumulation"] == 2
        and saved["resolved_attention"] == "sdpa"
    )
    path.write_text("sequence_length: 5\n")
    with pytest.raises(TrainError, match="unknown settings sequence_length"):
        TrainConfig.from_yaml(path)


def test_flop_count_matches_the_reference_numbers_for_llama2_7b():
    shape = ModelShape(
        layers=32, hidden=4096, heads=32, kv_heads=32, head_dim=128, intermediate=11008, vocab=32000
    )
    assert 6 * shape.matmul_params == pytest.approx(39.7e9, rel=0.01)
    attention_80k = shape.train_flops_per_token(81920) - 6 * shape.matmul_params
    assert attention_80k == pytest.approx(64.4e9, rel=0.01)


def test_cli_train(workspace, capsys):
    from longmix.cli import main

    code = main(
        [
            "train",
            "--data",
            str(workspace / "data"),
            "--out",
            str(workspace / "cli"),
            "--init-config",
            str(workspace / "cfg" / "config.json"),
            "--seq-len",
            "128",
            "--batch-tokens",
            "256",
            "--steps",
            "1",
            "--no-progress",
            "--rope-theta",
            "1e5",
        ]
    )
    assert code == 0 and (workspace / "cli" / "model" / "model.safetensors").is_file()
    assert (
        main(
            [
                "train",
                "--data",
                str(workspace / "data"),
                "--out",
                str(workspace / "cli2"),
                "--init-config",
                str(workspace / "cfg" / "config.json"),
                "--seq-len",
                "1K",
                "--steps",
                "1",
            ]
        )
        == 2
    )
    assert "longer than the prepared sequences" in capsys.readouterr().err


@pytest.mark.parametrize("user", [None, "backend:native", "PYTORCH_ALLOC_CONF"])
def test_trainer_asks_for_expandable_segments_unless_the_user_chose(user):
    import os
    import subprocess
    import sys

    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")
    }
    if user == "PYTORCH_ALLOC_CONF":
        env["PYTORCH_ALLOC_CONF"] = "backend:native"
    elif user:
        env["PYTORCH_CUDA_ALLOC_CONF"] = user
    code = "import os, longmix.train.loop; print(os.environ.get('PYTORCH_CUDA_ALLOC_CONF'))"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert (
        out
        == {
            None: "expandable_segments:True",
            "backend:native": "backend:native",
            "PYTORCH_ALLOC_CONF": "None",
        }[user]
    )

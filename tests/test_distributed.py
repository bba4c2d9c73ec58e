"""The distributed path on CPU: torchrun with 2 processes (gloo), FSDP2 and context parallel."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from longmix.train.distributed import cp_chunks, cp_shard  # noqa: E402

RUNNER = """
import sys
from longmix.train.loop import TrainConfig, train
data, cfg, out, cp, resume = sys.argv[1:6]
train(TrainConfig(data=data, out=out, init_config=cfg, seq_len=128, batch_tokens=512, steps=3, lr=1e-3, rope_theta=1e5,
                  progress=False, save_dtype="float32", context_parallel=int(cp), save_every=1, resume=resume == "1"))
"""


def losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines()]


def torchrun(tmp: Path, args: list[str]) -> None:
    script = tmp / "runner.py"
    script.write_text(RUNNER)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(script),
        *args,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def test_head_tail_split_balances_causal_work():
    assert cp_chunks(16, 2, 0) == [(0, 4), (12, 16)]
    assert cp_chunks(16, 2, 1) == [(4, 8), (8, 12)]
    x = torch.arange(16)[None]
    assert sorted(torch.cat([cp_shard(x, 2, r) for r in range(2)], dim=1)[0].tolist()) == list(
        range(16)
    )
    with pytest.raises(ValueError, match="divisible"):
        cp_chunks(10, 2, 0)


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    from conftest import make_word_tokenizer, mixed_spec, synthetic_records, write_jsonl
    from test_train import tiny  # the tiny model config of the trainer tests

    from longmix.data.mixture import MixtureConfig
    from longmix.data.prepare import PrepareConfig, prepare
    from longmix.train.loop import TrainConfig, train

    root = tmp_path_factory.mktemp("dist")
    tok = make_word_tokenizer(root / "tok")
    write_jsonl(root / "c" / "a.jsonl", synthetic_records(mixed_spec()))
    prepare(
        PrepareConfig(
            inputs=(str(root / "c"),),
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
    train(
        TrainConfig(
            data=str(root / "data"),
            out=str(root / "single"),
            init_config=str(root / "cfg" / "config.json"),
            seq_len=128,
            batch_tokens=512,
            steps=3,
            lr=1e-3,
            rope_theta=1e5,
            progress=False,
            save_dtype="float32",
        )
    )
    return root


@pytest.mark.parametrize("cp", [1, 2], ids=["fsdp2-data-parallel", "context-parallel"])
def test_two_ranks_match_the_single_process_loss(single_run, cp):
    root = single_run
    out = root / f"ranks-cp{cp}"
    torchrun(root, [str(root / "data"), str(root / "cfg" / "config.json"), str(out), str(cp), "0"])
    # FSDP2 computes in bf16 (mixed precision) where the single CPU process runs fp32
    assert losses(out) == pytest.approx(losses(root / "single"), abs=2e-4)
    assert (out / "model" / "model.safetensors").is_file()
    assert (
        len(list((out / "checkpoints" / "step-000003").glob("*.distcp"))) == 2
    )  # one shard per rank

"""Shared fixtures: a word-level tokenizer (one token per word, so lengths are exact by
construction) and writers for synthetic SlimPajama-like corpora."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import orjson
import pytest
import zstandard

WORDS = [f"w{i}" for i in range(500)]


def make_word_tokenizer(path: Path, vocab_size: int = 512, separator: str = "<eos>") -> Path:
    """A WordLevel tokenizer: ``w0``..``wN`` each one token, split on whitespace."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, separator: 1}
    for i in range(vocab_size - 2):
        vocab[f"w{i}"] = i + 2
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens([separator])
    path.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({"eos_token": separator}))
    return path


@pytest.fixture
def word_tokenizer(tmp_path: Path) -> Path:
    return make_word_tokenizer(tmp_path / "tok")


def text_of(n_words: int, rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS[:400]) for _ in range(n_words))


def synthetic_records(spec: dict[str, list[int]], seed: int = 0) -> list[dict]:
    """Records with ``len`` words for each length in ``spec[domain]``, shuffled."""
    rng = random.Random(seed)
    records = [
        {"text": text_of(n, rng), "meta": {"redpajama_set_name": f"RedPajama{domain}"}}
        for domain, lengths in spec.items()
        for n in lengths
    ]
    rng.shuffle(records)
    return records


def write_jsonl(path: Path, records: list, compression: str | None = None) -> Path:
    """Write records (dicts, or raw bytes lines) as .jsonl, .jsonl.gz or .jsonl.zst."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = b"".join((r if isinstance(r, bytes) else orjson.dumps(r)) + b"\n" for r in records)
    if compression == "gz":
        data = gzip.compress(data)
    elif compression == "zst":
        data = zstandard.ZstdCompressor().compress(data)
    path.write_bytes(data)
    return path


def mixed_spec(rng_seed: int = 1, scale: int = 1) -> dict[str, list[int]]:
    """A SlimPajama-like spec: most domains short-heavy with a long tail; book all long."""
    rng = random.Random(rng_seed)
    return {
        "CommonCrawl": [rng.randint(20, 200) for _ in range(300 * scale)]
        + [rng.randint(300, 900) for _ in range(30 * scale)],
        "C4": [rng.randint(10, 150) for _ in range(300 * scale)]
        + [rng.randint(260, 600) for _ in range(8 * scale)],
        "Github": [rng.randint(10, 250) for _ in range(150 * scale)]
        + [rng.randint(300, 2000) for _ in range(15 * scale)],
        "Book": [rng.randint(1500, 5000) for _ in range(12 * scale)],
        "StackExchange": [rng.randint(10, 200) for _ in range(100 * scale)],
    }


@pytest.fixture
def mixed_corpus(tmp_path: Path) -> Path:
    """Four jsonl.zst files in SlimPajama's layout; the long threshold for it is 256 words."""
    records = synthetic_records(mixed_spec())
    root = tmp_path / "corpus"
    for i in range(4):
        write_jsonl(
            root / "train" / f"chunk{i % 2 + 1}" / f"example_train_{i}.jsonl.zst",
            records[i::4],
            "zst",
        )
    return root


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random LLaMA with the built-in SmolLM2 tokenizer, saved as a HF folder."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from longmix.data.tokenize import builtin_tokenizer_dir

    path = tmp_path_factory.mktemp("model") / "tiny"
    config = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=49152,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    (path / "tokenizer.json").write_bytes((builtin_tokenizer_dir() / "tokenizer.json").read_bytes())
    return path


@pytest.fixture(scope="module")
def em(tiny_model):
    """The tiny model loaded for evaluation (``longmix.eval.common.EvalModel``)."""
    from longmix.eval.common import load_eval_model

    return load_eval_model(tiny_model)

"""Working with the tools around us: HF datasets folders in, parquet for HF and Fu's release
out, model folders that load with transformers, standard logging, lm-evaluation-harness."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import make_word_tokenizer, mixed_spec, synthetic_records, write_jsonl

from longmix.data.corpus import (
    Document,
    ReaderOptions,
    Rejection,
    classify_file,
    describe_files,
    discover_shards,
    iter_documents,
)
from longmix.data.mixture import MixtureConfig
from longmix.data.prepare import PrepareConfig, prepare
from longmix.data.store import PackedDataset

SP = {"meta": {"redpajama_set_name": "RedPajamaBook"}}
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))


def read_all(root: Path, options: ReaderOptions | None = None) -> list[Document | Rejection]:
    return [
        item
        for shard in discover_shards([root])
        for item in iter_documents(shard, options or ReaderOptions())
    ]


def rows(n: int, prefix: str = "doc") -> list[dict]:
    return [
        {"text": f"{prefix} {i} " + "w1 " * i, "meta": {"redpajama_set_name": "RedPajamaArXiv"}}
        for i in range(n)
    ]


# ---------------------------------------------------------------------------- readers


def test_datasets_save_to_disk_folder_reads_its_rows_and_refuses_its_metadata(tmp_path):
    datasets = pytest.importorskip("datasets")
    records = rows(7)
    datasets.Dataset.from_list(records).save_to_disk(str(tmp_path / "ds"))
    items = read_all(tmp_path / "ds")
    docs = [i for i in items if isinstance(i, Document)]
    refused = [i for i in items if isinstance(i, Rejection)]
    assert [d.text for d in docs] == [r["text"] for r in records]
    assert {d.domain for d in docs} == {"arxiv"}
    assert [d.line for d in docs] == list(range(1, 8))
    assert sorted(Path(r.file).name for r in refused) == ["dataset_info.json", "state.json"]
    assert {r.reason for r in refused} == {"metadata_file"}


def test_datasets_dataset_dict_reads_every_split(tmp_path):
    datasets = pytest.importorskip("datasets")
    train, test = rows(5, "train"), rows(3, "test")
    splits = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(train), "test": datasets.Dataset.from_list(test)}
    )
    splits.save_to_disk(str(tmp_path / "dd"))
    docs = [i for i in read_all(tmp_path / "dd") if isinstance(i, Document)]
    # Sorted by path: the test split's folder comes first.
    assert [d.text for d in docs] == [r["text"] for r in test + train]
    assert all(d.file.endswith(".arrow") for d in docs)


def test_json_lines_are_found_by_content_whatever_the_name(tmp_path):
    datasets = pytest.importorskip("datasets")
    records = rows(6)
    datasets.Dataset.from_list(records).to_json(str(tmp_path / "c" / "export.json"))
    write_jsonl(tmp_path / "c" / "more.txt", [{"text": "from txt", **SP}])
    items = read_all(tmp_path / "c")
    assert all(isinstance(i, Document) for i in items)
    assert [d.text for d in items] == [r["text"] for r in records] + ["from txt"]
    assert classify_file(tmp_path / "c" / "export.json").format == "jsonl"


def test_binary_files_and_single_json_documents_are_refused_and_counted(tmp_path):
    root = tmp_path / "docs"
    root.mkdir()
    (root / "README.md").write_text("# a readme\nwith words")
    (root / "notes.txt").write_text("plain words")
    (root / "logo.png").write_bytes(PNG)
    (root / "blob.bin").write_bytes(b"abc\x00def" * 10)
    (root / "config.json").write_text('{\n  "a": 1\n}\n')
    items = read_all(root, ReaderOptions(domain="web"))
    docs = {Path(i.file).name for i in items if isinstance(i, Document)}
    reasons = {Path(i.file).name: i.reason for i in items if isinstance(i, Rejection)}
    assert docs == {"README.md", "notes.txt"}
    assert reasons == {
        "logo.png": "binary_file",
        "blob.bin": "binary_file",
        "config.json": "json_document",
    }
    summary = describe_files(discover_shards([root]))
    assert summary.startswith("5 files: 2 plain text (.md 1, .txt 1)")
    assert (
        "3 refused" in summary
        and "2 binary file (.bin 1, .png 1), 1 json document (.json 1)" in summary
    )


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_a_fifo_is_refused_without_being_opened(tmp_path):
    root = tmp_path / "c"
    write_jsonl(root / "a.jsonl", [{"text": "real", **SP}])
    os.mkfifo(root / "pipe.jsonl")
    os.mkfifo(root / "pipe")
    result: list = []
    reader = threading.Thread(target=lambda: result.extend(read_all(root)), daemon=True)
    reader.start()
    reader.join(timeout=20)
    assert not reader.is_alive(), "reading the corpus blocked on a FIFO"
    refused = sorted(
        (Path(i.file).name, i.reason, i.detail) for i in result if isinstance(i, Rejection)
    )
    assert refused == [
        ("pipe", "not_regular_file", "FIFO"),
        ("pipe.jsonl", "not_regular_file", "FIFO"),
    ]
    assert [d.text for d in result if isinstance(d, Document)] == ["real"]


def test_prepare_counts_refused_files_as_file_errors(tmp_path, word_tokenizer):
    root = tmp_path / "c"
    write_jsonl(root / "book" / "a.json", [{"text": " ".join(["w1"] * 40), **SP} for _ in range(4)])
    (root / "book" / "cover.png").write_bytes(PNG)
    stats = prepare(
        PrepareConfig(
            inputs=(str(root),),
            out=str(tmp_path / "out"),
            tokenizer=str(word_tokenizer),
            seq_len=64,
            mixture=MixtureConfig(strategy="original"),
        ),
        progress=False,
        log=lambda m: None,
    )
    assert stats["rejections"]["counts"] == {"binary_file": 1}
    assert stats["documents"]["used"] == 4


# ---------------------------------------------------------------------------- export and collate

VOCAB = 512


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A prepared folder: 256-token sequences of a word tokenizer, documents cut across sequences."""
    root = tmp_path_factory.mktemp("eco")
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
    return root / "data"


def test_export_hf_reads_back_with_datasets_token_identical(prepared, tmp_path):
    datasets = pytest.importorskip("datasets")
    from longmix.data.export_hf import export_hf

    dataset = PackedDataset(prepared)
    files = export_hf(prepared, tmp_path / "hf", sequences_per_file=max(1, len(dataset) // 3))
    assert len(files) >= 3
    loaded = datasets.load_dataset(
        "parquet",
        data_files=sorted(str(f) for f in files),
        split="train",
        cache_dir=str(tmp_path / "cache"),
    )
    assert len(loaded) == len(dataset)
    for i in range(len(dataset)):
        row, seq = loaded[i], dataset[i]
        assert np.array_equal(np.asarray(row["input_ids"]), seq.tokens)
        assert [s["source"] for s in row["source"]] == seq.domains
        assert [s["start"] for s in row["source"]] == seq.doc_starts.tolist()
        assert [s["end"] - s["start"] for s in row["source"]] == seq.doc_lengths.tolist()
        assert [s["doc_offset"] for s in row["source"]] == seq.doc_offsets.tolist()
    assert any(s["doc_offset"] > 0 for row in loaded for s in row["source"]), (
        "no document continues: weak fixture"
    )


def test_collate_gives_hf_batches_with_restarting_positions_and_boundaries(prepared):
    dataset = PackedDataset(prepared)
    batch = [dataset[i] for i in range(3)]
    out = PackedDataset.collate(batch, return_tensors="np")
    assert out["input_ids"].shape == out["labels"].shape == out["position_ids"].shape == (3, 256)
    cu = out["cu_seqlens"]
    assert cu[0] == 0 and cu[-1] == 3 * 256 and np.all(np.diff(cu) > 0)
    assert {256, 512} <= set(cu.tolist()), "a sequence boundary is a document boundary"
    flat_positions, flat_labels = out["position_ids"].reshape(-1), out["labels"].reshape(-1)
    starts = cu[:-1]
    offsets = np.concatenate([seq.doc_offsets for seq in batch])
    assert np.array_equal(flat_positions[starts], offsets)  # 0 where a document begins
    assert np.all(flat_labels[starts] == -100)
    inside = np.setdiff1d(np.arange(3 * 256), starts)
    assert np.array_equal(flat_labels[inside], out["input_ids"].reshape(-1)[inside])
    assert out["max_seqlen"] == int(np.diff(cu).max())
    torch = pytest.importorskip("torch")
    tensors = PackedDataset.collate(batch)
    assert (
        isinstance(tensors["input_ids"], torch.Tensor)
        and tensors["cu_seqlens"].dtype == torch.int32
    )


# ---------------------------------------------------------------------------- model folders


def tiny_config_file(folder: Path) -> Path:
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=64,
    )
    config.save_pretrained(folder)
    return folder / "config.json"


@pytest.mark.parametrize("save_dtype", ["bfloat16", "float32"])
def test_trained_folder_loads_with_auto_classes_in_its_dtype_with_the_data_tokenizer(
    prepared, tmp_path, save_dtype
):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from longmix.train.loop import TrainConfig, train

    run = tmp_path / "run"
    train(
        TrainConfig(
            data=str(prepared),
            out=str(run),
            init_config=str(tiny_config_file(tmp_path / "cfg")),
            seq_len=128,
            batch_tokens=128,
            steps=1,
            progress=False,
            save_dtype=save_dtype,
            compile=False,
        )
    )
    folder = run / "model"
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype="auto")
    assert {p.dtype for p in model.parameters()} == {getattr(torch, save_dtype)}
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    assert tokenizer.model_max_length == 128
    from tokenizers import Tokenizer

    data_tokenizer = Tokenizer.from_file(str(prepared.parent / "tok" / "tokenizer.json"))
    text = "w1 w7 w300 w2"
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == data_tokenizer.encode(text).ids


# ---------------------------------------------------------------------------- observability


def test_report_to_is_parsed_and_a_missing_extra_is_one_line_naming_it(tmp_path, monkeypatch):
    import importlib.util

    from longmix.train.config import TrainConfig, TrainError

    real = importlib.util.find_spec
    installed = {"tensorboard", "wandb"}  # pretend both extras are there, whatever this machine has
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: object() if name in installed else real(name, *a),
    )
    (tmp_path / "run.yaml").write_text("data: d\nout: o\nreport_to: tensorboard,wandb\n")
    assert TrainConfig.from_yaml(tmp_path / "run.yaml").report_to == ("tensorboard", "wandb")
    assert TrainConfig.from_yaml(tmp_path / "run.yaml", report_to="none").report_to == ()
    with pytest.raises(TrainError, match="unknown tensorbord"):
        TrainConfig.from_yaml(tmp_path / "run.yaml", report_to="tensorbord")
    installed.discard("wandb")
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: (
            None if name == "wandb" else (object() if name in installed else real(name, *a))
        ),
    )
    with pytest.raises(TrainError) as err:
        TrainConfig.from_yaml(tmp_path / "run.yaml")
    assert "pip install 'longmix[wandb]'" in str(err.value) and "\n" not in str(err.value)


def test_reporter_writes_numeric_metrics_to_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from longmix.train.reporting import Reporter

    reporter = Reporter(("tensorboard",), tmp_path, {})
    for step in (1, 2, 3):
        reporter.log({"step": step, "loss": 4.0 / step, "mfu": None, "note": "text"}, step)
    reporter.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert events.Tags()["scalars"] == ["train/loss"]
    assert [(e.step, round(e.value, 4)) for e in events.Scalars("train/loss")] == [
        (1, 4.0),
        (2, 2.0),
        (3, 1.3333),
    ]
    assert Reporter(("tensorboard",), tmp_path / "other", {}, enabled=False).tensorboard is None
    assert not (tmp_path / "other").exists()  # other ranks write nothing


@pytest.mark.slow
def test_training_reports_to_tensorboard_and_logs_its_messages(prepared, tmp_path, caplog):
    pytest.importorskip("tensorboard")
    import logging

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from longmix.train.loop import TrainConfig, train

    run = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="longmix"):
        train(
            TrainConfig(
                data=str(prepared),
                out=str(run),
                init_config=str(tiny_config_file(tmp_path / "cfg")),
                seq_len=128,
                batch_tokens=128,
                steps=2,
                progress=False,
                save_dtype="float32",
                report_to=("tensorboard",),
            )
        )
    assert len((run / "log.jsonl").read_text().splitlines()) == 2  # the JSON-lines log is kept
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2]
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("longmix")]
    assert any(m.startswith("training ") and "for 2 steps" in m for m in messages)
    assert any(m.startswith("model saved to") for m in messages)


def test_wandb_without_credentials_runs_offline_with_no_network(tmp_path, monkeypatch, caplog):
    pytest.importorskip("wandb")
    import logging

    from longmix.train.reporting import Reporter, wandb_mode

    for name in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no stored credentials
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # any network use would fail
    monkeypatch.setenv("WANDB_SILENT", "true")
    assert wandb_mode() == "offline"
    run = tmp_path / "run"
    run.mkdir()
    with caplog.at_level(logging.INFO, logger="longmix"):
        reporter = Reporter(("wandb",), run, {"lr": 1e-3})
        for step in (1, 2):
            reporter.log({"step": step, "loss": 3.0 / step, "memory_gib": None}, step)
        reporter.close()
    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb"))
    assert (run / "wandb_id").read_text().strip() in offline[0].name  # a resumed run reuses the id
    assert any("wandb is offline" in r.getMessage() for r in caplog.records)


def test_version_and_license_match_the_package_metadata():
    import longmix

    root = Path(__file__).resolve().parents[1]
    pyproject = (root / "pyproject.toml").read_text()
    assert 'version = {attr = "longmix.__version__"}' in pyproject
    assert longmix.__version__.count(".") >= 2
    assert 'license = "Apache-2.0"' in pyproject and 'license-files = ["LICENSE"]' in pyproject
    text = (root / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text) > 10000


# ---------------------------------------------------------------------------- lm-evaluation-harness

FAKE_HARNESS = {
    "__init__.py": """
from . import models
CALLS = []

def simple_evaluate(model, tasks, **options):
    CALLS.append((model, tasks, options))
    results = {task: {"alias": task, "acc,none": 0.25 * (i + 1), "acc_stderr,none": 0.01,
                      "acc_norm,none": 0.5 + 0.1 * i, "acc_norm_stderr,none": "N/A"} for i, task in enumerate(tasks)}
    return {"results": results, "versions": {t: 1.0 for t in tasks}, "n-shot": {t: options["num_fewshot"] or 0 for t in tasks},
            "config": {"model": model}}
""",
    "models/__init__.py": "from . import huggingface\n",
    "models/huggingface.py": """
class HFLM:
    def __init__(self, pretrained, tokenizer, batch_size, max_length, device):
        self.pretrained, self.tokenizer, self.batch_size, self.max_length, self.device = (
            pretrained, tokenizer, batch_size, max_length, device)
""",
}


@pytest.fixture
def model_folder(tmp_path) -> Path:
    """A tiny random LLaMA folder with a word tokenizer, as `longmix train` saves one."""
    transformers = pytest.importorskip("transformers")
    from longmix.train.checkpoint import save_tokenizer

    folder = tmp_path / "model"
    config = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=VOCAB,
        max_position_embeddings=96,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    save_tokenizer(make_word_tokenizer(tmp_path / "tok", vocab_size=VOCAB), folder, 96)
    return folder


@pytest.fixture
def fake_harness(tmp_path, monkeypatch):
    """A stand-in ``lm_eval`` package that records what it is given (the real one needs task data)."""
    import sys

    root = tmp_path / "fake"
    for name, text in FAKE_HARNESS.items():
        (root / "lm_eval" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "lm_eval" / name).write_text(text)
    harness_modules = lambda: [m for m in sys.modules if m == "lm_eval" or m.startswith("lm_eval.")]  # noqa: E731
    for name in harness_modules():
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(root))
    yield
    for name in harness_modules():  # the fake's modules go; monkeypatch then restores the real ones
        del sys.modules[name]


def test_lm_eval_hands_the_loaded_model_to_the_harness_and_the_report_shows_it(
    model_folder, tmp_path, fake_harness
):
    import lm_eval

    from longmix.eval.lm_eval import LmEvalConfig
    from longmix.eval.registry import evaluations, run_evaluation
    from longmix.eval.report import build_report
    from longmix.eval.runtime import load_eval_model
    from longmix.settings import from_mapping

    assert "lm-eval" in evaluations()
    settings = from_mapping(
        LmEvalConfig, {"tasks": "hellaswag, arc_easy", "num_fewshot": "5", "limit": "20"}
    )
    em = load_eval_model(model_folder, device="cpu")
    summary = run_evaluation("lm-eval", em, settings, tmp_path / "base")
    ((model, tasks, options),) = lm_eval.CALLS
    assert model.pretrained is em.model and model.max_length == 96 and model.batch_size == 8
    assert model.tokenizer("w3 w9", add_special_tokens=False)["input_ids"] == em.encode("w3 w9")
    assert (
        tasks == ["hellaswag", "arc_easy"]
        and options["num_fewshot"] == 5
        and options["limit"] == 20
    )
    assert summary["tasks"]["arc_easy"] == {"acc": 0.5, "acc_stderr": 0.01, "acc_norm": 0.6}
    assert summary["headline"]["hellaswag"] == {"metric": "acc_norm", "value": 0.5}
    saved = json.loads((tmp_path / "base" / "lm-eval" / "results.json").read_text())
    assert saved["results"]["hellaswag"]["acc,none"] == 0.25
    assert json.loads((tmp_path / "base" / "lm-eval" / "summary.json").read_text()) == summary
    assert "arc_easy" in evaluations()["lm-eval"].describe(summary)
    # each invocation's wall time, appended (a resumed evaluation has one line per invocation)
    run_evaluation("lm-eval", em, settings, tmp_path / "base")
    timing = (tmp_path / "base" / "lm-eval" / "timing.jsonl").read_text().splitlines()
    assert [json.loads(line)["evaluation"] for line in timing] == ["lm-eval", "lm-eval"]
    assert all(json.loads(line)["seconds"] >= 0 for line in timing)

    report = build_report([tmp_path / "base"], tmp_path / "report")
    assert "## lm-evaluation-harness" in report
    assert "| hellaswag (acc_norm) | arc_easy (acc_norm) |" in report
    assert "| base (limit 20.0) | 0.500 | 0.600 |" in report


def test_lm_eval_without_the_harness_fails_before_the_model_loads_naming_the_extra(monkeypatch):
    import importlib.util

    from longmix.eval.common import EvalError
    from longmix.eval.lm_eval import LmEvalConfig, run_lm_eval
    from longmix.settings import SettingsError, from_mapping

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "lm_eval" else real(name, *a)
    )
    with pytest.raises(SettingsError) as err:
        from_mapping(LmEvalConfig, {"tasks": "hellaswag"})
    assert "pip install 'longmix[lm-eval]'" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(EvalError, match=r"longmix\[lm-eval\]"):
        run_lm_eval(None, LmEvalConfig(tasks=("hellaswag",)), Path("unused"))


@pytest.mark.slow
def test_lm_eval_runs_the_real_harness_on_a_local_task_and_agrees_with_our_scores(
    model_folder, tmp_path, monkeypatch
):
    pytest.importorskip("lm_eval")
    pytest.importorskip("accelerate")
    import random

    import torch

    from longmix.eval.lm_eval import LmEvalConfig
    from longmix.eval.registry import run_evaluation
    from longmix.eval.runtime import load_eval_model

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rng = random.Random(0)
    docs = [
        {
            "question": " ".join(f"w{rng.randrange(400)}" for _ in range(6)),
            "choices": [f"w{rng.randrange(400)}" for _ in range(3)],
            "answer": rng.randrange(3),
        }
        for _ in range(10)
    ]
    (tmp_path / "mc.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "local.yaml").write_text(
        "task: longmix_local_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {tmp_path / 'mc.jsonl'}\ntest_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{answer}}"\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
    )
    em = load_eval_model(model_folder, device="cpu")
    config = LmEvalConfig(tasks=("longmix_local_mc",), include_path=str(tmp_path / "tasks"))
    summary = run_evaluation("lm-eval", em, config, tmp_path / "out", progress=False)

    def choice_logprob(question: str, choice: str) -> float:
        context, target = em.encode(question), em.encode(choice)
        with torch.no_grad():
            logits = (
                em.model(torch.tensor([context + target])).logits[0, len(context) - 1 :].float()
            )
        return float(
            torch.log_softmax(logits, -1)[torch.arange(len(target)), torch.tensor(target)].sum()
        )

    ours = np.mean(
        [
            int(np.argmax([choice_logprob(d["question"], c) for c in d["choices"]]) == d["answer"])
            for d in docs
        ]
    )
    assert summary["samples"] == {"longmix_local_mc": 10}
    assert summary["tasks"]["longmix_local_mc"]["acc"] == pytest.approx(ours)
    assert (tmp_path / "out" / "lm-eval" / "results.json").is_file()

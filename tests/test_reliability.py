"""Faults a hostile user or a crash can cause: each ends in one clear line, never in damage."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from conftest import make_word_tokenizer, synthetic_records, write_jsonl

from longmix import fsutil
from longmix.cli import main
from longmix.data.corpus import ReaderOptions
from longmix.data.executor import LocalExecutor, progress_bar
from longmix.data.mixture import MixtureConfig, PlanError
from longmix.data.prepare import PrepareConfig, PrepareError, prepare
from longmix.data.verify import verify_prepared
from longmix.errors import InputNotFoundError, InvalidInputError, LongmixError
from longmix.fsutil import FolderLockedError, OutputError, folder_lock
from longmix.settings import SettingsError, from_mapping

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture
def small(tmp_path: Path) -> Path:
    """Two small JSONL files (book long, c4 short) and a word tokenizer, under ``tmp_path``."""
    records = synthetic_records({"Book": [300] * 4, "C4": [40] * 40}, seed=3)
    write_jsonl(tmp_path / "corpus" / "a.jsonl", records[::2])
    write_jsonl(tmp_path / "corpus" / "b.jsonl", records[1::2])
    make_word_tokenizer(tmp_path / "tok")
    return tmp_path


def small_config(root: Path, out: str | Path = "out", **kw) -> PrepareConfig:
    mixture = kw.pop("mixture", MixtureConfig("per-source", long_threshold=100))
    return PrepareConfig(
        inputs=(kw.pop("corpus", str(root / "corpus")),),
        out=str(out if Path(out).is_absolute() else root / out),
        tokenizer=kw.pop("tokenizer", str(root / "tok")),
        seq_len=128,
        mixture=mixture,
        part_bytes=2048,
        workers=1,
        **kw,
    )


def run(config: PrepareConfig, messages: list[str] | None = None) -> dict:
    return prepare(
        config, progress=False, log=(messages.append if messages is not None else lambda m: None)
    )


def tree_digest(out: Path) -> dict[str, str]:
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name not in ("params.json", "timings.json")
    }


def one_line_error(capsys, argv: list[str]) -> str:
    """Run the CLI, expect exit status 2 and a single line on stderr; return that line."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


# ---------------------------------------------------------------------------- tokenizer files


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_a_damaged_tokenizer_json_is_one_line_naming_it(small, capsys, damage):
    file = small / "tok" / "tokenizer.json"
    text = file.read_text()
    file.write_text("" if damage == "empty" else text[: len(text) // 2])
    with pytest.raises(InvalidInputError, match="not a usable tokenizer.json") as caught:
        run(small_config(small))
    assert str(file) in str(caught.value)
    assert not (small / "out").exists()  # refused before anything was written
    line = one_line_error(
        capsys,
        [
            "prepare",
            str(small / "corpus"),
            "--out",
            str(small / "o"),
            "--tokenizer",
            str(file),
            "--quiet",
        ],
    )
    assert str(file) in line and ("empty file" in line) == (damage == "empty")


def test_a_missing_tokenizer_or_broken_tokenizer_config_is_one_line(small, capsys):
    missing = small / "nowhere" / "tokenizer.json"
    with pytest.raises(InputNotFoundError, match="no tokenizer at"):
        run(small_config(small, tokenizer=str(missing)))
    line = one_line_error(
        capsys,
        ["prepare", str(small / "corpus"), "--out", str(small / "o"), "--tokenizer", str(missing)],
    )
    assert str(missing) in line
    (small / "tok" / "tokenizer_config.json").write_text("{ not json")
    with pytest.raises(InvalidInputError, match="tokenizer_config.json is not readable JSON"):
        run(small_config(small))


# ---------------------------------------------------------------------------- unwritable outputs


def test_out_that_is_a_file_is_refused_in_one_line(small, capsys):
    target = small / "a-file"
    target.write_text("keep me")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        run(small_config(small, target))
    line = one_line_error(
        capsys,
        ["prepare", str(small / "corpus"), "--out", str(target), "--tokenizer", str(small / "tok")],
    )
    assert str(target) in line and target.read_text() == "keep me"


def test_read_only_out_is_refused_in_one_line(small, monkeypatch):
    real_open = open

    def read_only(path, *args, **kwargs):
        if str(path).startswith(str(small / "ro")):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, *args, **kwargs)

    (small / "ro").mkdir()
    monkeypatch.setattr(fsutil, "open", read_only, raising=False)
    with pytest.raises(OutputError, match="not writable") as caught:
        run(small_config(small, "ro"))
    assert str(small / "ro") in str(caught.value)
    assert list((small / "ro").iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="permissions do not bind root")
def test_read_only_permissions_are_refused_in_one_line(small):
    (small / "ro").mkdir()
    (small / "ro").chmod(0o555)
    try:
        with pytest.raises(OutputError, match="Permission denied"):
            run(small_config(small, "ro"))
    finally:
        (small / "ro").chmod(0o755)


@pytest.mark.parametrize(
    "victim", ["part-00001", "shard-00001.tokens", "report.md", "domain_shares.png"]
)
def test_full_disk_is_one_line_leaves_no_temporaries_and_a_rerun_resumes(
    small, monkeypatch, victim
):
    reference = small / "reference"
    run(small_config(small, reference))
    real_fsync = os.fsync
    failed = []

    def full_disk(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        if victim in path:
            failed.append(path)
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(fsutil.os, "fsync", full_disk)
    with pytest.raises(OutputError, match="No space left on device") as caught:
        run(small_config(small, "full"))
    assert failed and victim in str(caught.value) and "rerun the same command" in str(caught.value)
    assert not list((small / "full").rglob("*.tmp"))
    assert not (small / "full" / "manifest.json").exists()
    monkeypatch.setattr(fsutil.os, "fsync", real_fsync)
    run(small_config(small, "full"))
    assert tree_digest(small / "full") == tree_digest(reference)


# ---------------------------------------------------------------------------- all documents rejected


def test_all_rejected_names_reasons_places_and_the_text_field_to_use(tmp_path):
    rows = [
        orjson.dumps({"content": f"w{i} " + "w2 w3 " * 40, "meta": {"redpajama_set_name": "Book"}})
        for i in range(5)
    ]
    write_jsonl(tmp_path / "corpus" / "a.jsonl", [*rows, b"{broken", b"[1, 2]"])
    make_word_tokenizer(tmp_path / "tok")
    with pytest.raises(PrepareError) as caught:
        run(small_config(tmp_path))
    message = str(caught.value)
    assert "7 read, all rejected" in message
    assert message.index("missing text ×5") < message.index("broken json ×2")
    assert "corpus/a.jsonl:1" in message and "corpus/a.jsonl:6" in message
    assert "fields: content, meta" in message and "pass --text-field content" in message
    assert "\n" not in message
    stats = run(small_config(tmp_path, "fixed", reader=ReaderOptions(text_field="content")))
    assert stats["documents"]["used"] == 5


def test_all_rejected_for_another_reason_suggests_its_fix(tmp_path):
    write_jsonl(tmp_path / "corpus" / "a.jsonl", [{"text": "w1 w2 w3"}] * 3)  # no domain label
    make_word_tokenizer(tmp_path / "tok")
    with pytest.raises(PrepareError, match=r"missing domain ×3 .*corpus/a.jsonl:1.*--domain NAME"):
        run(small_config(tmp_path))


# ---------------------------------------------------------------------------- settings before work


def test_zero_tokens_is_refused_and_a_budget_still_reads_with_units(small, capsys):
    def settings(data: dict) -> PrepareConfig:
        return from_mapping(PrepareConfig, data, "test", inputs=("c",), out="o")

    with pytest.raises(SettingsError, match="tokens: must be positive"):
        settings({"tokens": 0})
    assert settings({"tokens": "500M"}).mixture.tokens == 500_000_000
    assert settings({}).mixture.tokens is None
    line = one_line_error(
        capsys, ["prepare", str(small / "corpus"), "--out", str(small / "o"), "--tokens", "0"]
    )
    assert "tokens" in line and not (small / "o").exists()
    with pytest.raises(PrepareError, match="--tokens 0: must be positive"):
        run(small_config(small, mixture=MixtureConfig("original", tokens=0)))
    assert not (small / "out").exists()


@pytest.mark.parametrize(
    "mixture, reader, match",
    [
        (
            MixtureConfig(long_fraction=1.5),
            ReaderOptions(),
            "--long-fraction 1.5: must be within 0..1",
        ),
        (MixtureConfig("cut:-5"), ReaderOptions(), "cut:-5.*must be a positive number of tokens"),
        (
            MixtureConfig("upsample:nonexistent"),
            ReaderOptions(domain="Book"),
            r"upsample names unknown domains: nonexistent \(corpus has: book\)$",
        ),
        (
            MixtureConfig("upsample:wiki,book"),
            ReaderOptions(allowed_domains=("book", "c4")),
            "unknown domains: wikipedia ",
        ),
        (
            MixtureConfig(domain_weights=(("wiki", 1.0),)),
            ReaderOptions(allowed_domains=("book", "c4")),
            "domain weights name domains the corpus lacks: wiki ",
        ),
    ],
)
def test_settings_are_checked_before_any_tokenization(small, mixture, reader, match):
    config = small_config(small, mixture=mixture, reader=reader)
    with pytest.raises((PrepareError, PlanError), match=match):
        run(config)
    assert not (small / "out").exists()


# ---------------------------------------------------------------------------- damaged outputs


def test_manifest_checksums_detect_damage_and_a_rerun_redoes_it(small):
    out = small / "out"
    run(small_config(small))
    manifest = json.loads((out / "manifest.json").read_text())
    part = out / "tokens" / "part-00001.bin"
    assert manifest["files"]["tokens/part-00001.bin"]["size"] == part.stat().st_size > 0
    assert {"index/seq_offsets.npy", "stats.json", "plan.json"} <= set(manifest["files"])
    assert not any(name.startswith("tokenized/") for name in manifest["files"])
    assert verify_prepared(out) == [] and main(["verify", str(out)]) == 0
    reference = tree_digest(out)

    part.write_bytes(part.read_bytes()[:100])
    (out / "index" / "span_length.npy").unlink()
    flipped = out / "index" / "span_start.npy"
    data = bytearray(flipped.read_bytes())
    data[-1] ^= 0xFF
    flipped.write_bytes(bytes(data))
    problems = verify_prepared(out)
    assert any(p.startswith("tokens/part-00001.bin: 100 bytes") for p in problems)
    assert main(["verify", str(out)]) == 1
    assert "index/span_length.npy: missing" in problems
    assert "index/span_start.npy: contents differ from the manifest's checksum" in problems

    messages: list[str] = []
    run(small_config(small), messages)
    assert any("damaged" in m and "part-00001.bin" in m for m in messages)
    assert verify_prepared(out) == [] and tree_digest(out) == reference
    messages.clear()
    run(small_config(small), messages)
    assert any("already complete" in m for m in messages)


def test_a_damaged_tokenized_shard_is_tokenized_again(small):
    out = small / "out"
    run(small_config(small))
    reference = tree_digest(out)
    shard = out / "tokenized" / "shard-00000.tokens"
    shard.write_bytes(shard.read_bytes()[:10])
    (out / "manifest.json").unlink()
    messages: list[str] = []
    run(small_config(small), messages)
    assert any("1 of 2 shards already tokenized" in m for m in messages)
    assert tree_digest(out) == reference


def test_verify_names_a_folder_that_is_not_prepared(tmp_path):
    assert verify_prepared(tmp_path) == [
        "manifest.json: missing: not a finished prepared folder (run or rerun `longmix prepare`)"
    ]
    (tmp_path / "manifest.json").write_text("{trunc")
    assert verify_prepared(tmp_path)[0].startswith("manifest.json: unreadable")


# ---------------------------------------------------------------------------- one writer per folder


def test_a_second_writer_fails_at_once_naming_the_holder(small):
    out = small / "out"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom longmix.fsutil import folder_lock\n"
            f"with folder_lock({str(out)!r}):\n    print('held', flush=True)\n    time.sleep(120)\n",
        ],
        env={**os.environ, "PYTHONPATH": SRC},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderLockedError, match=f"process {holder.pid}"):
            run(small_config(small))
        assert not (out / "tokenized").exists()
    finally:
        holder.kill()  # a killed holder frees the folder: the lock ends with its process
        holder.wait()
    assert run(small_config(small))["packing"]["n_sequences"] > 0
    assert (
        out / ".lock"
    ).read_text() == ""  # no pid left behind: outputs never depend on the writer


def test_job_array_ranks_share_the_folder_but_exclude_a_full_run(tmp_path):
    with (
        folder_lock(tmp_path, shared=True),
        folder_lock(tmp_path, shared=True),
        pytest.raises(FolderLockedError, match="ranks of a job array"),
        folder_lock(tmp_path),
    ):
        pass
    with (
        folder_lock(tmp_path),
        pytest.raises(FolderLockedError, match=f"process {os.getpid()}"),
        folder_lock(tmp_path, shared=True),
    ):
        pass


# ---------------------------------------------------------------------------- resume by meaning


def test_the_same_folder_by_another_spelling_or_a_copy_resumes(small, monkeypatch):
    monkeypatch.chdir(small)
    relative = PrepareConfig(
        inputs=("corpus",),
        out="out",
        tokenizer="tok",
        seq_len=128,
        mixture=MixtureConfig("per-source", long_threshold=100),
        part_bytes=2048,
        workers=1,
    )
    run(relative)
    for config in (
        small_config(small),
        small_config(small, corpus=str(small / "corpus" / ".." / "corpus")),
    ):
        messages: list[str] = []
        run(config, messages)
        assert any("already complete" in m for m in messages)
    shutil.copytree(small / "out", small / "copy")
    messages = []
    run(small_config(small, "copy"), messages)
    assert any("already complete" in m for m in messages)

    shutil.copytree(small / "corpus", small / "other-corpus")
    with pytest.raises(PrepareError, match=r"other settings \(inputs differ\)"):
        run(small_config(small, corpus=str(small / "other-corpus")))
    with pytest.raises(PrepareError, match=r"other settings \(mixture, seq_len differ\)"):
        run(
            PrepareConfig(
                inputs=("corpus",),
                out="out",
                tokenizer="tok",
                seq_len=256,
                part_bytes=2048,
                workers=1,
            )
        )


# ---------------------------------------------------------------------------- logs


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("stream, drawn", [(io.StringIO, False), (_Terminal, True)])
def test_progress_bars_are_drawn_only_on_a_terminal(monkeypatch, stream, drawn):
    err = stream()
    monkeypatch.setattr(sys, "stderr", err)
    assert sorted(LocalExecutor(1).map(abs, [-1, -2, -3], desc="work", progress=True)) == [1, 2, 3]
    assert ("work" in err.getvalue()) == drawn
    assert ("\r" in err.getvalue()) == drawn
    assert list(progress_bar(range(3), desc="loop")) == [0, 1, 2]
    assert ("loop" in err.getvalue()) == drawn


def test_resume_truncates_the_training_log_to_the_checkpoint(small):
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from longmix.train.loop import TrainConfig, read_log, train

    run(small_config(small, "data"))
    transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=512,
        max_position_embeddings=64,
    ).save_pretrained(small / "cfg")

    def settings(name: str, **kw) -> TrainConfig:
        return TrainConfig(
            data=str(small / "data"),
            out=str(small / name),
            init_config=str(small / "cfg" / "config.json"),
            seq_len=64,
            batch_tokens=128,
            steps=3,
            save_every=2,
            lr=3e-3,
            progress=False,
            save_dtype="float32",
            **kw,
        )

    train(settings("straight"))
    train(settings("killed"))
    # A SIGKILL after step 3 was logged but before its checkpoint, halfway through a line:
    killed = small / "killed"
    shutil.rmtree(killed / "checkpoints" / "step-000003")
    shutil.rmtree(killed / "model")
    with open(killed / "log.jsonl", "a") as log:
        log.write('{"step": 4, "lo')
    train(settings("killed", resume=True))
    lines = (killed / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]
    assert [r["loss"] for r in read_log(killed / "log.jsonl")] == [
        r["loss"] for r in read_log(small / "straight" / "log.jsonl")
    ]


def test_errors_raised_in_workers_stay_one_clear_line(tmp_path):
    def fail(task):
        raise OutputError(f"cannot write {task}: No space left on device")

    with pytest.raises(OutputError, match="cannot write x: No space"):
        list(LocalExecutor(1).map(fail, ["x"], progress=False))
    assert issubclass(OutputError, LongmixError) and issubclass(FolderLockedError, LongmixError)


# ---------------------------------------------------------------------------- model configs


@pytest.mark.parametrize(
    "damage, match",
    [
        ("missing", "not found: give a HF model folder|neither a preset"),
        ("broken", "is not valid JSON"),
        ("no-type", "has no model_type"),
        ("unreadable", "cannot read .*Permission denied"),
    ],
)
def test_a_bad_model_config_is_one_line_in_plan_and_train(
    small, capsys, monkeypatch, damage, match
):
    from longmix.train import shape

    config = small / "cfg" / "config.json"
    config.parent.mkdir()
    if damage == "broken":
        config.write_text('{"model_type": "llama", ')
    elif damage == "no-type":
        config.write_text('{"hidden_size": 32}')
    elif damage == "unreadable":
        config.write_text('{"model_type": "llama"}')
        real_read = Path.read_text

        def denied(self, *args, **kwargs):
            if self == config:
                raise PermissionError(errno.EACCES, "Permission denied", str(self))
            return real_read(self, *args, **kwargs)

        monkeypatch.setattr(shape.Path, "read_text", denied)
    line = one_line_error(capsys, ["plan", "--model", str(config)])
    assert str(config) in line
    assert re.search(match, line), line
    run(small_config(small, "data"))
    line = one_line_error(
        capsys,
        ["train", "--data", str(small / "data"), "--out", str(small / "run"), "--steps", "1"]
        + ["--seq-len", "64", "--batch-tokens", "128", "--init-config", str(config)],
    )
    assert str(config) in line and not (small / "run").exists()


def test_plan_names_an_unknown_model_and_refuses_impossible_runs(tmp_path, capsys):
    line = one_line_error(capsys, ["plan", "--model", str(tmp_path / "nowhere")])
    assert "neither a preset (llama2-7b" in line
    for option, value, match in [
        ("--seq-len", "0", "--seq-len 0: must be positive"),
        ("--gpus", "0", "--gpus 0: must be positive"),
        ("--context-parallel", "3", "--gpus 8 is not a multiple of --context-parallel 3"),
        ("--mfu", "40", "--mfu 40.0: must be within 0..1"),
    ]:
        assert match in one_line_error(capsys, ["plan", "--model", "llama-1b", option, value])


def test_plan_reads_a_config_as_training_does(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    from longmix.train.plan import model_shape
    from longmix.train.shape import ModelShape

    config = transformers.LlamaConfig(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=300,
        tie_word_embeddings=True,
    )
    config.save_pretrained(tmp_path)
    assert model_shape(str(tmp_path)) == (ModelShape.of(config), True)
    assert model_shape(str(tmp_path / "config.json"))[0].kv_heads == 2
    assert main(["plan", "--model", str(tmp_path), "--seq-len", "4K", "--gpus", "1"]) == 0
    assert "fits in" in capsys.readouterr().out


# ---------------------------------------------------------------------------- executors


def _writers(folder: Path, last: str) -> list[tuple[str, str]]:
    return [
        (str(folder / "slow-1"), "slow"),
        (str(folder / "slow-2"), "slow"),
        (str(folder / last), last),
    ]


def _stopped(folder: Path) -> None:
    """Every worker that was writing is gone, and so are its temporaries and outputs."""
    import multiprocessing

    assert multiprocessing.active_children() == []
    pids = [int(p.read_text()) for p in folder.glob("*.pid")]
    assert len(pids) == 2
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert sorted(p.name for p in folder.iterdir()) == ["slow-1.pid", "slow-2.pid"]


def test_a_failing_worker_stops_the_others_and_is_one_line_naming_its_task(tmp_path):
    from executor_tasks import write_slowly

    with pytest.raises(LongmixError) as caught:
        list(LocalExecutor(3).map(write_slowly, _writers(tmp_path, "bad"), progress=False))
    message = str(caught.value)
    assert message.startswith("task ") and str(tmp_path / "bad") in message
    assert "ValueError: a record the task cannot read" in message and "\n" not in message
    _stopped(tmp_path)


def test_ctrl_c_while_workers_write_stops_them_and_leaves_no_temporaries(tmp_path):
    from executor_tasks import write_slowly

    def consume() -> None:  # as prepare does: a loop over the results, not a stored iterator
        for _ in LocalExecutor(3).map(write_slowly, _writers(tmp_path, "fast"), progress=False):
            raise KeyboardInterrupt  # the user's Ctrl-C, at the first result

    with pytest.raises(KeyboardInterrupt):
        consume()
    _stopped(tmp_path)


# ---------------------------------------------------------------------------- Ctrl-C


def test_sigint_during_prepare_exits_130_in_one_line_and_a_rerun_completes_identically(small):
    import signal

    reference = small / "reference"
    run(small_config(small, reference))
    out = small / "out"
    command = [sys.executable, "-m", "longmix", "prepare", str(small / "corpus")]
    command += ["--out", str(out), "--tokenizer", str(small / "tok"), "--seq-len", "128"]
    command += ["--strategy", "per-source", "--long-threshold", "100", "--part-size", "2048"]
    command += ["--workers", "2", "--quiet"]
    env = {**os.environ, "PYTHONPATH": SRC}
    child = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in child.stderr:  # interrupt once tokenization begins (worker processes start)
        lines.append(line)
        if "shards from" in line:
            child.send_signal(signal.SIGINT)
            break
    rest = child.stderr.read()
    assert child.wait(timeout=60) == 130, rest
    assert rest.strip().splitlines() == [
        "longmix prepare: interrupted; rerun the same command to resume"
    ]
    assert not (out / "manifest.json").exists() and not list(out.rglob("*.tmp"))
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert tree_digest(out) == tree_digest(reference)


# ---------------------------------------------------------------------------- training outputs


def _tiny_run(small: Path, name: str, **kw):
    transformers = pytest.importorskip("transformers")
    from longmix.train.loop import TrainConfig

    if not (small / "data" / "manifest.json").exists():
        run(small_config(small, "data"))
    if not (small / "cfg" / "config.json").exists():
        transformers.LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            vocab_size=512,
            max_position_embeddings=64,
        ).save_pretrained(small / "cfg")
    settings = dict(seq_len=64, batch_tokens=128, steps=2, save_every=1, lr=3e-3)
    return TrainConfig(
        data=str(small / "data"),
        out=str(small / name),
        init_config=str(small / "cfg" / "config.json"),
        save_dtype="float32",
        **{**settings, "progress": False, **kw},
    )


def test_a_failed_model_save_leaves_no_folder_that_looks_complete(small, monkeypatch):
    from longmix.train import checkpoint
    from longmix.train.loop import train

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_tokenizer", full_disk)  # after the weights are written
    with pytest.raises(OutputError, match=r"cannot write .*run/model: No space left on device"):
        train(_tiny_run(small, "run"))
    run_dir = small / "run"
    assert not (run_dir / "model").exists() and not (run_dir / "model.tmp").exists()
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step-000001", "step-000002"]
    monkeypatch.undo()
    train(_tiny_run(small, "run", resume=True))
    saved = {p.name for p in (run_dir / "model").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= saved
    assert not list(run_dir.rglob("*.tmp"))


def test_a_checkpoint_without_its_trainer_record_is_not_resumed_from(small):
    from longmix.train.checkpoint import latest_checkpoint
    from longmix.train.loop import train

    train(_tiny_run(small, "run"))
    (small / "run" / "checkpoints" / "step-000002" / "trainer.json").unlink()  # a partial copy
    assert latest_checkpoint(small / "run").name == "step-000001"


def test_training_draws_no_progress_bars_into_a_log_file(small, capsys):
    from longmix.train.loop import train

    train(_tiny_run(small, "run", progress=True))
    err = capsys.readouterr().err
    assert "\r" not in err and "Writing model shards" not in err and "train:" not in err


def test_every_progress_bar_is_the_terminal_aware_one():
    """prepare, pack, eval and train all draw through ``progress_bar`` (off in log files)."""
    package = Path(SRC) / "longmix"
    direct = [
        str(p.relative_to(package))
        for p in package.rglob("*.py")
        if "tqdm" in p.read_text() and p.name != "executor.py"
    ]
    assert direct == []


# ---------------------------------------------------------------------------- opening a folder


def test_opening_a_damaged_or_foreign_folder_is_one_line_naming_the_file(small, capsys):
    from longmix.data.store import PackedDataset

    out = small / "out"
    run(small_config(small))
    assert len(PackedDataset(out)) > 0
    export = ["export-hf", str(out), str(small / "hf")]
    assert "not a prepared folder (no manifest.json): give the --out folder" in one_line_error(
        capsys, ["export-hf", str(small / "corpus"), str(small / "hf")]
    )
    assert "is not a folder" in one_line_error(capsys, ["export-hf", str(small / "no"), "x"])

    part = out / "tokens" / "part-00001.bin"
    intact = part.read_bytes()
    part.write_bytes(intact[:100])
    with pytest.raises(InvalidInputError, match="the prepared folder is damaged") as caught:
        PackedDataset(out)
    assert str(caught.value).startswith(f"{part}: 100 bytes, expected ")
    assert f"{part}: 100 bytes" in one_line_error(capsys, export)
    part.write_bytes(intact)

    index = out / "index" / "span_doc_key.npy"
    index.write_bytes(index.read_bytes()[:-8])
    assert f"{index}: " in one_line_error(capsys, export)
    index.unlink()
    assert f"{index}: missing" in one_line_error(capsys, export)
    (out / "manifest.json").write_text('{"format_version": ')
    assert "manifest.json is unreadable" in one_line_error(capsys, export)
    (out / "manifest.json").unlink()
    assert "unfinished prepared folder" in one_line_error(capsys, export)
    assert not (small / "hf").exists()


# ---------------------------------------------------------------------------- tables without text


@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_a_table_without_the_text_column_lists_its_columns_and_suggests_text_field(tmp_path, fmt):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "body": ["w1 w2 w3 " * 20, "w4 w5 " * 30, "w6 " * 50],
            "meta": [{"redpajama_set_name": "RedPajamaBook"}] * 3,
            "id": [1, 2, 3],
        }
    )
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    if fmt == "parquet":
        pq.write_table(table, corpus / "a.parquet")
    else:
        with (
            pa.OSFile(str(corpus / "a.arrow"), "wb") as sink,
            pa.ipc.new_stream(sink, table.schema) as writer,
        ):
            writer.write_table(table)
    make_word_tokenizer(tmp_path / "tok")
    with pytest.raises(PrepareError) as caught:
        run(small_config(tmp_path))
    message = str(caught.value)
    assert "3 read, all rejected: missing text ×3" in message
    assert f"corpus/a.{fmt}:1: no field 'text'; fields: body, meta, id" in message
    assert message.endswith("no 'text' field but body, meta, id: pass --text-field body")
    stats = run(small_config(tmp_path, "fixed", reader=ReaderOptions(text_field="body")))
    assert stats["documents"]["used"] == 3


# ---------------------------------------------------------------------------- study files

_STUDY = "out: s\ncorpus: [corpus]\nstrategies: [original]\n"


@pytest.mark.parametrize(
    "text, match",
    [
        (
            "out: 5\ncorpus: [c]\nstrategies: [original]\n",
            r"st.yaml: out: expected text, found int 5",
        ),
        ("out: s\ncorpus: {a: 1}\nstrategies: [original]\n", r"st.yaml: corpus: expected text"),
        (
            "out: s\ncorpus: [c, 2]\nstrategies: [original]\n",
            r"st.yaml: corpus\[1\]: expected text",
        ),
        (
            "out: s\ncorpus: [c]\nstrategies: [{upsample: book}]\n",
            r"strategies\[0\]: a strategy mapping needs strategy:.*in quotes",
        ),
        ("out: s\ncorpus: [c]\nstrategies: []\n", r"st.yaml: strategies: give at least one"),
        (_STUDY + "tokenizer: [a]\n", r"st.yaml: tokenizer: expected text, found list"),
        (_STUDY + "validation: {a: 1}\n", r"st.yaml: validation: expected text"),
        (_STUDY + "eval: {base_model: [1]}\n", r"st.yaml: eval.base_model: expected text"),
        (_STUDY + "prepare: {seq_len: [1]}\n", r"st.yaml: prepare: seq_len: \[1\] is not a length"),
        (_STUDY + "train: {lr: fast}\n", r"st.yaml: train: lr: 'fast' is not a number"),
        (_STUDY + "train: [1]\n", r"st.yaml: train must be a mapping"),
        (_STUDY + "prepare: {tokens: 0}\n", r"tokens: must be positive"),
        ("out: s\ncorpus: [c\n", r"st.yaml: not valid YAML at line"),
    ],
)
def test_wrong_types_in_a_study_file_are_one_line_naming_the_key(tmp_path, capsys, text, match):
    (tmp_path / "st.yaml").write_text(text)
    line = one_line_error(capsys, ["study", str(tmp_path / "st.yaml"), "--status"])
    assert re.search(match, line), line


@pytest.mark.parametrize(
    "text, match",
    [
        ("steps: [1, 2\n", r"cfg.yaml: not valid YAML at line"),
        ("steps: many\n", r"cfg.yaml: steps: 'many' is not an integer"),
        ("lr: {a: 1}\n", r"cfg.yaml: lr: .* is not a number"),
        ("- steps\n", r"cfg.yaml: expected a mapping of settings, found list"),
        ("doc_mask: perhaps\n", r"cfg.yaml: doc_mask"),
    ],
)
def test_a_broken_or_mistyped_train_config_is_one_line(tmp_path, capsys, text, match):
    (tmp_path / "cfg.yaml").write_text(text)
    line = one_line_error(
        capsys, ["train", "--config", str(tmp_path / "cfg.yaml"), "--data", "d", "--out", "o"]
    )
    assert re.search(match, line), line

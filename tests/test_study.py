"""`longmix study`: two strategies end to end on CPU, then a rerun that skips every step."""

from __future__ import annotations

import json

import pytest
import yaml

pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from longmix.cli import main  # noqa: E402
from longmix.data.corpus import sample_corpus_dir  # noqa: E402
from longmix.data.tokenize import builtin_tokenizer_dir  # noqa: E402


def _write_study(tmp_path, strategies=("original", "per-source"), variants=None):
    base = tmp_path / "base"
    config = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=49152,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(base)
    (base / "tokenizer.json").write_bytes((builtin_tokenizer_dir() / "tokenizer.json").read_bytes())
    study = {
        "out": str(tmp_path / "study"),
        "corpus": [str(sample_corpus_dir())],
        "validation": [str(sample_corpus_dir())],
        "strategies": list(strategies),
        "prepare": {
            "tokens": "60K",
            "validation_tokens": "20K",
            "seq_len": "1K",
            "long_threshold": "2K",
            "workers": 1,
        },
        "train": {
            "model": str(base),
            "seq_len": 512,
            "rope_theta": 1e5,
            "lr": 1e-3,
            "batch_tokens": 1024,
            "steps": 2,
            "progress": False,
            "save_dtype": "float32",
        },
        "eval": {
            "base_model": str(base),
            "needle": {
                "protocol": "longmix",
                "lengths": "256,512",
                "depths": "0,100",
                "generate_tokens": 0,
            },
            "ruler": {"tasks": ["niah_single"], "lengths": "512", "samples": 1},
            "loss": {"sequences": 2},
            **(variants or {}),
        },
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def test_study_runs_every_step_and_resumes(tmp_path, capsys):
    # a variant: the needle a second time with other settings, into its own folder and section
    variant = {"protocol": "longmix", "lengths": "256", "depths": "50", "generate_tokens": 0}
    path = _write_study(tmp_path, variants={"needle@short": variant})
    assert main(["study", str(path), "--quiet"]) == 0
    out = tmp_path / "study"
    for strategy in ("original", "per-source"):
        assert (out / "data" / strategy / "manifest.json").is_file()
        assert (out / "runs" / strategy / "model" / "model.safetensors").is_file()
        for kind in ("needle", "ruler", "loss", "needle@short"):
            assert (out / "eval" / strategy / kind / "summary.json").is_file()
        short = json.loads((out / "eval" / strategy / "needle@short" / "summary.json").read_text())
        assert short["cells"] == 1  # its own settings: one length, one depth
    report = (out / "report" / "report.md").read_text()
    assert "per-source" in report and "base model" in report and "Loss, context 0-4K" in report
    assert "## Needle in a haystack (needle@short)" in report
    assert "](needle@short/needle_heatmaps.png)" in report
    assert (out / "report" / "needle@short" / "needle_heatmaps.png").is_file()
    # the paper's claims tested on what the study has (one seed: the table says so)
    assert "## Verdicts on the paper's claims" in report
    verdicts = (out / "report" / "verdicts.md").read_text()
    assert "One seed per arm: the bootstrap runs over units only" in verdicts
    assert "no cut arm in the study" in verdicts
    data = json.loads((out / "report" / "verdicts.json").read_text())
    assert data["baseline"] == "original" and data["train_length"] == 512
    assert data["base_model"] == str(out / "eval" / "base")
    assert (out / "eval" / "per-source" / "loss" / "results.jsonl").is_file()
    capsys.readouterr()
    assert main(["study", str(path), "--status"]) == 0
    status = capsys.readouterr().out.splitlines()
    assert status[0].split()[:3] == ["strategy", "prepared", "trained"]
    assert status[1].split()[:3] == ["original", "yes", "done"] and status[-1].split()[0] == "base"
    assert main(["study", str(path), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert (
        "train original: done" in err
        and "eval per-source: done" in err
        and "data/per-source is already complete" in err
    )


def test_study_prepare_step_logs_as_longmix_prepare_does(tmp_path, capsys):
    corpus = next(sample_corpus_dir().rglob("*.jsonl.zst"))  # one file of the sample: quick
    study = {
        "out": str(tmp_path / "study"),
        "corpus": [str(corpus)],
        "strategies": ["per-source"],
        "prepare": {"seq_len": "1K", "long_threshold": "512", "workers": 1},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    data = tmp_path / "study" / "data" / "per-source"
    assert main(["study", str(path), "--steps", "prepare", "--quiet"]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == f"prepare per-source -> {data}" and lines[1].startswith("1 files:")
    assert lines[3].startswith("domain") and lines[-1].startswith("wrote")
    cli = ["prepare", str(corpus), "--out", str(tmp_path / "p"), "--quiet"]
    assert main([*cli, "--seq-len", "1K", "--long-threshold", "512", "--workers", "1"]) == 0
    cli_lines = capsys.readouterr().err.splitlines()
    assert cli_lines[0] == f"prepare per-source -> {tmp_path / 'p'}"
    assert cli_lines[1:-1] == lines[1:-1]  # the same account, table and notes
    assert main(["study", str(path), "--steps", "prepare", "--quiet"]) == 0
    assert capsys.readouterr().err.splitlines() == [
        f"prepare per-source -> {data}",
        f"{data} is already complete (every file checked); delete it or pass --overwrite to redo it",
    ]


def test_study_file_errors(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("out: x\nstrategies: [original]\n")
    assert main(["study", str(path)]) == 2
    assert "missing corpus" in capsys.readouterr().err


def test_study_on_devices_runs_one_job_per_device(tmp_path, capsys):
    path = _write_study(tmp_path, ("original", "per-source", "global"))
    assert (
        main(["study", str(path), "--devices", "0,1", "--strategies", "original,global,base"]) == 0
    )
    out = tmp_path / "study"
    err = capsys.readouterr().err
    # two devices, three jobs: the third starts when one finishes
    assert (
        err.count("started on device") == 3
        and "original: done on device" in err
        and "base: done on device" in err
    )
    for job in ("original", "global", "base"):
        assert (out / "eval" / job / "needle" / "summary.json").is_file()
        assert (out / "logs" / f"{job}.log").is_file()
    assert not (out / "runs" / "per-source").exists()
    assert main(["study", str(path), "--status"]) == 0
    per_source = next(
        line for line in capsys.readouterr().out.splitlines() if line.startswith("per-source")
    )
    assert per_source.split()[1:4] == [
        "no",
        "no",
        "–",
    ]  # not selected: neither prepared nor trained
    report = (out / "report" / "report.md").read_text()
    assert "global" in report and "base model" in report


def test_study_names_unknown_strategies(tmp_path, capsys):
    path = _write_study(tmp_path)
    assert main(["study", str(path), "--strategies", "per-sauce"]) == 2
    assert "unknown strategies per-sauce" in capsys.readouterr().err


def test_study_on_devices_names_a_failed_job_and_its_log(tmp_path, capsys):
    path = _write_study(tmp_path)
    # training without prepared data fails in its subprocess: the study says which job and where its log is
    assert (
        main(
            ["study", str(path), "--devices", "0", "--steps", "train", "--strategies", "per-source"]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "per-source: FAILED on device 0" in err and "failed: per-source" in err
    log = (tmp_path / "study" / "logs" / "per-source.log").read_text()
    assert "per-source" in log and "error" in log.lower()


def _arms_study(tmp_path, **extra):
    corpus = next(sample_corpus_dir().rglob("*.jsonl.zst"))
    study = {
        "out": str(tmp_path / "study"),
        "corpus": [str(corpus)],
        "strategies": [
            "per-source",
            {"strategy": "per-source", "short_keep": 0.1, "length_estimate": "chars"},
            {"name": "fu", "strategy": "global", "short_keep": 0.1},
        ],
        "prepare": {"seq_len": "1K", "long_threshold": "512", "workers": 1},
        "train": {"model": "m", "seq_len": 512},
        **extra,
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def test_study_strategy_variants_and_seeds_make_one_run_each(tmp_path):
    from longmix.study import Study

    study = Study.load(_arms_study(tmp_path, seeds=[0, 3]))
    assert study.strategies == [
        "per-source",
        "per-source --short-keep 0.1 --length-estimate chars",
        "fu",
    ]
    runs = study.runs()
    assert [r.slug for r in runs] == [
        "per-source.seed0",
        "per-source.seed3",
        "per-source-short-keep-0.1-length-estimate-chars.seed0",
        "per-source-short-keep-0.1-length-estimate-chars.seed3",
        "fu.seed0",
        "fu.seed3",
    ]
    assert runs[5].label == "fu (seed 3)"
    assert [r.slug for r in study.runs(["fu"], [3])] == ["fu.seed3"]
    settings = study.prepare_settings(runs[3], ["x"], "out")
    assert settings.mixture.short_keep == 0.1 and settings.mixture.seed == 3
    assert settings.mixture.length_estimate == "chars"
    assert study.prepare_settings(runs[0], ["x"], "out").mixture.short_keep is None
    held_out = study.prepare_settings(None, ["x"], "out", validation=True)
    assert held_out.mixture.seed == 0 and held_out.mixture.strategy == "original"
    with pytest.raises(Exception, match="unknown seeds 7"):
        study.runs(seeds=[7])


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"seeds": [0, 0]}, "seed is listed twice"),
        ({"eval": {"nedle@fu": {}}}, "'nedle' is not an evaluation"),
        ({"eval": {"needle@fu": {"protocl": "fu"}}}, "protocl"),
        ({"seeds": ["a"]}, "integer seeds"),
        ({"seeds": [0], "train": {"model": "m", "seed": 1}}, "train.seed is set by seeds"),
        ({"strategies": ["original", "original"]}, "'original' twice"),
        (
            {"strategies": [{"strategy": "per-source", "seed": 2}]},
            r"strategies\[0\].seed is set by the study",
        ),
        (
            {"strategies": [{"short_keep": 0.1}]},
            r"strategies\[0\]: a strategy mapping needs strategy:",
        ),
        ({"strategies": [{"strategy": "per-source", "short_kep": 0.1}]}, "short_kep"),
    ],
)
def test_study_variants_and_seeds_fail_on_load_naming_the_key(tmp_path, extra, message):
    from longmix.errors import LongmixError
    from longmix.study import Study

    with pytest.raises(LongmixError, match=message):
        Study.load(_arms_study(tmp_path, **extra))


def test_study_seeds_change_the_sample_and_keep_the_held_out_data(tmp_path, capsys):
    path = _arms_study(
        tmp_path, seeds=[0, 1], validation=[str(next(sample_corpus_dir().rglob("*.jsonl.zst")))]
    )
    assert (
        main(["study", str(path), "--steps", "prepare", "--strategies", "per-source", "--quiet"])
        == 0
    )
    data = tmp_path / "study" / "data"
    assert sorted(p.name for p in data.iterdir()) == [
        "per-source.seed0",
        "per-source.seed1",
        "validation",
    ]
    first, second = ((data / f"per-source.seed{k}" / "manifest.json").read_text() for k in (0, 1))
    assert first != second  # another seed: another sample and order of the same corpus
    assert main(["study", str(path), "--status"]) == 0
    rows = [line.split()[0:4] for line in capsys.readouterr().out.splitlines()[1:]]
    assert ["per-source", "(seed", "1)", "yes"] in rows


@pytest.mark.parametrize("name", ["study-smollm2.yaml", "study-fu-2024.yaml"])
def test_shipped_study_files_load(name):
    from pathlib import Path

    from longmix.study import Study

    study = Study.load(Path(__file__).parent.parent / "examples" / name)
    runs = study.runs()
    assert len(runs) == len(study.strategies) * max(1, len(study.seeds))
    assert len({run.slug for run in runs}) == len(runs)  # one folder per run


def test_study_report_gives_verdicts_over_seeds(tmp_path):
    """The report step alone, on evaluation folders of two seeds per strategy (no training)."""
    from test_compare import write_run

    from longmix.study import Study, run_study

    study_file = {
        "out": str(tmp_path / "study"),
        "corpus": [str(sample_corpus_dir())],
        "strategies": ["per-source", "cut:4K", {"name": "books", "strategy": "upsample:book"}],
        "seeds": [0, 1],
        "prepare": {"seq_len": "8K"},
        "eval": {
            "base_model": "base-model",
            "needle@fu": {"protocol": "fu", "lengths": "1K,4K,8K"},
            "loss": {"sequences": 20},
        },
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study_file, sort_keys=False))
    study = Study.load(path)
    arms = {"per-source": "per-source", "cut:4K": "cut:4K", "books": "upsample:book"}
    for i, run in enumerate(study.runs()):
        write_run(study.out / "eval" / run.slug, arms[run.arm.name], i)
    write_run(study.out / "eval" / "base", None, 99)
    run_study(study, ("report",), log=lambda message: None)
    report = (study.out / "report" / "report.md").read_text()
    assert "## Verdicts on the paper's claims" in report
    data = json.loads((study.out / "report" / "verdicts.json").read_text())
    assert data["groups"]["per-source"] == [
        str(study.out / "eval" / "per-source.seed0"),
        str(study.out / "eval" / "per-source.seed1"),
    ]
    assert data["train_length"] == 8192  # no train.seq_len: the prepared length
    rows = {(r["claim"], r["metric"]): r for r in data["verdicts"]}
    cut = rows[("b", "needle contains (protocol fu, generation), all cells")]
    assert cut["comparison"] == "cut:4K − per-source" and cut["seeds"] == [2, 2]
    assert cut["verdict"] == "holds"
    # the upsampled arm is found by its strategy, and its domain read from it
    own = rows[("c", "loss 4K-max (book, token-weighted)")]
    assert own["comparison"] == "books − per-source" and own["verdict"] == "holds"
    assert "Seeds (A, B): 2, 2" in (study.out / "report" / "verdicts.md").read_text()

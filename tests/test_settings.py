"""The settings model: one declaration per field gives the CLI, YAML, study sections and checks."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import pytest
import yaml

from longmix.cli import build_parser, main
from longmix.data.mixture import MixtureConfig
from longmix.data.prepare import PrepareConfig
from longmix.eval.registry import EvalTarget, evaluations
from longmix.settings import (
    SettingsError,
    add_arguments,
    from_args,
    from_mapping,
    read_yaml_mapping,
    setting,
    specs,
    to_mapping,
)
from longmix.study import Study, StudyError
from longmix.train.config import TrainConfig, TrainError


@dataclass(frozen=True)
class Inner:
    width: int = setting(8, unit="length", help="a width")


@dataclass(frozen=True)
class Outer:
    name: str = setting(help="required text")
    rate: float = setting(
        1e-3, check=lambda v: None if v > 0 else "must be positive", help="a rate"
    )
    budget: int = setting(0, unit="count", help="a budget")
    flag: bool = setting(False, help="a switch")
    kind: str = setting("a", choices=("a", "b"), help="a choice")
    items: tuple[str, ...] = setting((), help="a list")
    maybe: int | None = setting(None, help="an optional number")
    inner: Inner = field(default_factory=Inner)


def test_values_are_read_for_what_they_mean():
    got = from_mapping(
        Outer,
        {
            "name": "x",
            "rate": "2e-5",
            "budget": "5B",
            "flag": "yes",
            "items": "a, b,c",
            "width": "4K",
            "maybe": "1e3",
        },
    )
    assert got == Outer("x", 2e-5, 5_000_000_000, True, "a", ("a", "b", "c"), 1000, Inner(4096))
    assert from_mapping(Outer, {"name": "x", "maybe": "none", "items": ["p", "q"]}).items == (
        "p",
        "q",
    )
    assert from_mapping(Outer, to_mapping(got), "round trip") == got


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "x", "rtae": 1}, "unknown settings rtae; did you mean 'rate'"),
        ({"name": "x", "rate": "fast"}, "rate: 'fast' is not a number"),
        ({"name": "x", "rate": -1}, "rate: must be positive"),
        ({"name": "x", "budget": "lots"}, "budget: 'lots' is not a count"),
        ({"name": "x", "flag": "maybe"}, "flag: 'maybe' is not true or false"),
        ({"name": "x", "kind": "c"}, "kind: 'c' is not one of a, b"),
        ({"name": "x", "maybe": 1.5}, "maybe: 1.5 is not an integer"),
        ({"name": "x", "flag": 1, "width": True}, "width: True is not a length"),
        ({}, "name is required"),
    ],
)
def test_bad_values_fail_naming_the_setting(data, message):
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        from_mapping(Outer, data, "test")


def test_nested_settings_are_flat_options_with_help_and_yaml_under_them(tmp_path):
    parser = argparse.ArgumentParser()
    add_arguments(parser, Outer)
    help_text = parser.format_help()
    assert (
        "--width" in help_text and "a width (default: 8)" in help_text and "--no-flag" in help_text
    )
    config = tmp_path / "c.yaml"
    config.write_text("name: from-yaml\nrate: 1e-4\nwidth: 2K\n")
    args = parser.parse_args(["--rate", "3e-4"])
    got = from_args(Outer, args, config)
    assert (got.name, got.rate, got.inner.width) == (
        "from-yaml",
        3e-4,
        2048,
    )  # command line over the file


def test_every_option_of_every_settings_command_is_documented():
    for cls in (
        PrepareConfig,
        TrainConfig,
        EvalTarget,
        *(e.settings for e in evaluations().values()),
    ):
        for spec in specs(cls):
            assert spec.help.strip(), f"{cls.__name__}.{spec.name} has no help"
    train_help = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    assert "the paper's constant learning rate (default: 2e-05)" in train_help


def test_yaml_errors_are_one_line(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("lr: [1, 2\n")
    with pytest.raises(SettingsError, match="not valid YAML at line"):
        read_yaml_mapping(broken)
    with pytest.raises(SettingsError, match="cannot read"):
        read_yaml_mapping(tmp_path / "missing.yaml")
    broken.write_text("- a list\n")
    with pytest.raises(SettingsError, match="expected a mapping"):
        read_yaml_mapping(broken)


def test_train_yaml_reads_scientific_notation_and_units(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "data: d\nout: o\nlr: 2e-5\nrope_theta: 1e6\nbatch_tokens: 4M\nseq_len: 80K\n"
        "activation_checkpointing: false\n"
    )
    config = TrainConfig.from_yaml(path)
    assert (config.lr, config.rope_theta, config.batch_tokens, config.seq_len) == (
        2e-5,
        1e6,
        4 * 2**20,
        81920,
    )
    assert config.activation_checkpointing == 0
    path.write_text("lr: high\n")
    with pytest.raises(TrainError, match="lr: 'high' is not a number"):
        TrainConfig.from_yaml(path)


def test_counts_read_scientific_notation_on_the_command_line_and_in_yaml(tmp_path):
    parser = argparse.ArgumentParser()
    add_arguments(parser, TrainConfig)
    args = parser.parse_args(["--tokens", "1e6", "--batch-tokens", "2.5e5"])
    config = from_args(TrainConfig, args)
    assert (config.tokens, config.batch_tokens) == (1_000_000, 250_000)
    path = tmp_path / "run.yaml"
    path.write_text("tokens: 1e6\nseq_len: 2.5e5\n")
    assert TrainConfig.from_yaml(path).tokens == 1_000_000
    path.write_text("tokens: 1.5\n")
    with pytest.raises(TrainError, match=r"tokens: 1.5 is not a count .*not a whole number"):
        TrainConfig.from_yaml(path)
    with pytest.raises(SettingsError, match="tokens: '2.5e-1' is not a count"):
        from_mapping(TrainConfig, {"tokens": "2.5e-1"})


@pytest.mark.parametrize("value", ["None", "none", None])
def test_rope_scaling_none_means_no_scaling(tmp_path, value):
    parser = argparse.ArgumentParser()
    add_arguments(parser, TrainConfig)
    if value is not None:
        assert (
            from_args(TrainConfig, parser.parse_args(["--rope-scaling", value])).rope_scaling
            is None
        )
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"rope_scaling": value}))
    assert TrainConfig.from_yaml(path).rope_scaling is None
    assert (
        from_args(TrainConfig, parser.parse_args(["--rope-scaling", "yarn"])).rope_scaling == "yarn"
    )
    with pytest.raises(SettingsError, match="is not one of none, linear, dynamic, yarn"):
        from_args(TrainConfig, parser.parse_args(["--rope-scaling", "lineer"]))


def test_help_shows_defaults_in_the_fields_unit():
    commands = build_parser()._subparsers._group_actions[0].choices
    train_help = " ".join(commands["train"].format_help().split())
    prepare_help = " ".join(commands["prepare"].format_help().split())
    assert "(default: 32K)" in train_help and "accumulation (default: 4M)" in train_help
    assert "(default: 80K)" in prepare_help and "(default: 512M)" in prepare_help
    assert "81920" not in prepare_help.replace("81,920", "") and "4194304" not in train_help


def test_mixture_values_are_refused_before_any_work():
    with pytest.raises(SettingsError, match="long_fraction: must be within 0..1"):
        from_mapping(MixtureConfig, {"long_fraction": 1.5})
    with pytest.raises(SettingsError, match="unknown strategy"):
        from_mapping(MixtureConfig, {"strategy": "upsampel:book"})


def test_cli_one_line_errors_and_option_suggestions(tmp_path, capsys):
    assert (
        main(["prepare", "--sample", "--out", str(tmp_path / "o"), "--long-fraction", "1.5"]) == 2
    )
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "long_fraction: must be within 0..1" in err
    with pytest.raises(SystemExit):
        main(["prepare", "--sample", "--out", str(tmp_path / "o"), "--long-fractoin", "0.3"])
    assert "did you mean --long-fraction?" in capsys.readouterr().err
    assert main(["prepare", "--out", str(tmp_path / "o")]) == 2
    assert "inputs is required (CORPUS)" in capsys.readouterr().err


def _study(tmp_path, **sections) -> str:
    data = {"out": str(tmp_path / "s"), "corpus": ["c"], "strategies": ["original"], **sections}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        (
            {"prepare": {"long_fractoin": 0.3}},
            "unknown settings long_fractoin; did you mean 'long_fraction'",
        ),
        ({"prepare": {"out": "x"}}, "prepare.out is set by the study"),
        ({"train": {"lr": "fast"}}, "lr: 'fast' is not a number"),
        ({"train": {"data": "x"}}, "train.data is set by the study"),
        ({"eval": {"neddle": {}}}, "unknown key 'neddle'; did you mean 'needle'"),
        ({"eval": {"ruler": {"tasks": "niah_single,nope"}}}, "unknown tasks nope"),
        ({"eval": {"needle": {"samples": 3}}}, "unknown settings samples"),
        ({"strategies": ["per-source", "upsampel:book"]}, "unknown strategy"),
    ],
)
def test_study_files_are_checked_when_loaded(tmp_path, sections, message):
    with pytest.raises((StudyError, SettingsError), match=message):
        Study.load(_study(tmp_path, **sections))


def test_study_sections_use_the_commands_settings(tmp_path):
    study = Study.load(
        _study(
            tmp_path,
            strategies=["original", "per-source"],
            prepare={"tokens": "20M", "validation_tokens": "1M", "text_field": "content"},
            train={"lr": "2e-5"},
            eval={"ruler": {"tasks": "niah_single,vt"}, "loss": {}},
        )
    )
    run = next(r for r in study.runs() if r.arm.strategy == "per-source")
    config = study.prepare_settings(run, ["c"], "o")
    assert config.mixture.tokens == 20_000_000 and config.reader.text_field == "content"
    assert config.mixture.strategy == "per-source"
    heldout = study.prepare_settings(None, ["v"], "v", validation=True)
    assert heldout.mixture.tokens == 1_000_000 and heldout.mixture.strategy == "original"
    assert study.eval_settings("ruler", tmp_path).tasks == (
        "niah_single_1",
        "vt",
    )  # earlier names read as RULER's
    assert study.eval_settings("loss", tmp_path / "held").data == str(tmp_path / "held")
    assert study.evaluations() == ["loss", "ruler"]  # the registry's order: quick evaluations first
    assert study.eval_settings("loss", tmp_path).sequences == 64  # one default, the CLI's
    study = Study.load(_study(tmp_path, prepare={"tokens": "1e6", "validation_tokens": "2.5e5"}))
    assert study.prepare_settings(study.runs()[0], ["c"], "o").mixture.tokens == 1_000_000
    assert study.prepare_settings(None, ["v"], "v", validation=True).mixture.tokens == 250_000


def test_registries_reach_cli_and_study():
    parser = build_parser()
    eval_parser = parser._subparsers._group_actions[0].choices["eval"]
    commands = eval_parser._subparsers._group_actions[0].choices
    assert set(evaluations()) <= set(commands) and {
        "needle",
        "ruler",
        "loss",
        "bookqa",
        "mmlu",
    } <= set(commands)
    assert (
        "--data" in commands["mmlu"].format_help() and "--shots" in commands["mmlu"].format_help()
    )


def test_the_report_iterates_over_the_registry(tmp_path, monkeypatch):
    from longmix.eval import registry
    from longmix.eval.report import build_report

    evaluations()  # the built-in evaluations are registered before the toy one
    monkeypatch.setitem(
        registry.EVALUATIONS,
        "toy",
        registry.Evaluation(
            "toy",
            EvalTarget,
            lambda *a: {},
            str,
            "a toy",
            99,
            report=lambda names, results, out: [
                "## Toy",
                *(f"{n}: {s['score']}" for n, s in zip(names, results["toy"]) if s),
            ],
            report_order=5,
            retention=lambda base, other: f"toy {other['score'] - base['score']:+d}",
        ),
    )
    for run, score in (("a", 1), ("b", 3)):
        (tmp_path / run / "toy").mkdir(parents=True)
        (tmp_path / run / "toy" / "summary.json").write_text(f'{{"score": {score}}}')
    text = build_report([tmp_path / "a", tmp_path / "b"], tmp_path / "report")
    assert text.index("## Toy\na: 1\nb: 3") < text.index("## Short-context retention")
    assert text.endswith("- b: toy +2\n\n")

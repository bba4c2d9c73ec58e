"""Optional dependencies: a missing extra is one line naming it, before any work."""

from __future__ import annotations

import importlib.util

import pytest

from longmix.cli import main
from longmix.errors import LongmixError, MissingExtraError, missing_extra, require_extra


def _pretend_missing(monkeypatch, *missing: str) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name.split(".")[0] in missing else real(name, *a),
    )


def test_require_extra_names_the_extra_in_one_line(monkeypatch):
    _pretend_missing(monkeypatch, "ray")
    assert missing_extra("yaml", "dev", "reading YAML") is None
    with pytest.raises(MissingExtraError) as err:
        require_extra(("yaml", "ray"), "ray", "--executor ray")
    assert str(err.value) == "--executor ray needs the 'ray' extra: pip install 'longmix[ray]'"
    assert isinstance(err.value, LongmixError) and isinstance(err.value, ImportError)
    assert "longmix[x]" in missing_extra("no_such_module_anywhere.sub", "x", "p")


def test_ray_executor_missing_fails_when_the_settings_are_read(tmp_path, monkeypatch, capsys):
    _pretend_missing(monkeypatch, "ray")
    args = ["prepare", "--sample", "--out", str(tmp_path / "o"), "--executor", "ray"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("--executor ray needs the 'ray' extra: pip install 'longmix[ray]'")
    assert "\n" not in err and not (tmp_path / "o").exists()


def test_train_without_torch_is_one_line_after_the_settings(tmp_path, monkeypatch, capsys):
    _pretend_missing(monkeypatch, "torch")
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "longmix train needs the 'train' extra: pip install 'longmix[train]'" in err
    assert "\n" not in err
    assert main(["train", "--data", "d", "--out", "o", "--lr", "fast"]) == 2  # settings first
    assert "lr: 'fast' is not a number" in capsys.readouterr().err

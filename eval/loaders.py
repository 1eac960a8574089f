"""Read the local copies of the evaluation sets into the schema of their HuggingFace-hub versions.

Each ``load_<task>`` returns a :class:`datasets.DatasetDict` whose splits and columns are those of
the hub data set lm-eval's official task reads (``baber/piqa``, ``allenai/ai2_arc``, ...), so the
official prompt templates apply unchanged. They are used as lm-eval ``custom_dataset`` callables:
lm-eval calls them with the task's metadata as keyword arguments, of which only ``data_dir`` is
used (see :mod:`linearize.eval.datadir` for how it is resolved).

Only the splits present locally are returned (e.g. PIQA has no ``train`` here).
"""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import datasets

from .datadir import DataFileMissing, data_file, resolve_data_dir


def _jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _lines(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def _dd(**splits: list[dict]) -> datasets.DatasetDict:
    return datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()})


# ----------------------------------------------------------------------------- multiple choice
def load_piqa(data_dir=None, **_) -> datasets.DatasetDict:
    """PIQA validation -> ``baber/piqa`` columns: goal, sol1, sol2, label (int)."""
    docs = _jsonl(data_file("piqa/valid.jsonl", data_dir))
    labels = _lines(data_file("piqa/valid-labels.lst", data_dir))
    if len(docs) != len(labels):
        raise ValueError(f"piqa: {len(docs)} items but {len(labels)} labels")
    rows = [{"goal": d["goal"], "sol1": d["sol1"], "sol2": d["sol2"], "label": int(y)} for d, y in zip(docs, labels)]
    return _dd(validation=rows)


def _ai2_to_hub(d: dict, question_key: str) -> dict:
    """AI2 record (question.stem, question.choices[{text,label}]) -> hub columns."""
    q = d["question"]
    return {
        "id": d["id"],
        question_key: q["stem"],
        "choices": {"text": [c["text"] for c in q["choices"]], "label": [c["label"] for c in q["choices"]]},
        "answerKey": d["answerKey"],
    }


def load_arc(data_dir=None, subset: str = "ARC-Easy", **_) -> datasets.DatasetDict:
    """ARC-Easy / ARC-Challenge -> ``allenai/ai2_arc`` columns: id, question, choices{text,label}, answerKey.

    Splits: train, validation (AI2 Dev), test.
    """
    if subset not in ("ARC-Easy", "ARC-Challenge"):
        raise ValueError(f"unknown ARC subset {subset!r}")
    files = {"train": "Train", "validation": "Dev", "test": "Test"}
    return _dd(**{
        split: [_ai2_to_hub(d, "question") for d in _jsonl(data_file(f"arc/{subset}-{name}.jsonl", data_dir))]
        for split, name in files.items()
    })


def load_openbookqa(data_dir=None, **_) -> datasets.DatasetDict:
    """OpenBookQA main test -> ``allenai/openbookqa`` columns: id, question_stem, choices, answerKey."""
    rows = [_ai2_to_hub(d, "question_stem") for d in _jsonl(data_file("openbookqa/test.jsonl", data_dir))]
    return _dd(test=rows)


def load_hellaswag(data_dir=None, **_) -> datasets.DatasetDict:
    """HellaSwag validation from llama.cpp's 6-lines-an-item text file -> ``Rowan/hellaswag`` columns.

    The file holds ``activity_label + ": " + ctx`` (already cleaned), the gold index and 4 endings.
    The ctx_a / ctx_b boundary is lost, so the whole context goes to ``ctx_a`` and ``ctx_b`` is "":
    lm-eval's ``process_docs`` then yields ``preprocess(activity_label + ": " + ctx)``, i.e. the same
    text except that lm-eval would have capitalised the first letter of ``ctx_b``.
    """
    path = data_file("hellaswag/hellaswag_val_full.txt", data_dir)
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    while lines and lines[-1] == "":
        lines.pop()
    if len(lines) % 6:
        raise ValueError(f"{path}: {len(lines)} lines is not a multiple of 6")
    rows = []
    for i in range(0, len(lines), 6):
        label_ctx, gold, *endings = lines[i : i + 6]
        activity, sep, ctx = label_ctx.partition(": ")
        if not sep:
            activity, ctx = "", label_ctx
        rows.append({
            "ind": i // 6, "activity_label": activity, "ctx_a": ctx, "ctx_b": "", "ctx": ctx,
            "endings": endings, "source_id": "", "split": "val", "split_type": "", "label": gold.strip(),
        })
    return _dd(validation=rows)


def load_winogrande(data_dir=None, **_) -> datasets.DatasetDict:
    """WinoGrande 1.1 dev -> ``allenai/winogrande`` (winogrande_xl) columns: sentence, option1, option2, answer."""
    keys = ("sentence", "option1", "option2", "answer")
    rows = [{k: d[k] for k in keys} for d in _jsonl(data_file("winogrande/dev.jsonl", data_dir))]
    return _dd(validation=rows)


def load_boolq(data_dir=None, **_) -> datasets.DatasetDict:
    """BoolQ validation -> ``aps/super_glue`` boolq columns: question, passage, idx, label (0 = false, 1 = true)."""
    rows = []
    for d in _jsonl(data_file("boolq/val.jsonl", data_dir)):
        label = d["label"]
        label = int(label == "true") if isinstance(label, str) else int(label)
        rows.append({"question": d["question"], "passage": d["passage"], "idx": int(d["idx"]), "label": label})
    return _dd(validation=rows)


def load_copa(data_dir=None, **_) -> datasets.DatasetDict:
    """COPA validation -> ``aps/super_glue`` copa columns: premise, choice1, choice2, question, idx, label."""
    keys = ("premise", "choice1", "choice2", "question", "idx", "label")
    rows = [{k: d[k] for k in keys} for d in _jsonl(data_file("copa/val.jsonl", data_dir))]
    return _dd(validation=rows)


def load_mmlu(data_dir=None, subject: str = "abstract_algebra", **_) -> datasets.DatasetDict:
    """One MMLU subject -> ``cais/mmlu`` columns: question, subject, choices[4], answer (0-3).

    Splits: test (scored), dev (the 5 few-shot examples), validation.
    """
    def read(split: str) -> list[dict]:
        rows = []
        with open(data_file(f"mmlu/{split}/{subject}_{split}.csv", data_dir), encoding="utf-8", newline="") as f:
            for rec in csv.reader(f):
                q, a, b, c, d, ans = rec
                rows.append({"question": q, "subject": subject, "choices": [a, b, c, d], "answer": "ABCD".index(ans.strip())})
        return rows

    return _dd(test=read("test"), dev=read("dev"), validation=read("val"))


# ----------------------------------------------------------------------------- language modelling
def load_lambada_openai(data_dir=None, **_) -> datasets.DatasetDict:
    """LAMBADA (OpenAI detokenised test set) -> ``EleutherAI/lambada_openai`` column: text."""
    rows = [{"text": d["text"]} for d in _jsonl(data_file("lambada_openai/test.jsonl", data_dir))]
    return _dd(test=rows)


_WIKI_TITLE = re.compile(r"^ = [^=].* = $")


def split_wikitext_documents(text: str) -> list[str]:
    """Split a WikiText file into articles at top-level headings (`` = Title = `` lines).

    Returns one string per article, lines kept with their ``\\n``, in the layout of
    ``EleutherAI/wikitext_document_level`` (the heading line starts the page).
    """
    pages: list[list[str]] = []
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        prev_blank = i == 0 or lines[i - 1].strip() == ""
        if _WIKI_TITLE.match(line.rstrip("\n")) and prev_blank:
            pages.append([])
        if not pages:
            pages.append([])
        pages[-1].append(line)
    return ["".join(p) for p in pages if "".join(p).strip()]


def load_wikitext(data_dir=None, **_) -> datasets.DatasetDict:
    """WikiText-2 (word-level tokenised release: ``<unk>``, `` @-@ ``) -> column ``page``, one article a row.

    NOT the raw ``wikitext-2-raw-v1`` lm-eval's ``wikitext`` task reads: perplexities compare teacher
    with student, not with published numbers. Splits: test, validation.
    """
    out = {}
    for split, name in (("test", "test.txt"), ("validation", "valid.txt")):
        text = data_file(f"wikitext-2/{name}", data_dir).read_text(encoding="utf-8")
        out[split] = [{"page": p} for p in split_wikitext_documents(text)]
    return _dd(**out)


def load_text_file(data_dir=None, text_file: str | None = None, chunk_chars: int = 20000, **_) -> datasets.DatasetDict:
    """Any UTF-8 text file -> column ``page``: paragraphs packed into documents of about ``chunk_chars``.

    ``text_file`` comes from task metadata (``TaskManager(metadata={"text_file": ...})``) or the
    environment variable ``LINEARIZE_PPL_FILE``; a relative path is taken relative to the data dir.
    """
    import os

    text_file = text_file or os.environ.get("LINEARIZE_PPL_FILE")
    if not text_file:
        raise ValueError("local_text_ppl needs a text file: metadata text_file=... or $LINEARIZE_PPL_FILE")
    path = Path(text_file).expanduser()
    if not path.is_absolute():
        path = resolve_data_dir(data_dir) / path
    if not path.is_file():
        raise DataFileMissing(f"missing text file {path}")
    docs, cur = [], ""
    for para in re.split(r"\n\s*\n", path.read_text(encoding="utf-8")):
        if cur and len(cur) + len(para) > chunk_chars:
            docs.append(cur)
            cur = ""
        cur = f"{cur}\n\n{para}" if cur else para
    if cur.strip():
        docs.append(cur)
    return _dd(test=[{"page": d} for d in docs])

"""Offline tasks: same rendering as lm-eval's own task definitions, and clear errors on bad input.

Fast (no model): a small copy of the first items of each local file is written to tmp_path.
"""
from pathlib import Path

import pytest
from conftest import head_lines

from linearize.eval.datadir import DataFileMissing, resolve_data_dir
from linearize.eval.loaders import load_piqa, split_wikitext_documents
from linearize.eval.official import official_task
from linearize.eval.suite import SUITE, UnknownTask, check_data, resolve_tasks, task_manager

DATA = resolve_data_dir()
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"no local data at {DATA}")

N = 12  # items per task
MMLU_SUBJECT = "anatomy"


@pytest.fixture(scope="module")
def mini_data(tmp_path_factory) -> Path:
    """The first N items of every file the suite reads (lines; 6 lines an item for HellaSwag)."""
    root = tmp_path_factory.mktemp("data")
    per_item = {"hellaswag/hellaswag_val_full.txt": 6, "wikitext-2/test.txt": 40, "wikitext-2/valid.txt": 40}
    for spec in SUITE.values():
        for rel in spec.files:
            if rel.startswith("mmlu/"):
                continue
            head_lines(DATA / rel, root / rel, N * per_item.get(rel, 1))
    for split in ("test", "dev", "val"):
        rel = f"mmlu/{split}/{MMLU_SUBJECT}_{split}.csv"
        head_lines(DATA / rel, root / rel, N)
    return root


def _requests(task, limit=N):
    task.build_all_requests(limit=limit)
    return [(inst.request_type, inst.arguments) for inst in task.instances]


@pytest.mark.parametrize("short", [s for s in SUITE if s != "mmlu"])
def test_local_task_renders_like_lm_eval(short, mini_data):
    """Contexts and continuations of our local_* task equal those of lm-eval's own task on the same docs.

    HellaSwag: both sides read the same lossy local file (see loaders.load_hellaswag): lm-eval's
    real `hellaswag` would additionally capitalise the first letter of ctx_b, a boundary the local
    file lost (e.g. "...on a roof. he is using" vs lm-eval's "...on a roof. He is using"), and its
    tag clean-up differs slightly; neither can be checked without the original JSONL.
    WikiText: the local file is the tokenised release; both render it through lm-eval's detokenizer.
    """
    ours = task_manager(mini_data).load([SUITE[short].local])["tasks"][SUITE[short].local]
    theirs = official_task(SUITE[short].official, mini_data)
    a, b = _requests(ours), _requests(theirs)
    assert a and a == b
    assert ours.config.metric_list == theirs.config.metric_list or short in ("boolq", "copa", "wikitext")
    assert [m["metric"] for m in ours.config.metric_list] == [m["metric"] for m in theirs.config.metric_list]


def test_local_mmlu_5shot_renders_like_lm_eval(mini_data):
    name = f"local_mmlu_{MMLU_SUBJECT}"
    ours = task_manager(mini_data).load([name])["tasks"][name]
    theirs = official_task(f"mmlu_{MMLU_SUBJECT}", mini_data)
    theirs.set_config("num_fewshot", 5)
    a, b = _requests(ours, 4), _requests(theirs, 4)
    assert a == b
    ctx = a[0][1][0]
    assert ctx.startswith("The following are multiple choice questions (with answers) about anatomy.\n\n")
    assert ctx.count("\nAnswer:") == 6  # 5 shots + the question


def test_hellaswag_known_difference(mini_data):
    """Document the one systematic HellaSwag difference: ctx_b is not capitalised locally."""
    task = official_task("hellaswag", mini_data)
    doc = task.eval_docs[0]
    assert doc["query"] == "Roof shingle removal: A man is sitting on a roof. he"  # lm-eval: "... roof. He"


def test_data_dir_from_env(monkeypatch, mini_data):
    monkeypatch.setenv("LINEARIZE_DATA", str(mini_data))
    assert resolve_data_dir() == mini_data
    assert len(load_piqa()["validation"]) == N


def test_wikitext_split_into_articles():
    text = " \n = A = \n \n x y \n = = Sub = = \n z \n \n = B = \n \n w \n"
    docs = split_wikitext_documents(text)
    assert len(docs) == 2 and docs[0].startswith(" = A = ") and "= = Sub = =" in docs[0] and " = B = " in docs[1]


# ----------------------------------------------------------------------------- bad input
def test_unknown_task_lists_known_ones():
    with pytest.raises(UnknownTask) as e:
        resolve_tasks("piqa,not_a_task")
    msg = str(e.value)
    assert "not_a_task" in msg and all(k in msg for k in ("piqa", "arc_easy", "hellaswag", "mmlu", "wikitext"))
    assert [s.short for s in resolve_tasks("piqa, local_arc_easy")] == ["piqa", "arc_easy"]


def test_missing_data_file_is_named(tmp_path, mini_data):
    (tmp_path / "piqa").mkdir()
    (tmp_path / "piqa" / "valid.jsonl").write_text((mini_data / "piqa" / "valid.jsonl").read_text())
    with pytest.raises(DataFileMissing, match=r"piqa/valid-labels\.lst"):
        check_data(resolve_tasks(["piqa"]), tmp_path)
    with pytest.raises(DataFileMissing, match=r"piqa/valid-labels\.lst"):
        load_piqa(tmp_path)
    with pytest.raises(DataFileMissing, match=r"copa/val\.jsonl"):
        task_manager(tmp_path).load(["local_copa"])


def test_templates_compiled_once_and_render_the_same():
    """linearize.eval installs a compiled-template cache into lm-eval: same text, one compile per template."""
    import lm_eval.utils as lm_utils

    import linearize.eval  # noqa: F401  (installs the cache)

    doc = {"question": "Why?", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "B"}
    templates = ["Question: {{question}}\nAnswer:", "{{choices.label.index(answerKey)}}", "{{choices.text}}"]
    for t in templates:
        assert lm_utils.apply_template(t, doc) == lm_utils.env.from_string(t).render(**doc)
    calls = []
    orig = lm_utils.env.from_string
    lm_utils.env.from_string = lambda s: calls.append(s) or orig(s)
    try:
        fresh = "{{question}} (fresh template {{answerKey}})"
        out = [lm_utils.apply_template(fresh, doc) for _ in range(5)]
    finally:
        lm_utils.env.from_string = orig
    assert out == ["Why? (fresh template B)"] * 5 and calls == [fresh]

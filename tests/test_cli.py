"""python -m linearize convert / generate, and their errors on bad input (nothing half-written)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from linearize.cli import main


@pytest.fixture
def tiny_checkpoint(tmp_path, tiny_llama):
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    d = tmp_path / "tiny"
    tiny_llama.save_pretrained(d)
    vocab = {f"w{i}": i for i in range(211)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0", pad_token="w0", eos_token="w1").save_pretrained(d)
    return d


def test_convert_then_generate(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["convert", "--model", str(tiny_checkpoint), "--method", "lizard", "--window", "8",
               "--softmax-layers", "0", "--out", str(out)])
    assert rc == 0
    cfg = json.load(open(out / "config.json"))
    assert cfg["linearize"]["method"] == "lizard" and cfg["linearize"]["softmax_layers"] == [0]
    assert "new parameters" in capsys.readouterr().out
    assert main(["generate", str(out), "--prompt", "w5 w6 w7", "--max-new-tokens", "5", "--device", "cpu"]) == 0
    assert "tokens/s" in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["--method", "mamba"], "unknown method 'mamba'"),
    (["--method", "lizard", "--window", "0"], "window must be >= 1"),
])
def test_bad_options_fail_before_loading(tiny_checkpoint, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert main(["convert", "--model", str(tiny_checkpoint), *args, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_path_that_is_not_a_checkpoint(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    assert main(["convert", "--model", str(empty), "--method", "lizard", "--out", str(out)]) == 2
    assert "not a checkpoint" in capsys.readouterr().err
    assert not out.exists()


def test_converting_a_converted_checkpoint(tiny_checkpoint, tmp_path, capsys):
    first = tmp_path / "first"
    assert main(["convert", "--model", str(tiny_checkpoint), "--method", "hedgehog", "--out", str(first)]) == 0
    second = tmp_path / "second"
    assert main(["convert", "--model", str(first), "--method", "gsa", "--out", str(second)]) == 2
    assert "already linearized (method 'hedgehog')" in capsys.readouterr().err
    assert not second.exists()
    assert [p for p in os.listdir(tmp_path) if p.startswith(".convert-")] == []


def test_unsupported_architecture(tmp_path, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    d = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50)).save_pretrained(d)
    assert main(["convert", "--model", str(d), "--method", "lizard", "--out", str(tmp_path / "o")]) == 2
    assert "unsupported architecture GPT2LMHeadModel" in capsys.readouterr().err


def test_existing_output_is_not_clobbered(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["convert", "--model", str(tiny_checkpoint), "--method", "lizard", "--out", str(out)]) == 2
    assert (out / "keep.txt").read_text() == "mine"


def test_help_everywhere():
    for cmd in ([], ["convert"], ["generate"]):
        r = subprocess.run([sys.executable, "-m", "linearize", *cmd, "--help"], capture_output=True, text=True)
        assert r.returncode == 0 and "usage" in r.stdout

"""Recipes: YAML <-> dataclasses 1:1, dotted overrides, clear errors (unknown key, types, seq len)."""
import glob
import os

import pytest
import yaml

from linearize.recipes import (
    RecipeError, RunConfig, check_seq_len, from_dict, load_recipe, save_recipe, steps_for,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = sorted(glob.glob(os.path.join(ROOT, "recipes", "*.yaml")))


def test_all_recipes_load_and_round_trip(tmp_path):
    names = {os.path.basename(p) for p in RECIPES}
    assert {"tiny-smoke.yaml", "smollm2-135m-lizard.yaml", "smollm2-135m-hedgehog.yaml",
            "smollm2-135m-gsa.yaml", "smollm2-135m-lizard-retrieval3.yaml",
            "smollm2-135m-lizard-retrieval3-w128.yaml", "llama3-8b-lizard.yaml"} <= names
    for p in RECIPES:
        cfg = load_recipe(p)
        out = tmp_path / os.path.basename(p)
        save_recipe(cfg, str(out))
        assert load_recipe(str(out)) == cfg, p
        # every key of the YAML is a field: the dump has the same keys at every level
        src = yaml.safe_load(open(p))
        dumped = yaml.safe_load(open(out))
        for k, v in src.items():
            assert k in dumped
            if isinstance(v, dict):
                assert set(v) <= set(dumped[k]), (p, k)


def test_smollm2_recipes_fit_20m_tokens():
    for p in RECIPES:
        if "smollm2-135m" not in p:
            continue
        cfg = load_recipe(p)
        total = sum(steps_for(s, cfg.data.seq_len) * s.batch_size * s.grad_accum * cfg.data.seq_len
                    for s in (cfg.distill, cfg.finetune))
        assert total <= 20_000_000, (p, total)


def test_llama3_recipe_has_published_values():
    cfg = load_recipe(os.path.join(ROOT, "recipes", "llama3-8b-lizard.yaml"))
    assert (cfg.linearize.window, cfg.linearize.feature_dim) == (64, 64)
    assert cfg.distill.lr == 1e-2 and cfg.finetune.lr == 1e-4 and cfg.data.seq_len == 1024
    assert (cfg.finetune.lora_r, cfg.finetune.lora_alpha) == (8, 16)
    assert cfg.finetune.lora_targets == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert 2000 < steps_for(cfg.distill, 1024) < 2600  # ~20M tokens


def test_overrides_are_typed():
    cfg = load_recipe(None, ["--distill.lr=1e-3", "--data.seq_len=256", "--eval.tasks=[piqa,arc_easy]",
                             "--finetune.lora_targets=q_proj", "--data.source_weights.wikipedia=2",
                             "--linearize.softmax_layers=[0,1]", "--eval.limit=null", "--distill.tokens=2e7",
                             "--finetune.train_new_params=true", "seed=3",
                             "--distill.mixed_precision=no"])
    assert cfg.distill.mixed_precision == "no"
    assert cfg.distill.lr == 1e-3 and isinstance(cfg.distill.lr, float)
    assert cfg.data.seq_len == 256
    assert cfg.eval.tasks == ["piqa", "arc_easy"]
    assert cfg.finetune.lora_targets == ["q_proj"]
    assert cfg.data.source_weights == {"wikipedia": 2.0}
    assert cfg.linearize.softmax_layers == [0, 1]
    assert cfg.eval.limit is None and cfg.distill.tokens == 20_000_000
    assert cfg.finetune.train_new_params is True and cfg.seed == 3


@pytest.mark.parametrize("override,nearest", [
    ("--distill.lrr=1", "'lr'"),
    ("--distil.lr=1", "'distill'"),
    ("--data.seq_length=5", "'seq_len'"),
    ("--linearize.windw=5", "'window'"),
])
def test_unknown_override_names_nearest(override, nearest):
    with pytest.raises(RecipeError) as e:
        load_recipe(None, [override])
    assert "unknown recipe key" in str(e.value) and nearest in str(e.value)


def test_unknown_yaml_key_names_nearest(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("finetune:\n  lora_rank: 4\n")
    with pytest.raises(RecipeError, match=r"finetune\.'lora_rank'.*did you mean finetune\.'lora_r'"):
        load_recipe(str(p))


def test_bad_values_are_refused():
    with pytest.raises(RecipeError, match="distill.lr: expected a number"):
        load_recipe(None, ["--distill.lr=fast"])
    with pytest.raises(RecipeError, match="did you mean 'bf16'"):
        load_recipe(None, ["--distill.mixed_precision=bf61"])
    with pytest.raises(RecipeError, match="linearize"):
        load_recipe(None, ["--linearize.method=mamba"])
    with pytest.raises(FileNotFoundError, match="no-such.yaml"):
        load_recipe("recipes/no-such.yaml")


def test_seq_len_above_model_limit():
    class C:
        max_position_embeddings = 512
    check_seq_len(512, C())
    with pytest.raises(RecipeError, match="seq_len=1024 is above the model's max_position_embeddings=512"):
        check_seq_len(1024, C())


def test_seq_len_check_on_load():
    from linearize.training import load_converted

    cfg = load_recipe(os.path.join(ROOT, "recipes", "tiny-smoke.yaml"), ["--data.seq_len=4096"])
    with pytest.raises(RecipeError, match="max_position_embeddings"):
        load_converted(cfg)


def test_from_dict_defaults():
    assert from_dict(RunConfig, {}) == RunConfig()

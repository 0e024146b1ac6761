"""``minift.models.from_config``: every family built from a config alone with seeded random weights, initialised as
transformers initialises a fresh model; the presets' shapes counted against transformers' own models."""
import json
import subprocess
import sys

import kit
import pytest
import torch

from minift.models import ModelLoadError, from_config
from minift.models.presets import PRESETS

HEADS = {None, "classification", "regression", "token-classification", "causal-lm"}


def _config_dict(family: str) -> dict:
    return {"model_type": family, **kit.FAMILIES[family].kwargs}


@pytest.mark.parametrize("family", list(kit.FAMILIES))
def test_same_architecture_as_a_loaded_checkpoint(tiny, family):
    heads = [h for h in kit.FAMILIES[family].classes if h in HEADS]
    for head in heads:
        loaded = tiny(family, head).load()
        labels = 3 if head in ("classification", "token-classification") else None
        built = from_config(_config_dict(family), head=head, num_labels=labels)
        assert {k: v.shape for k, v in built.state_dict().items()} == \
            {k: v.shape for k, v in loaded.state_dict().items()}
        assert built.is_tied == loaded.is_tied
        if built.is_tied:
            assert built.head.weight is built.get_input_embeddings().weight


def test_transformers_initialisation(tiny):
    model = from_config(_config_dict("bert"), head="classification", num_labels=3, seed=3)
    std = model.config.initializer_range
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            assert not module.bias.any(), name
        if isinstance(module, torch.nn.LayerNorm):
            assert torch.equal(module.weight, torch.ones_like(module.weight)) and not module.bias.any()
    word = model.bert.embeddings.word_embeddings
    assert not word.weight[word.padding_idx].any()  # transformers zeroes the padding row
    big = from_config("bert-base", seed=0)
    weight = big.bert.encoder.layer[0].intermediate.dense.weight
    assert abs(weight.std().item() - std) < 1e-3 and abs(weight.mean().item()) < 1e-3


def test_llama_norms_are_one_and_tied_heads_tied():
    model = from_config({**_config_dict("qwen2"), "tie_word_embeddings": True}, seed=1)
    assert model.is_tied and model.head.weight is model.get_input_embeddings().weight
    norm = model.backbone.norm.weight
    assert torch.equal(norm, torch.ones_like(norm))


def test_seeded():
    a, b, c = (from_config(_config_dict("roberta"), head="classification", seed=s) for s in (1, 1, 2))
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    key = "roberta.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(a.state_dict()[key], c.state_dict()[key])
    state = torch.random.get_rng_state()
    from_config(_config_dict("bert"), seed=5)
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's random state is left alone


def test_from_a_file_a_folder_without_weights_and_a_preset(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(_config_dict("gpt2")))
    from_file = from_config(tmp_path / "config.json", seed=0)
    from_folder = from_config(str(tmp_path), seed=0)
    assert torch.equal(from_file.backbone.wte.weight, from_folder.backbone.wte.weight)
    assert from_config("roberta-base", head="classification", num_labels=2, dtype="bfloat16").config.hidden_size == 768
    with pytest.raises(ModelLoadError, match="not a preset"):
        from_config("roberta-huge")
    with pytest.raises(ModelLoadError, match="unknown head"):
        from_config("gpt2", head="pooler")


@pytest.mark.parametrize("preset, hf_name", [("roberta-base", "RobertaModel"), ("roberta-large", "RobertaModel"),
                                             ("bert-base-uncased", "BertModel"), ("scibert", "BertModel")])
def test_preset_counts_match_transformers(preset, hf_name):
    """Bare models (with the pooler, as the published checkpoints) counted by transformers on the meta device."""
    transformers = pytest.importorskip("transformers")
    values = dict(PRESETS[preset])
    config_class = getattr(transformers, hf_name.replace("Model", "Config"))
    with torch.device("meta"):
        reference = getattr(transformers, hf_name)(config_class(**{k: v for k, v in values.items()
                                                                    if k != "model_type"}))
    with torch.device("meta"):
        from minift.models.load import build_model
        from minift.models.presets import resolve_model
        from minift.models.registry import get_family

        config = resolve_model(preset)[0]
        ours = build_model(config, get_family(config.model_type), None)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in reference.parameters())


def test_no_dynamo_import():
    """Building on meta with torch.nn.init's draws skipped: torch._dynamo (seconds to import) stays out."""
    code = ("import sys; from minift.models import from_config; from_config('bert-base', head='classification', "
            "num_labels=2); print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"

"""ModelConfig.from_hf / to_hf against transformers' own config classes (4.x and 5.x forms)."""
import kit
import pytest
import transformers

from minift.models import ConfigError, ModelConfig

# normalised field → the transformers config attribute holding the same quantity
EXPECTED = {
    "bert": {"hidden_size": "hidden_size", "num_layers": "num_hidden_layers", "num_heads": "num_attention_heads",
             "intermediate_size": "intermediate_size", "layer_norm_eps": "layer_norm_eps", "hidden_act": "hidden_act",
             "max_position_embeddings": "max_position_embeddings", "type_vocab_size": "type_vocab_size",
             "pad_token_id": "pad_token_id"},
    "gpt2": {"hidden_size": "n_embd", "num_layers": "n_layer", "num_heads": "n_head",
             "layer_norm_eps": "layer_norm_epsilon", "hidden_act": "activation_function",
             "max_position_embeddings": "n_positions"},
    "gpt_neo": {"hidden_size": "hidden_size", "num_layers": "num_layers", "num_heads": "num_heads",
                "window_size": "window_size", "attention_layers": "attention_layers",
                "hidden_act": "activation_function"},
    "llama": {"hidden_size": "hidden_size", "num_layers": "num_hidden_layers", "num_heads": "num_attention_heads",
              "num_kv_heads": "num_key_value_heads", "head_dim": "head_dim", "intermediate_size": "intermediate_size",
              "layer_norm_eps": "rms_norm_eps", "tie_word_embeddings": "tie_word_embeddings"},
}
EXPECTED["roberta"] = EXPECTED["bert"]
EXPECTED["qwen2"] = {k: v for k, v in {**EXPECTED["llama"], "window_size": "sliding_window"}.items()
                     if k != "head_dim"}  # Qwen2Config has no head_dim: it is hidden_size / heads
EXPECTED["mistral"] = {**EXPECTED["llama"], "window_size": "sliding_window"}


def _hf(model_type, **extra):
    return kit.hf_config(model_type, **extra)


@pytest.mark.parametrize("model_type", list(kit.FAMILIES))
def test_from_hf_matches_transformers_fields(model_type):
    hf = _hf(model_type)
    config = ModelConfig.from_hf(hf.to_dict())
    assert config.model_type == model_type
    assert config.vocab_size == hf.vocab_size
    for ours, theirs in EXPECTED[model_type].items():
        assert getattr(config, ours) == getattr(hf, theirs), ours


@pytest.mark.parametrize("model_type", list(kit.FAMILIES))
def test_to_hf_round_trips_through_transformers(model_type):
    hf = _hf(model_type, num_labels=3)
    config = ModelConfig.from_hf(hf.to_dict())
    again = type(hf).from_dict(config.to_hf())
    for theirs in EXPECTED[model_type].values():
        assert getattr(again, theirs) == getattr(hf, theirs), theirs
    assert again.num_labels == 3 and again.id2label == hf.id2label
    reread = ModelConfig.from_hf(again.to_dict())
    assert {**vars(reread), "raw": None} == {**vars(config), "raw": None}


def test_derived_defaults_follow_transformers():
    gpt2 = ModelConfig.from_hf(_hf("gpt2").to_dict())  # n_inner=None → 4 * n_embd, as GPT2MLP builds it
    assert gpt2.intermediate_size == 4 * 32 and gpt2.head_dim == 8 and gpt2.num_kv_heads == 4
    neo = ModelConfig.from_hf(_hf("gpt_neo").to_dict())
    assert neo.attention_layers == ["global", "local"] and neo.intermediate_size == 4 * 32
    llama = ModelConfig.from_hf(_hf("llama").to_dict())
    assert llama.head_dim == _hf("llama").head_dim and llama.tie_word_embeddings is False


@pytest.mark.parametrize("layers", [None, ["global", "global"]])
def test_gpt_neo_layers_as_transformers_reads_them(layers):
    d = _hf("gpt_neo").to_dict()
    if layers is None:
        del d["attention_layers"]  # older files: only attention_types
    else:
        d["attention_layers"] = layers  # a saved attention_layers overrides attention_types in transformers
    assert ModelConfig.from_hf(d).attention_layers == transformers.GPTNeoConfig.from_dict(d).attention_layers


@pytest.mark.parametrize("scaling", [None, {"rope_type": "linear", "factor": 2.0},
                                     {"rope_type": "dynamic", "factor": 4.0}])
def test_llama_rope_4x_and_5x_forms_agree(scaling):
    hf = _hf("llama", rope_theta=5e5, **({"rope_scaling": scaling} if scaling else {}))
    five = hf.to_dict()  # transformers 5.x writes rope_parameters
    assert "rope_parameters" in five
    four = {k: v for k, v in five.items() if k != "rope_parameters"}
    four["rope_theta"] = five["rope_parameters"]["rope_theta"]
    if scaling:  # 4.x wrote the scaling dict without rope_theta (older files: "type" for "rope_type")
        four["rope_scaling"] = {("type" if k == "rope_type" else k): v for k, v in scaling.items()}
    a, b = ModelConfig.from_hf(five), ModelConfig.from_hf(four)
    assert a.rope_theta == b.rope_theta == hf.rope_parameters["rope_theta"] == 5e5
    assert a.rope_scaling == b.rope_scaling
    expected = {k: v for k, v in hf.rope_parameters.items() if k != "rope_theta"} if scaling else None
    assert a.rope_scaling == expected
    for config in (a, b):  # both forms written back are read by transformers 5.x identically
        assert transformers.LlamaConfig.from_dict(config.to_hf()).rope_parameters == hf.rope_parameters


def test_config_without_model_type_is_inferred():
    d = _hf("bert").to_dict()
    del d["model_type"]  # SciBERT's config.json has none
    assert ModelConfig.from_hf(d).model_type == "bert"
    d["architectures"] = ["RobertaForMaskedLM"]
    assert ModelConfig.from_hf(d).model_type == "roberta"


def test_labels_from_id2label():
    config = ModelConfig.from_hf(_hf("bert", id2label={0: "neg", 1: "neu", 2: "pos"}).to_dict())
    assert config.num_labels == 3 and config.label2id == {"neg": 0, "neu": 1, "pos": 2}
    assert config.with_labels(5).num_labels == 5 and config.num_labels == 3
    assert config.with_labels(3).id2label == {0: "neg", 1: "neu", 2: "pos"}


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(model_type="t5"), "unknown model_type 't5'"),
    (lambda d: d.pop("num_hidden_layers"), "num_hidden_layers"),
    (lambda d: d.update(num_attention_heads=5), "not divisible"),
    (lambda d: d.update(position_embedding_type="relative_key"), "position_embedding_type"),
    (lambda d: [d.pop("model_type"), d.pop("type_vocab_size"), d.update(architectures=None)], "model_type"),
])
def test_bad_configs_raise_clear_errors(mutate, message):
    d = _hf("bert").to_dict()
    mutate(d)
    with pytest.raises(ConfigError, match=message):
        ModelConfig.from_hf(d)


def test_edited_fields_are_written_back():
    config = ModelConfig.from_hf(_hf("bert").to_dict())
    config.hidden_dropout, config.attention_dropout = 0.0, 0.25
    hf = transformers.BertConfig.from_dict(config.to_hf())
    assert hf.hidden_dropout_prob == 0.0 and hf.attention_probs_dropout_prob == 0.25

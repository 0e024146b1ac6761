"""What the estimator reads off the model built on the meta device, against independent counts: transformers'
models, the published sizes, and arithmetic on the config."""
import kit
import pytest
import torch

from minift.memory.params import model_facts
from minift.models.config import ModelConfig
from minift.models.presets import PRESETS, resolve_model
from minift.models.registry import families
from minift.peft.config import Method

METHODS = ["full", *kit.PEFT_OPTIONS]
HF_CLASSES = {"bert": "BertModel", "roberta": "RobertaModel", "gpt2": "GPT2Model", "gpt_neo": "GPTNeoModel",
              "llama": "LlamaForCausalLM"}


def _hf_count(name: str) -> int:
    """Parameters of the transformers model of a preset, built on the meta device (tied weights once)."""
    transformers = pytest.importorskip("transformers")
    d = dict(PRESETS[name])
    config = transformers.AutoConfig.for_model(**d)
    with torch.device("meta"):
        model = getattr(transformers, HF_CLASSES[d["model_type"]])(config)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_counts_match_transformers(name):
    config, _ = resolve_model(name)
    head = "causal-lm" if config.model_type == "llama" else None
    assert model_facts(config, head, Method()).params.total == _hf_count(name)


def test_published_sizes():
    """The sizes the model cards publish: Llama-3.2-3B 3.21B, BERT-base 109.48M, Llama-3-8B 8.03B."""
    def total(name, head):
        return model_facts(resolve_model(name)[0], head, Method()).params.total

    assert round(total("llama-3.2-3b", "causal-lm") / 1e9, 2) == 3.21
    assert round(total("bert-base", None) / 1e6, 2) == 109.48
    assert round(total("llama-3-8b", "causal-lm") / 1e9, 2) == 8.03


HEADS = {"bert": ["classification", "token-classification", None], "roberta": ["classification", None],
         "gpt2": ["causal-lm", "classification"], "gpt_neo": ["causal-lm"], "llama": ["causal-lm", "classification"]}


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("family,head", [(f, h) for f, heads in HEADS.items() for h in heads])
def test_counts_add_up(family, head, name):
    """Trainable = blocks + head + what lies outside both (embeddings, final norm, pooler, prompt); base + PEFT
    parameters = total; full fine-tuning trains everything once (a tied lm_head is the embedding)."""
    config = kit.model_config(family, **({"attention_bias": True} if family == "llama" else {}))  # BitFit needs biases
    facts = model_facts(config, head, Method.of(name, **kit.PEFT_OPTIONS.get(name, {})))
    p = facts.params
    assert p.base <= p.total and p.trainable <= p.total
    assert sum(facts.block_trainable) + facts.head_trainable <= p.trainable
    assert len(facts.block_trainable) == config.num_layers == len(facts.blocks)
    if name == "full":
        assert p.trainable == p.total == p.base and facts.embedding_trains and facts.norm_trains[0]
    else:
        assert not facts.embedding_trains and not facts.norm_trains[0]
    assert facts.tied_head == (head == "causal-lm" and config.tie_word_embeddings)
    assert facts.prompt_length == (kit.PEFT_OPTIONS["prompt"]["length"] if name == "prompt" else 0)


def test_lora_counts_are_the_arithmetic():
    """LoRA on q and v: r·(in + out) per target and layer; nothing else trains under a causal-LM head."""
    config, _ = resolve_model("llama-3.2-3b")
    facts = model_facts(config, "causal-lm", Method("lora"))
    r, C, kv = 8, config.hidden_size, config.num_kv_heads * config.head_dim
    per_layer = r * (C + C) + r * (C + kv)
    assert facts.block_trainable == (per_layer,) * config.num_layers
    assert facts.params.trainable == config.num_layers * per_layer
    assert facts.largest_trainable == r * C
    q = facts.linears["model.layers.0.self_attn.q_proj"]
    assert (q.lora_r, q.lora_dropout, q.weight_trains) == (8, 0.05, False)
    assert facts.linears["model.layers.0.self_attn.k_proj"].lora_r == 0


def test_adapters_bitfit_and_heads():
    config = kit.model_config("bert")
    adapter = model_facts(config, "classification", Method.of("adapter", size=8, placement="pfeiffer"))
    wrapped = [name for name, lin in adapter.linears.items() if lin.adapter_size]
    assert wrapped == [f"bert.encoder.layer.{i}.output.dense" for i in range(2)]  # the FFN site only
    C, m, L = 32, 8, config.num_labels
    assert adapter.block_trainable == (2 * C * m + m + C,) * 2
    assert adapter.head_trainable == C * L + L  # the classifier trains by default, not the pooler
    bitfit = model_facts(config, "classification", Method("bitfit", train_head=False))
    assert bitfit.norm_trains == (False, True)
    assert bitfit.head_trainable == L  # the head's bias trains under BitFit even when its weight does not
    dense = bitfit.linears["bert.pooler.dense"]
    assert (dense.weight_trains, dense.bias_trains) == (False, True)
    assert model_facts(kit.model_config("llama"), "causal-lm", Method()).has_biases is False


def test_refused_methods_say_why():
    config = kit.model_config("llama")
    with pytest.raises(ValueError, match="BitFit trains bias terms"):
        model_facts(config, "causal-lm", Method("bitfit"))
    with pytest.raises(ValueError, match="matches no module"):
        model_facts(config, "causal-lm", Method.of("lora", targets=["query"]))
    with pytest.raises(ValueError, match="no causal-lm head"):
        model_facts(kit.model_config("bert"), "causal-lm", Method())


@pytest.mark.parametrize("family", [f for f in families() if f.memory is not None], ids=lambda f: f.model_type)
def test_memory_specs_name_real_linears(family):
    """Every name a family's MemorySpec (and its adapter sites) gives is an nn.Linear of its blocks."""
    config = ModelConfig(model_type=family.model_type, vocab_size=100, hidden_size=32, num_layers=2, num_heads=4)
    head = "classification" if "classification" in family.heads else None
    facts = model_facts(config, head, Method())
    spec = family.memory
    for block in facts.blocks:
        for name in (*spec.attention, *spec.mlp, *family.adapter_sites.values()):
            assert f"{block}.{name}" in facts.linears, (family.model_type, name)
    for kind, steps in spec.head_steps.items():
        head_facts = model_facts(config, kind, Method())
        for step in steps:
            assert step in ("tanh", "dropout") or f"{head_facts.head}.{step}" in head_facts.linears
    for step in spec.pooler:
        assert step in ("tanh", "dropout") or f"{facts.pooler}.{step}" in facts.linears

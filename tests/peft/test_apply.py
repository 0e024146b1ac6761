"""``apply`` and the helpers around it: where modules go, clear errors, the prompt wrapper, save/load checks."""
import copy
import json

import pytest
import torch

from minift.peft import (
    AdapterLinear,
    LoRALinear,
    PromptModel,
    apply,
    export_peft,
    load_trainable,
    merge,
    peft_modules,
    save_merged,
    save_trainable,
)
from minift.peft.io import CONFIG_NAME

SITES = {  # block-relative names, straight from docs/ARCHITECTURE.md's module tree
    "bert": {"attention.output.dense", "output.dense"},
    "gpt2": {"attn.c_proj", "mlp.c_proj"},
    "gpt_neo": {"attn.attention.out_proj", "mlp.c_proj"},
    "llama": {"self_attn.o_proj", "mlp.down_proj"},
}
FFN = {"bert": "output.dense", "gpt2": "mlp.c_proj", "gpt_neo": "mlp.c_proj", "llama": "mlp.down_proj"}


@pytest.mark.parametrize("family", list(SITES))
@pytest.mark.parametrize("placement", ["houlsby", "pfeiffer"])
def test_adapter_placement_per_family(tiny, family, placement):
    head = "classification"
    model = apply(tiny(family, head).load(), "adapter", reduction_factor=4, placement=placement)
    for block in model.blocks:
        wrapped = {n for n, m in block.named_modules() if isinstance(m, AdapterLinear)}
        assert wrapped == (SITES[family] if placement == "houlsby" else {FFN[family]})
        assert all(m.adapter.down.out_features == 8 for m in block.modules() if isinstance(m, AdapterLinear))


@pytest.mark.parametrize("family, targets, expected", [
    ("bert", ["attention.self.query"], {"attention.self.query"}),
    ("bert", None, {"attention.self.query", "attention.self.value"}),
    ("gpt2", None, {"attn.c_attn"}),
    ("gpt_neo", ["q_proj", "out_proj"], {"attn.attention.q_proj", "attn.attention.out_proj"}),
    ("llama", ["gate_proj", "up_proj", "down_proj"], {"mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}),
])
def test_lora_targets(tiny, family, targets, expected):
    model = apply(tiny(family, "classification").load(), "lora", r=2, targets=targets)
    for block in model.blocks:
        assert {n for n, m in block.named_modules() if isinstance(m, LoRALinear)} == expected
    assert not any(isinstance(m, LoRALinear) for m in model.head.modules())  # the head is trained, not adapted


def test_state_dict_keys_keep_the_base_keys(tiny):
    t = tiny("bert", "classification")
    base_keys = set(t.load().state_dict())
    for method, opts in [("lora", {}), ("adapter", {"size": 4}), ("bitfit", {})]:
        keys = set(apply(t.load(), method, **opts).state_dict())
        assert base_keys <= keys
        assert all(".lora_" in k or ".adapter." in k for k in keys - base_keys)


@pytest.mark.parametrize("call, message", [
    (lambda m: apply(m, "ia3"), "unknown fine-tuning method 'ia3'"),
    (lambda m: apply(m, "full"), "not a PEFT method"),
    (lambda m: apply(m, "lora", rank=4), r"unknown option\(s\) \['rank'\]"),
    (lambda m: apply(m, "lora", targets=["nonexistent"]), "matches no module.*query"),
    (lambda m: apply(m, "lora", targets=["LayerNorm"]), "not nn.Linear"),
    (lambda m: apply(m, "adapter", size=4, reduction_factor=2), "size or reduction_factor, not both"),
    (lambda m: apply(m, "prompt", init="text"), "token_ids"),
    (lambda m: apply(m, "prompt", init="text", token_ids=[5, 1000]), "outside the vocabulary"),
    (lambda m: apply(m, "bitfit", train_head="yes"), "train_head"),
    (lambda m: apply(apply(m, "bitfit"), "lora"), "already has PEFT"),
    (lambda m: merge(m), "no LoRA layers"),
    (lambda m: save_trainable(m, "unused"), "full fine-tuning"),
    (lambda m: export_peft(apply(m, "adapter", size=4), "unused"), "export_peft writes LoRA"),
])
def test_clear_errors(tiny, call, message):
    model = tiny("bert", "classification").load()
    with pytest.raises((ValueError, TypeError), match=message):
        call(model)


def test_bitfit_needs_biases_and_tied_lm_head_cannot_train(tiny):
    t = tiny("llama", "causal-lm")
    model = t.load()
    with pytest.raises(ValueError, match="has none"):
        apply(model, "bitfit")
    assert all(p.requires_grad for p in model.parameters())  # the failed apply changed nothing
    with pytest.raises(ValueError, match="tied"):
        apply(tiny("gpt2", "causal-lm").load(), "lora", train_head=True)


@pytest.mark.parametrize("method, opts", [("adapter", {"size": 4}), ("prompt", {"length": 2})])
def test_save_merged_refuses_unmergeable_methods(tiny, tmp_path, method, opts):
    model = apply(tiny("bert", "classification").load(), method, **opts)
    with pytest.raises(ValueError, match="cannot be merged"):
        save_merged(model, tmp_path / "out")


def test_load_trainable_checks_the_folder(tiny, tmp_path):
    bert = tiny("bert", "classification")
    saved = save_trainable(apply(bert.load(), "lora", r=2), tmp_path / "saved")
    with pytest.raises(ValueError, match="for a 'bert' model"):
        load_trainable(tiny("llama", "classification").load(), saved)
    with pytest.raises(ValueError, match="already has PEFT"):
        load_trainable(apply(bert.load(), "lora", r=4), saved)
    assert isinstance(load_trainable(apply(bert.load(), "lora", r=2), saved), torch.nn.Module)  # same spec: fine
    (saved / CONFIG_NAME).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_trainable(bert.load(), saved)
    (saved / CONFIG_NAME).write_text(json.dumps({"peft_type": "LORA"}))
    with pytest.raises(ValueError, match="not a minift PEFT config"):
        load_trainable(bert.load(), saved)
    with pytest.raises(FileNotFoundError, match="save_trainable"):
        load_trainable(bert.load(), tmp_path / "missing")


def test_load_trainable_names_mismatched_tensors(tiny, tmp_path):
    bert = tiny("bert", "classification")
    saved = save_trainable(apply(bert.load(), "lora", r=2), tmp_path / "saved")
    config = json.loads((saved / CONFIG_NAME).read_text())
    config["options"]["targets"] = ["query", "key"]
    (saved / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ValueError, match="missing .*key.lora_A.*unexpected .*value.lora_A"):
        load_trainable(bert.load(), saved)


def test_prompt_wrapper_stands_in_for_the_model(tiny, tiny_batch):
    base = tiny("bert", "token-classification").load()
    model = apply(base, "prompt", length=3)
    assert isinstance(model, PromptModel) and model.model is base
    assert model.head_kind == "token-classification" and model.config is base.config and not model.is_decoder
    model.gradient_checkpointing = True
    assert base.gradient_checkpointing
    assert set(peft_modules(model)) == {"prompt"}
    b = tiny_batch("bert")
    with torch.no_grad():
        by_ids = model(**b)
        by_embeds = model(inputs_embeds=base.get_input_embeddings()(b["input_ids"]), attention_mask=b["attention_mask"])
    assert by_ids.shape == (*b["input_ids"].shape, base.config.num_labels)
    assert torch.equal(by_ids, by_embeds)
    copied = copy.deepcopy(model)
    with torch.no_grad():
        assert torch.equal(copied(**b), by_ids)
    with pytest.raises(AttributeError, match="no_such_attribute"):
        model.no_such_attribute  # noqa: B018


def test_prompt_extends_token_type_ids(tiny, tiny_batch):
    """BERT with a second segment: the prompt (segment 0) sits after [CLS]; equals the base fed the prompt tokens."""
    base = tiny("bert", "classification").load()
    ids = [7, 8]
    model = apply(base, "prompt", length=2, init="text", token_ids=ids)
    b = tiny_batch("bert")
    types = torch.zeros_like(b["input_ids"])
    types[:, 4:] = 1
    B = types.shape[0]
    full = {
        "input_ids": torch.cat([b["input_ids"][:, :1], torch.tensor(ids).expand(B, -1), b["input_ids"][:, 1:]], 1),
        "attention_mask": torch.cat([b["attention_mask"][:, :1], torch.ones(B, 2, dtype=torch.long),
                                     b["attention_mask"][:, 1:]], 1),
        "token_type_ids": torch.cat([types[:, :1], torch.zeros(B, 2, dtype=torch.long), types[:, 1:]], 1),
    }
    with torch.no_grad():
        torch.testing.assert_close(model(**b, token_type_ids=types), base(**full), rtol=0, atol=1e-5)


def test_prompt_inits(tiny):
    base = tiny("gpt2", "causal-lm").load()
    emb = base.get_input_embeddings().weight
    random = apply(tiny("gpt2", "causal-lm").load(), "prompt", length=50, init="random").prompt.embedding
    assert random.abs().max() <= 0.5 and random.std() > 0.2  # uniform [-0.5, 0.5] (Lester et al. 2021)
    vocab = apply(base, "prompt", length=6, init="vocab").prompt.embedding
    assert all(any(torch.equal(row, e) for e in emb) for row in vocab)  # every row is some token's embedding


def test_load_trainable_into_a_merged_model(tiny, tiny_batch, tmp_path):
    bert = tiny("bert", "classification")
    trained = apply(bert.load(), "lora", r=2)
    with torch.no_grad():
        for p in trained.parameters():
            if p.requires_grad:
                p.normal_(0, 0.3)
    saved = save_trainable(trained, tmp_path / "saved")
    target = apply(bert.load(), "lora", r=2)
    with torch.no_grad():
        for name, p in target.named_parameters():
            if name.endswith("lora_B"):
                p.fill_(0.1)  # another, non-zero update, merged into the weights below
    merge(target)
    target = load_trainable(target, saved)
    b = tiny_batch("bert")
    with torch.no_grad():
        torch.testing.assert_close(target(**b), trained(**b), rtol=0, atol=1e-5)


def test_prompt_too_long_names_the_virtual_tokens(tiny):
    model = apply(tiny("gpt2", "classification").load(), "prompt", length=10)
    with pytest.raises(ValueError, match="adds 10 virtual tokens to the 60 input tokens"):
        model(input_ids=torch.randint(4, 100, (1, 60)))


@pytest.mark.parametrize("method, opts", [("lora", {"r": 4, "dropout": 0.1}), ("adapter", {"size": 4}),
                                          ("prompt", {"length": 3})])
def test_gradient_checkpointing_gives_the_same_gradients(tiny, tiny_batch, method, opts):
    t = tiny("gpt2", "classification")
    b = tiny_batch("gpt2")
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = apply(t.load(), method, **opts)
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.normal_(0, 0.1)
        model.gradient_checkpointing = checkpointing
        model.train()
        torch.manual_seed(1)
        model(**b).square().sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-5, atol=1e-6)

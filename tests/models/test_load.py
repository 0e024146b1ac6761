"""load_pretrained on tiny transformers checkpoints: prefixes, shards, config forms, dtypes, fresh heads."""
import kit
import pytest
import torch
from safetensors import safe_open


def checkpoint_keys(folder):
    keys = set()
    for file in folder.glob("*.safetensors"):
        with safe_open(str(file), "pt") as f:
            keys |= set(f.keys())
    return keys


def test_unprefixed_checkpoint_loads_and_every_key_is_accounted_for(tiny, tiny_batch):
    t = tiny("bert", None)
    assert not any(k.startswith("bert.") for k in checkpoint_keys(t.folder))  # BertModel saves without prefix
    model = t.load()
    b = tiny_batch("bert")
    torch.testing.assert_close(model(**b), t.hf(**b).last_hidden_state, atol=1e-4, rtol=0)
    loaded = {k.removeprefix("bert.") for k in model.state_dict()}
    assert loaded | {k.removeprefix("bert.") for k in model.skipped_keys} == checkpoint_keys(t.folder)


def test_prefixed_checkpoint_with_a_head_loads_as_bare_encoder(tiny, tiny_batch):
    t = tiny("bert", "classification", num_labels=3)
    assert any(k.startswith("bert.") for k in checkpoint_keys(t.folder))
    model = t.load(head=None)  # the classifier is deliberately skipped
    assert model.skipped_keys == ["classifier.bias", "classifier.weight"]
    b = tiny_batch("bert")
    torch.testing.assert_close(model(**b), t.hf.bert(**b).last_hidden_state, atol=1e-4, rtol=0)


def test_sharded_checkpoint(tiny, tiny_batch):
    t = tiny("bert", "token-classification", num_labels=4, max_shard_size="20KB")
    assert (t.folder / "model.safetensors.index.json").exists() and len(list(t.folder.glob("*.safetensors"))) > 1
    model = t.load()
    b = tiny_batch("bert")
    torch.testing.assert_close(model(**b), t.hf(**b).logits, atol=1e-4, rtol=0)


def test_config_in_transformers_4x_form(tiny, tiny_batch):
    t = tiny("bert", "classification", num_labels=2)

    def to_4x(config):
        config["torch_dtype"] = config.pop("dtype", "float32")  # what 4.x wrote
        return config

    kit.edit_config(t.folder, to_4x, transformers_version="4.44.2", position_embedding_type="absolute",
                    gradient_checkpointing=False)
    model = t.load()
    b = tiny_batch("bert")
    torch.testing.assert_close(model(**b), t.hf(**b).logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, "bfloat16", torch.float16])
def test_loads_in_requested_dtype(tiny, tiny_batch, dtype):
    t = tiny("roberta", "classification", num_labels=3)
    model = t.load(dtype=dtype)
    expected_dtype = torch.bfloat16 if dtype in (torch.bfloat16, "bfloat16") else torch.float16
    assert {p.dtype for p in model.parameters()} == {expected_dtype}
    b = tiny_batch("roberta")
    with torch.no_grad():
        out = model(**b)
    assert out.dtype == expected_dtype
    torch.testing.assert_close(out.float(), t.hf(**b).logits, atol=5e-2, rtol=5e-2)


def test_checkpoint_without_head_gets_fresh_head(tiny, tiny_batch):
    t = tiny("bert", None, initializer_range=0.2)
    model = t.load(head="classification", num_labels=16)
    assert model.fresh_keys == ["classifier.bias", "classifier.weight"]
    weight, bias = model.classifier.weight, model.classifier.bias
    assert torch.all(bias == 0) and 0.15 < weight.std().item() < 0.25  # N(0, initializer_range)
    b = tiny_batch("bert")
    pooled = t.hf(**b).pooler_output  # the pooler was loaded, not re-initialised
    torch.testing.assert_close(model(**b), pooled @ weight.T + bias, atol=1e-4, rtol=0)


def test_roberta_token_head_checkpoint_as_sequence_classifier(tiny):
    model = tiny("roberta", "token-classification", num_labels=3).load(head="classification")
    # the token head's classifier.{weight,bias} do not fit RoBERTa's sentence head: skipped, head fresh
    assert model.skipped_keys == ["classifier.bias", "classifier.weight"]
    assert set(model.fresh_keys) == {f"classifier.{m}.{p}" for m in ("dense", "out_proj") for p in ("weight", "bias")}


def test_token_checkpoint_without_pooler_loads_bare_with_fresh_pooler(tiny, tiny_batch):
    t = tiny("bert", "token-classification", num_labels=3)
    model = t.load(head=None)
    assert model.fresh_keys == ["bert.pooler.dense.bias", "bert.pooler.dense.weight"]
    b = tiny_batch("bert")
    torch.testing.assert_close(model(**b), t.hf.bert(**b).last_hidden_state, atol=1e-4, rtol=0)


def test_num_labels_relabels_a_fresh_head(tiny, tiny_batch):
    t = tiny("bert", None)
    model = t.load(head="token-classification", num_labels=7)
    assert model.config.num_labels == 7 and len(model.config.id2label) == 7
    b = tiny_batch("bert")
    assert model(**b).shape == (3, 10, 7)
    regression = t.load(head="regression")
    assert regression(**b).shape == (3, 1)
    assert regression.config.problem_type == "regression"


@pytest.mark.cuda
def test_loads_onto_cuda_in_bf16_and_trains_with_checkpointing(tiny, tiny_batch):
    t = tiny("bert", "classification", num_labels=3)
    model = t.load(dtype=torch.bfloat16, device="cuda")
    assert {(p.device.type, p.dtype) for p in model.parameters()} == {("cuda", torch.bfloat16)}
    b = tiny_batch("bert")
    cuda = {k: v.cuda() for k, v in b.items()}
    with torch.no_grad():
        out = model(**cuda)
    torch.testing.assert_close(out.float().cpu(), t.hf(**b).logits, atol=5e-2, rtol=5e-2)
    model.train()
    model.gradient_checkpointing = True
    model(**cuda).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())

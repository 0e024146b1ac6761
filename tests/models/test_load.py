"""load_pretrained on tiny transformers checkpoints: prefixes, shards, config forms, dtypes, fresh heads."""
import json

import pytest
import torch
import transformers
from safetensors import safe_open

from minift.models import load_pretrained

TINY = {"vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 37, "max_position_embeddings": 40}


def save_tiny(hf_class, folder, sharded=False, **overrides):
    """Save a random tiny transformers model into ``folder`` (in ~20 KB shards when ``sharded``)."""
    config_class = transformers.RobertaConfig if "Roberta" in hf_class.__name__ else transformers.BertConfig
    model = hf_class(config_class(**{**TINY, **overrides})).eval()
    model.save_pretrained(folder, safe_serialization=True, **({"max_shard_size": "20KB"} if sharded else {}))
    return model


def batch(pad_id=0):
    ids = torch.randint(3, 100, (2, 7))
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    return ids.masked_fill(mask == 0, pad_id), mask


def checkpoint_keys(folder):
    keys = set()
    for file in folder.glob("*.safetensors"):
        with safe_open(str(file), "pt") as f:
            keys |= set(f.keys())
    return keys


def test_unprefixed_checkpoint_loads_and_every_key_is_accounted_for(tmp_path):
    ref = save_tiny(transformers.BertModel, tmp_path)
    assert not any(k.startswith("bert.") for k in checkpoint_keys(tmp_path))  # BertModel saves without prefix
    model = load_pretrained(tmp_path)
    ids, mask = batch()
    torch.testing.assert_close(model(input_ids=ids, attention_mask=mask),
                               ref(input_ids=ids, attention_mask=mask).last_hidden_state, atol=1e-4, rtol=0)
    loaded = {k.removeprefix("bert.") for k in model.state_dict()}
    assert loaded | {k.removeprefix("bert.") for k in model.skipped_keys} == checkpoint_keys(tmp_path)


def test_prefixed_checkpoint_with_a_head_loads_as_bare_encoder(tmp_path):
    ref = save_tiny(transformers.BertForSequenceClassification, tmp_path, num_labels=3)
    assert any(k.startswith("bert.") for k in checkpoint_keys(tmp_path))
    model = load_pretrained(tmp_path)  # head=None: the classifier is deliberately skipped
    assert model.skipped_keys == ["classifier.bias", "classifier.weight"]
    ids, mask = batch()
    torch.testing.assert_close(model(input_ids=ids, attention_mask=mask),
                               ref.bert(input_ids=ids, attention_mask=mask).last_hidden_state, atol=1e-4, rtol=0)


def test_sharded_checkpoint(tmp_path):
    ref = save_tiny(transformers.BertForTokenClassification, tmp_path, num_labels=4, sharded=True)
    assert (tmp_path / "model.safetensors.index.json").exists() and len(list(tmp_path.glob("*.safetensors"))) > 1
    model = load_pretrained(tmp_path, head="token-classification")
    ids, mask = batch()
    torch.testing.assert_close(model(input_ids=ids, attention_mask=mask),
                               ref(input_ids=ids, attention_mask=mask).logits, atol=1e-4, rtol=0)


def test_config_in_transformers_4x_form(tmp_path):
    ref = save_tiny(transformers.BertForSequenceClassification, tmp_path, num_labels=2)
    config = json.loads((tmp_path / "config.json").read_text())
    config["torch_dtype"] = config.pop("dtype", "float32")  # what 4.x wrote
    config.update(transformers_version="4.44.2", position_embedding_type="absolute", gradient_checkpointing=False)
    (tmp_path / "config.json").write_text(json.dumps(config))
    model = load_pretrained(tmp_path, head="classification")
    ids, mask = batch()
    torch.testing.assert_close(model(input_ids=ids, attention_mask=mask),
                               ref(input_ids=ids, attention_mask=mask).logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, "bfloat16", torch.float16])
def test_loads_in_requested_dtype(tmp_path, dtype):
    ref = save_tiny(transformers.RobertaForSequenceClassification, tmp_path, num_labels=3)
    model = load_pretrained(tmp_path, dtype=dtype, head="classification")
    expected_dtype = torch.bfloat16 if dtype in (torch.bfloat16, "bfloat16") else torch.float16
    assert {p.dtype for p in model.parameters()} == {expected_dtype}
    ids, mask = batch(pad_id=1)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask)
    assert out.dtype == expected_dtype
    torch.testing.assert_close(out.float(), ref(input_ids=ids, attention_mask=mask).logits, atol=5e-2, rtol=5e-2)


def test_checkpoint_without_head_gets_fresh_head(tmp_path):
    ref = save_tiny(transformers.BertModel, tmp_path, initializer_range=0.2)
    model = load_pretrained(tmp_path, head="classification", num_labels=16)
    assert model.fresh_keys == ["classifier.bias", "classifier.weight"]
    weight, bias = model.classifier.weight, model.classifier.bias
    assert torch.all(bias == 0) and 0.15 < weight.std().item() < 0.25  # N(0, initializer_range)
    ids, mask = batch()
    pooled = ref(input_ids=ids, attention_mask=mask).pooler_output  # the pooler was loaded, not re-initialised
    torch.testing.assert_close(model(input_ids=ids, attention_mask=mask), pooled @ weight.T + bias,
                               atol=1e-4, rtol=0)


def test_roberta_token_head_checkpoint_as_sequence_classifier(tmp_path):
    save_tiny(transformers.RobertaForTokenClassification, tmp_path, num_labels=3)
    model = load_pretrained(tmp_path, head="classification")
    # the token head's classifier.{weight,bias} do not fit RoBERTa's sentence head: skipped, head fresh
    assert model.skipped_keys == ["classifier.bias", "classifier.weight"]
    assert set(model.fresh_keys) == {f"classifier.{m}.{p}" for m in ("dense", "out_proj") for p in ("weight", "bias")}


def test_token_checkpoint_without_pooler_loads_bare_with_fresh_pooler(tmp_path):
    ref = save_tiny(transformers.BertForTokenClassification, tmp_path, num_labels=3)
    model = load_pretrained(tmp_path)
    assert model.fresh_keys == ["bert.pooler.dense.bias", "bert.pooler.dense.weight"]
    ids, mask = batch()
    torch.testing.assert_close(model(input_ids=ids, attention_mask=mask),
                               ref.bert(input_ids=ids, attention_mask=mask).last_hidden_state, atol=1e-4, rtol=0)


def test_num_labels_relabels_a_fresh_head(tmp_path):
    save_tiny(transformers.BertModel, tmp_path)
    model = load_pretrained(tmp_path, head="token-classification", num_labels=7)
    assert model.config.num_labels == 7 and len(model.config.id2label) == 7
    ids, mask = batch()
    assert model(input_ids=ids, attention_mask=mask).shape == (2, 7, 7)
    regression = load_pretrained(tmp_path, head="regression")
    assert regression(input_ids=ids, attention_mask=mask).shape == (2, 1)
    assert regression.config.problem_type == "regression"


@pytest.mark.cuda
def test_loads_onto_cuda_in_bf16_and_trains_with_checkpointing(tmp_path):
    ref = save_tiny(transformers.BertForSequenceClassification, tmp_path, num_labels=3)
    model = load_pretrained(tmp_path, dtype=torch.bfloat16, device="cuda", head="classification")
    assert {(p.device.type, p.dtype) for p in model.parameters()} == {("cuda", torch.bfloat16)}
    ids, mask = batch()
    with torch.no_grad():
        out = model(input_ids=ids.cuda(), attention_mask=mask.cuda())
    torch.testing.assert_close(out.float().cpu(), ref(input_ids=ids, attention_mask=mask).logits,
                               atol=5e-2, rtol=5e-2)
    model.train()
    model.gradient_checkpointing = True
    model(input_ids=ids.cuda(), attention_mask=mask.cuda()).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())

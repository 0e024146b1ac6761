"""BERT / RoBERTa parity with transformers on tiny random checkpoints, heads included, and the attention masks."""
import pytest
import torch
import transformers

from minift.models import load_pretrained
from minift.models.attention import attention, build_mask

TINY = {"vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 37,
            "max_position_embeddings": 40}
CASES = [  # (transformers class, our head, num_labels)
    (transformers.BertModel, None, 2),
    (transformers.BertForSequenceClassification, "classification", 3),
    (transformers.BertForSequenceClassification, "regression", 1),
    (transformers.BertForTokenClassification, "token-classification", 5),
    (transformers.RobertaModel, None, 2),
    (transformers.RobertaForSequenceClassification, "classification", 3),
    (transformers.RobertaForSequenceClassification, "regression", 1),
    (transformers.RobertaForTokenClassification, "token-classification", 5),
]


def tiny_checkpoint(hf_class, folder, num_labels=2, **overrides):
    """Save a random tiny transformers model (safetensors) into ``folder``; return it in eval mode."""
    config_class = transformers.RobertaConfig if "Roberta" in hf_class.__name__ else transformers.BertConfig
    kwargs = {**TINY, "num_labels": num_labels, **overrides}
    if num_labels == 1:
        kwargs["problem_type"] = "regression"
    model = hf_class(config_class(**kwargs)).eval()
    model.save_pretrained(folder, safe_serialization=True)
    return model


def padded_batch(pad_id, vocab=100):
    """Three sequences of lengths 9, 6 and 3, right-padded with ``pad_id``."""
    ids = torch.randint(3, vocab, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    return ids.masked_fill(mask == 0, pad_id), mask


def reference_output(hf_model, head, **inputs):
    with torch.no_grad():
        out = hf_model(**inputs)
    return out.last_hidden_state if head is None else out.logits


@pytest.mark.parametrize("hf_class, head, num_labels", CASES, ids=[f"{c.__name__}-{h}" for c, h, _ in CASES])
def test_parity_with_transformers(tmp_path, hf_class, head, num_labels):
    ref = tiny_checkpoint(hf_class, tmp_path, num_labels)
    ids, mask = padded_batch(ref.config.pad_token_id)
    model = load_pretrained(tmp_path, head=head)
    assert model.fresh_keys == []
    assert not model.training
    with torch.no_grad():
        ours = model(input_ids=ids, attention_mask=mask)
    expected = reference_output(ref, head, input_ids=ids, attention_mask=mask)
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=0)
    ref_keys = set(ref.state_dict()) - {k for k in ref.state_dict() if k.endswith("position_ids")}
    ours_keys = set((model.backbone if head is None else model).state_dict())  # a bare HF model has no prefix
    assert ours_keys == ref_keys


@pytest.mark.parametrize("hf_class", [transformers.BertModel, transformers.RobertaModel])
def test_inputs_embeds_and_token_types_match_transformers(tmp_path, hf_class):
    ref = tiny_checkpoint(hf_class, tmp_path, type_vocab_size=2)
    model = load_pretrained(tmp_path)
    ids, mask = padded_batch(ref.config.pad_token_id)
    types = (torch.arange(9) >= 4).long().expand(3, 9)
    embeds = torch.randn(3, 9, 32)
    torch.testing.assert_close(model(input_ids=ids, attention_mask=mask, token_type_ids=types),
                               reference_output(ref, None, input_ids=ids, attention_mask=mask, token_type_ids=types),
                               atol=1e-4, rtol=0)
    torch.testing.assert_close(model(inputs_embeds=embeds, attention_mask=mask),
                               reference_output(ref, None, inputs_embeds=embeds, attention_mask=mask),
                               atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="exactly one"):
        model(input_ids=ids, inputs_embeds=embeds)


def test_train_mode_gradients_match_transformers(tmp_path):
    ref = tiny_checkpoint(transformers.BertForSequenceClassification, tmp_path, 3, hidden_dropout_prob=0.0,
                          attention_probs_dropout_prob=0.0)
    model = load_pretrained(tmp_path, head="classification").train()
    ref.train()
    ids, mask = padded_batch(0)
    labels = torch.tensor([0, 2, 1])
    loss = torch.nn.functional.cross_entropy(model(input_ids=ids, attention_mask=mask), labels)
    loss.backward()
    ref(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    ref_grads = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[name].grad, atol=1e-5, rtol=1e-4, msg=name)


def test_gradient_checkpointing_recomputes_blocks_with_same_gradients(tmp_path):
    tiny_checkpoint(transformers.BertForTokenClassification, tmp_path, 4, hidden_dropout_prob=0.0,
                    attention_probs_dropout_prob=0.0)
    ids, mask = padded_batch(0)
    grads, calls = [], []
    for checkpointing in (False, True):
        model = load_pretrained(tmp_path, head="token-classification").train()
        model.gradient_checkpointing = checkpointing
        assert model.backbone.gradient_checkpointing is checkpointing
        hook = model.blocks[0].register_forward_pre_hook(lambda *args, c=checkpointing: calls.append(c))
        model(input_ids=ids, attention_mask=mask).square().sum().backward()
        hook.remove()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert calls.count(False) == 1 and calls.count(True) == 2  # checkpointing re-ran block 0 in backward
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], msg=name)


def test_task_model_exposes_contract_attributes(tmp_path):
    tiny_checkpoint(transformers.RobertaForSequenceClassification, tmp_path, 3)
    model = load_pretrained(tmp_path, head="classification")
    assert model.head_kind == "classification" and not model.is_decoder
    assert model.backbone is model.roberta and model.head is model.classifier
    assert model.blocks is model.roberta.encoder.layer and len(model.blocks) == 2
    assert model.get_input_embeddings() is model.roberta.embeddings.word_embeddings
    assert model.roberta.pooler is None  # RobertaForSequenceClassification has no pooler either


def _reference_mask(lengths, T, window=None, causal=False):
    """Allowed (query, key) pairs written out from the definitions, one position at a time."""
    out = torch.zeros(len(lengths), 1, T, T, dtype=torch.bool)
    for b, n in enumerate(lengths):
        for i in range(T):
            for j in range(n):
                out[b, 0, i, j] = (not (causal or window) or j <= i) and (window is None or i - j < window)
    return out


@pytest.mark.parametrize("causal, window", [(False, None), (True, None), (True, 3)])
def test_build_mask_matches_definition(causal, window):
    mask = torch.tensor([[1] * 7, [1] * 5 + [0] * 2])
    built = build_mask(mask, 7, causal=causal, window=window).expand(2, 1, 7, 7)
    assert torch.equal(built, _reference_mask([7, 5], 7, window, causal))
    assert build_mask(torch.ones(2, 7, dtype=torch.long), 7, causal=True) is None  # fused causal path


def test_attention_matches_explicit_softmax_with_gqa_and_scale():
    q, k, v = torch.randn(2, 4, 6, 8), torch.randn(2, 2, 6, 8), torch.randn(2, 2, 6, 8)
    mask = build_mask(torch.tensor([[1] * 6, [1] * 4 + [0] * 2]), 6, window=3)
    k4, v4 = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
    scores = (q @ k4.transpose(-1, -2)).masked_fill(~mask, float("-inf"))  # scale=1.0: GPT-Neo's unscaled scores
    expected = scores.softmax(-1) @ v4
    torch.testing.assert_close(attention(q, k, v, mask, scale=1.0), expected)


def test_fully_masked_query_rows_stay_finite():
    q = k = v = torch.randn(1, 2, 4, 8)
    left_padded = build_mask(torch.tensor([[0, 0, 1, 1]]), 4, causal=True)
    out = attention(q, k, v, left_padded)
    assert torch.isfinite(out).all()

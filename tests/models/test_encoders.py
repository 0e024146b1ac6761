"""BERT / RoBERTa against transformers beyond plain parity (every head: test_families.py): token types, inputs_embeds,
training gradients, gradient checkpointing, the TaskModel contract; and the attention masks."""
import kit
import pytest
import torch

from minift.models.attention import attention, build_mask


def reference_hidden(hf_model, **inputs):
    with torch.no_grad():
        return hf_model(**inputs).last_hidden_state


@pytest.mark.parametrize("family", kit.ENCODERS)
def test_inputs_embeds_and_token_types_match_transformers(tiny, tiny_batch, family):
    t = tiny(family, None, type_vocab_size=2)
    ref, model = t.hf, t.load()
    ids, mask = tiny_batch(family).values()
    B, T = ids.shape
    types = (torch.arange(T) >= 4).long().expand(B, T)
    embeds = torch.randn(B, T, 32)
    torch.testing.assert_close(model(input_ids=ids, attention_mask=mask, token_type_ids=types),
                               reference_hidden(ref, input_ids=ids, attention_mask=mask, token_type_ids=types),
                               atol=1e-4, rtol=0)
    torch.testing.assert_close(model(inputs_embeds=embeds, attention_mask=mask),
                               reference_hidden(ref, inputs_embeds=embeds, attention_mask=mask),
                               atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="exactly one"):
        model(input_ids=ids, inputs_embeds=embeds)


def test_train_mode_gradients_match_transformers(tiny, tiny_batch):
    t = tiny("bert", "classification", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    ref, model = t.hf, t.load().train()
    ref.train()
    b = tiny_batch("bert")
    labels = torch.tensor([0, 2, 1])
    loss = torch.nn.functional.cross_entropy(model(**b), labels)
    loss.backward()
    ref(**b, labels=labels).loss.backward()
    ref_grads = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[name].grad, atol=1e-5, rtol=1e-4, msg=name)


def test_gradient_checkpointing_recomputes_blocks_with_same_gradients(tiny, tiny_batch):
    t = tiny("bert", "token-classification", num_labels=4, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    b = tiny_batch("bert")
    grads, calls = [], []
    for checkpointing in (False, True):
        model = t.load().train()
        model.gradient_checkpointing = checkpointing
        assert model.backbone.gradient_checkpointing is checkpointing
        hook = model.blocks[0].register_forward_pre_hook(lambda *args, c=checkpointing: calls.append(c))
        model(**b).square().sum().backward()
        hook.remove()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert calls.count(False) == 1 and calls.count(True) == 2  # checkpointing re-ran block 0 in backward
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], msg=name)


def test_task_model_exposes_contract_attributes(tiny):
    model = tiny("roberta", "classification").load()
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

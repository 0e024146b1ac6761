"""Evaluation helpers against references: greedy generation equals transformers' generate; token-classification
predictions keep the labelled positions only."""
import torch
from trainkit import collate, tiny_bert, tiny_llama
from transformers import LlamaForCausalLM

from minift.train.evaluate import generate_labels, predict


def test_batched_greedy_generation_matches_transformers(tmp_path):
    model = tiny_llama(tmp_path).eval()
    reference = LlamaForCausalLM.from_pretrained(tmp_path / "llama").eval()
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(1, 100, (t,), generator=g) for t in (3, 8, 5)]
    batch = collate([{"input_ids": p, "labels": torch.tensor(0)} for p in prompts])  # right-padded
    eos = 7
    ours, _ = generate_labels(model, [batch], decode=list, parse=lambda tokens: tokens, max_new_tokens=6,
                              eos_id=eos, precision="fp32", device=torch.device("cpu"))
    for prompt, generated in zip(prompts, ours):
        out = reference.generate(prompt[None], max_new_tokens=6, do_sample=False, eos_token_id=eos, pad_token_id=0)
        expected = out[0, len(prompt):].tolist()
        if eos in expected:
            expected = expected[:expected.index(eos)]
        assert generated == expected


def test_token_predictions_use_labelled_positions_only(tmp_path):
    model = tiny_bert(tmp_path, num_labels=5, head="token-classification")
    rows = [{"input_ids": torch.randint(1, 100, (t,)), "labels": torch.tensor([-100] + [1, -100, 3] * (t // 3))[:t]}
            for t in (7, 4)]
    batch = collate(rows)
    predictions, labels = predict(model, [batch], "token-classification", "fp32", torch.device("cpu"))
    logits = model.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    for i, row in enumerate(batch["labels"]):
        keep = row != -100
        assert labels[i] == row[keep].tolist()
        assert predictions[i] == logits[i][keep].argmax(-1).tolist()



"""LoRA on the real MiniLM-L6-H384 checkpoint: the minift-exported adapter, loaded by peft onto transformers'
BertModel, gives the same hidden states; merged and unmerged outputs agree."""
import pytest
import torch

from minift.models import load_pretrained
from minift.peft import apply, export_peft, merge, unmerge

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")


@pytest.mark.slow
def test_minilm_lora_export_matches_peft_on_transformers(minilm_dir, tmp_path):
    ours = apply(load_pretrained(minilm_dir), "lora", r=8, alpha=16)
    with torch.no_grad():
        for p in ours.parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)
    ids = torch.randint(1000, ours.config.vocab_size, (2, 16))
    ids[:, 0] = 101  # [CLS]
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0
    with torch.no_grad():
        got = ours(input_ids=ids, attention_mask=mask)
    reference = peft.PeftModel.from_pretrained(transformers.BertModel.from_pretrained(minilm_dir),
                                               export_peft(ours, tmp_path / "adapter")).eval()
    with torch.no_grad():
        want = reference(input_ids=ids, attention_mask=mask).last_hidden_state
    keep = mask.bool()
    torch.testing.assert_close(got[keep], want[keep], rtol=0, atol=1e-4)
    merge(ours)
    with torch.no_grad():
        merged = ours(input_ids=ids, attention_mask=mask)
    unmerge(ours)
    torch.testing.assert_close(merged[keep], got[keep], rtol=0, atol=1e-5)

"""The loop drops an all-ones attention mask on the host (so the model never checks it on the device)."""
import torch

from minift.train.step import model_inputs


def test_all_ones_mask_dropped_padded_mask_kept():
    ids = torch.tensor([[5, 6, 7], [8, 9, 0]])
    unpadded = model_inputs({"input_ids": ids, "attention_mask": torch.ones(2, 3, dtype=torch.long),
                             "labels": torch.tensor([0, 1])}, torch.device("cpu"))
    assert set(unpadded) == {"input_ids"}
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    padded = model_inputs({"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)},
                          torch.device("cpu"))
    assert set(padded) == {"input_ids", "attention_mask", "token_type_ids"}
    assert torch.equal(padded["attention_mask"], mask)

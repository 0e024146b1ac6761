"""save_pretrained writes folders transformers loads with the same outputs, and that load back bit-identically."""
import json

import pytest
import torch
import transformers
from safetensors import safe_open

from minift.models import load_pretrained, save_pretrained

# (family, head and num_labels of the transformers checkpoint saved first (None: bare), our head and num_labels,
#  Auto class that must load our save)
CASES = [
    ("bert", None, 2, None, None, transformers.AutoModel),
    ("bert", None, 2, "classification", 3, transformers.AutoModelForSequenceClassification),
    ("bert", "classification", 1, "regression", None, transformers.AutoModelForSequenceClassification),
    ("bert", None, 2, "token-classification", 4, transformers.AutoModelForTokenClassification),
    ("roberta", None, 2, None, None, transformers.AutoModel),
    ("roberta", None, 2, "classification", 3, transformers.AutoModelForSequenceClassification),
    ("roberta", None, 2, "regression", None, transformers.AutoModelForSequenceClassification),
    ("roberta", None, 2, "token-classification", 4, transformers.AutoModelForTokenClassification),
]


def perturb(model):
    """Change every parameter so the saved file cannot be a copy of the original checkpoint."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)


@pytest.mark.parametrize("family, saved_head, saved_labels, head, num_labels, auto_class", CASES,
                         ids=[f"{f}-{s or 'bare'}-{h}" for f, s, _, h, _, _ in CASES])
def test_save_round_trips_through_transformers(tiny, tiny_batch, tmp_path, family, saved_head, saved_labels, head,
                                               num_labels, auto_class):
    model = tiny(family, saved_head, num_labels=saved_labels).load(head=head, num_labels=num_labels)
    perturb(model)
    save_pretrained(model, tmp_path / "out")

    theirs, info = auto_class.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not info["missing_keys"]
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    theirs.eval()
    b = tiny_batch(family)
    with torch.no_grad():
        ours = model(**b)
        out = theirs(**b)
    expected = out.last_hidden_state if head is None else out.logits
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=0)
    if head == "regression":
        assert theirs.config.problem_type == "regression" and theirs.config.num_labels == 1

    again = load_pretrained(tmp_path / "out", head=head)
    assert again.fresh_keys == [] and again.skipped_keys == []
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name


def test_saved_folder_contents(tiny, tmp_path):
    model = tiny("bert", None).load(head="classification", num_labels=3, dtype=torch.bfloat16)
    model.config.id2label = {0: "neg", 1: "neu", 2: "pos"}
    model.config.label2id = {"neg": 0, "neu": 1, "pos": 2}
    save_pretrained(model, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"] and config["model_type"] == "bert"
    assert config["id2label"] == {"0": "neg", "1": "neu", "2": "pos"}
    with safe_open(str(tmp_path / "out" / "model.safetensors"), "pt") as f:
        assert set(f.keys()) == set(model.state_dict())
        assert f.get_tensor("classifier.weight").dtype == torch.bfloat16
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "out")
    assert hf.config.id2label == {0: "neg", 1: "neu", 2: "pos"}


def test_save_rejects_non_task_models(tmp_path):
    with pytest.raises(TypeError, match="expects a minift TaskModel"):
        save_pretrained(torch.nn.Linear(2, 2), tmp_path)

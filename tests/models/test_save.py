"""save_pretrained writes folders transformers loads with the same outputs, and that load back bit-identically."""
import json

import pytest
import torch
import transformers
from safetensors import safe_open

from minift.models import load_pretrained, save_pretrained

TINY = {"vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 37, "max_position_embeddings": 40}
CASES = [  # (transformers class saved first, our head, num_labels, Auto class that must load our save)
    (transformers.BertModel, None, None, transformers.AutoModel),
    (transformers.BertModel, "classification", 3, transformers.AutoModelForSequenceClassification),
    (transformers.BertForSequenceClassification, "regression", None, transformers.AutoModelForSequenceClassification),
    (transformers.BertModel, "token-classification", 4, transformers.AutoModelForTokenClassification),
    (transformers.RobertaModel, None, None, transformers.AutoModel),
    (transformers.RobertaModel, "classification", 3, transformers.AutoModelForSequenceClassification),
    (transformers.RobertaModel, "regression", None, transformers.AutoModelForSequenceClassification),
    (transformers.RobertaModel, "token-classification", 4, transformers.AutoModelForTokenClassification),
]


def perturb(model):
    """Change every parameter so the saved file cannot be a copy of the original checkpoint."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)


@pytest.mark.parametrize("hf_class, head, num_labels, auto_class", CASES,
                         ids=[f"{c.__name__}-{h}" for c, h, _, _ in CASES])
def test_save_round_trips_through_transformers(tmp_path, hf_class, head, num_labels, auto_class):
    config_class = transformers.RobertaConfig if "Roberta" in hf_class.__name__ else transformers.BertConfig
    hf_class(config_class(**TINY, **({"num_labels": 1} if hf_class.__name__.endswith("Classification") else {}))
             ).save_pretrained(tmp_path / "src", safe_serialization=True)
    model = load_pretrained(tmp_path / "src", head=head, num_labels=num_labels)
    perturb(model)
    save_pretrained(model, tmp_path / "out")

    theirs, info = auto_class.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not info["missing_keys"]
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    theirs.eval()
    pad = model.config.pad_token_id
    ids = torch.randint(3, 100, (2, 8))
    mask = torch.tensor([[1] * 8, [1] * 5 + [0] * 3])
    ids = ids.masked_fill(mask == 0, pad)
    with torch.no_grad():
        ours = model(input_ids=ids, attention_mask=mask)
        out = theirs(input_ids=ids, attention_mask=mask)
    expected = out.last_hidden_state if head is None else out.logits
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=0)
    if head == "regression":
        assert theirs.config.problem_type == "regression" and theirs.config.num_labels == 1

    again = load_pretrained(tmp_path / "out", head=head)
    assert again.fresh_keys == [] and again.skipped_keys == []
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name


def test_saved_folder_contents(tmp_path):
    transformers.BertModel(transformers.BertConfig(**TINY)).save_pretrained(tmp_path / "src")
    model = load_pretrained(tmp_path / "src", head="classification", num_labels=3, dtype=torch.bfloat16)
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

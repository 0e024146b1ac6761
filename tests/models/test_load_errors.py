"""Bad input to load_pretrained: each a clear error naming the problem."""
import json

import kit
import pytest
import torch
from safetensors.torch import load_file, save_file

from minift.models import CheckpointError, ConfigError, ModelLoadError, load_pretrained


@pytest.fixture
def folder(tiny):
    """A valid tiny BertForSequenceClassification checkpoint (3 labels, intermediate size 64) to break."""
    t = tiny("bert", "classification", num_labels=3)
    t.load()  # sanity: it loads before we break it
    return t.folder


def rewrite_weights(folder, edit):
    file = folder / "model.safetensors"
    tensors = load_file(str(file))
    edit(tensors)
    save_file(tensors, str(file), metadata={"format": "pt"})


def test_missing_folder(tmp_path):
    with pytest.raises(ModelLoadError, match=r"model folder .*nope does not exist"):
        load_pretrained(tmp_path / "nope")


def test_file_instead_of_folder(folder):
    with pytest.raises(ModelLoadError, match="is a file, not a model folder"):
        load_pretrained(folder / "config.json")


def test_missing_gguf_file(tmp_path):
    with pytest.raises(ModelLoadError, match="GGUF file .* does not exist"):
        load_pretrained(tmp_path / "model.gguf")


def test_missing_config(folder):
    (folder / "config.json").unlink()
    with pytest.raises(ModelLoadError, match="has no config.json"):
        load_pretrained(folder)


def test_config_not_json(folder):
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"config.json is not valid JSON"):
        load_pretrained(folder)


def test_unknown_model_type(folder):
    kit.edit_config(folder, model_type="t5")
    with pytest.raises(ConfigError, match=r"config.json: unknown model_type 't5'; supported: bert, roberta"):
        load_pretrained(folder)


def test_missing_weights_file(folder):
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="has no model.safetensors or model.safetensors.index.json") as err:
        load_pretrained(folder)
    assert "unpickle" not in str(err.value)


def test_pickle_only_folder_is_refused_with_a_conversion_hint(folder):
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match=r"pytorch_model.bin.*never unpickles.*safe_serialization=True"):
        load_pretrained(folder)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_truncated_or_corrupt_safetensors(folder, damage):
    file = folder / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes({"truncate": data[: len(data) // 2], "garbage": bytes(range(256)) * 8, "empty": b""}[damage])
    with pytest.raises(CheckpointError, match=r"cannot read .*model.safetensors.*truncated or corrupt"):
        load_pretrained(folder)


def test_missing_shard(tiny):
    folder = tiny("bert", None, max_shard_size="20KB").folder
    shard = max(folder.glob("model-*.safetensors"))
    shard.unlink()
    with pytest.raises(CheckpointError, match=f"missing from .*{shard.name}"):
        load_pretrained(folder)


def test_shape_mismatch_lists_the_keys(folder):
    kit.edit_config(folder, intermediate_size=40)
    with pytest.raises(CheckpointError, match=r"mis-shaped keys \(6\).*intermediate.dense.weight: checkpoint "
                                              r"\(64, 32\) vs model \(40, 32\)"):
        load_pretrained(folder, head="classification")


def test_missing_key_is_named(folder):
    rewrite_weights(folder, lambda t: t.pop("bert.encoder.layer.1.output.dense.weight"))
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): \['bert.encoder.layer.1.output.dense.weight'\]"):
        load_pretrained(folder, head="classification")


def test_unexpected_key_is_named(folder):
    rewrite_weights(folder, lambda t: t.update({"bert.encoder.layer.0.adapter.weight": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1\): \['bert.encoder.layer.0.adapter.weight'\]"):
        load_pretrained(folder)


def test_more_layers_in_checkpoint_than_config(folder):
    kit.edit_config(folder, num_hidden_layers=1)
    with pytest.raises(CheckpointError, match=r"unexpected keys \(16\).*bert.encoder.layer.1.*1 layers"):
        load_pretrained(folder)


def test_head_with_other_label_count(folder):
    message = r"classifier.weight: checkpoint \(3, 32\) vs model \(5, 32\).*num_labels=5"
    with pytest.raises(CheckpointError, match=message):
        load_pretrained(folder, head="classification", num_labels=5)


@pytest.mark.parametrize("kwargs, message", [
    ({"head": "summarization"}, "unknown head 'summarization'; use one of classification, regression"),
    ({"head": "causal-lm"}, "head 'causal-lm' is not supported for model_type 'bert'"),
    ({"head": "regression", "num_labels": 3}, "a regression head has one output"),
    ({"num_labels": 3}, "num_labels=3 needs a classification head"),
    ({"head": "classification", "num_labels": 0}, "num_labels must be a positive integer"),
    ({"dtype": "int8"}, "unknown dtype 'int8'"),
    ({"dtype": torch.int64}, "dtype must be a floating torch.dtype"),
])
def test_bad_arguments(folder, kwargs, message):
    with pytest.raises(ModelLoadError, match=message):
        load_pretrained(folder, **kwargs)


def test_index_naming_a_tensor_its_shard_lacks(tiny):
    folder = tiny("bert", None, max_shard_size="20KB").folder
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    key = "encoder.layer.0.output.dense.weight"
    other = next(f for f in set(index["weight_map"].values()) if f != index["weight_map"][key])
    index["weight_map"][key] = other
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=f"cannot read tensor '{key}' from .*{other}"):
        load_pretrained(folder)

"""``--init random`` runs: a model folder without weights (config.json and tokenizer files), a preset with
``--tokenizer``, the errors that say what is missing, and a PEFT run resumed on the same random base; ``--dry-run``
sets up and counts without training."""
import json
import shutil
from pathlib import Path

import pytest

from minift.models import from_config
from minift.peft import apply
from minift.train.build import TrainSetupError
from minift.train.config import TrainConfig
from minift.train.recipe import train_one


@pytest.fixture
def weightless(train_config, tmp_path):
    """The kit's CLI model folder without its weights (config.json and vocab.txt), and a config factory on it."""
    train_config("probe")  # writes the assets
    folder = tmp_path / "weightless"
    folder.mkdir()
    for name in ("config.json", "vocab.txt"):
        shutil.copy(tmp_path / "assets" / "model" / name, folder / name)

    def make(name="run", **overrides):
        return train_config(name, **{"model": str(folder), "init": "random", **overrides})

    return folder, make


def test_a_folder_without_weights_trains(weightless):
    folder, make = weightless
    summary = train_one(make(max_steps=2))
    assert summary["init"] == "random" and summary["steps"] == 2 and summary["test"]
    assert summary["trainable_params"] == sum(p.numel() for p in from_config(folder, head="classification",
                                                                             num_labels=2).parameters())


def test_a_preset_needs_a_tokenizer(weightless, tmp_path):
    folder, make = weightless
    with pytest.raises(TrainSetupError, match="pass --tokenizer PATH"):
        train_one(make(model="bert-base", max_steps=1))
    config = json.loads((folder / "config.json").read_text())
    small = tmp_path / "small-model"
    small.mkdir()
    (small / "config.json").write_text(json.dumps({**config, "vocab_size": 50}))
    with pytest.raises(TrainSetupError, match="tokens but the model's vocabulary has 50"):
        train_one(make("small", model=str(small / "config.json"), tokenizer=str(folder), max_steps=1))


def test_lora_on_a_random_base_resumes_exactly(weightless):
    """The frozen base is drawn again from the run's seed on --resume: stopping after one step and resuming gives
    the run that went through."""
    _, make = weightless
    options = {"method": "lora", "lora": {"r": 4}, "lr": 1e-2, "eval_every": 1, "epochs": 1}
    straight = train_one(make("straight", max_steps=3, **options))
    first = make("split", max_steps=1, **options)
    train_one(first)
    resumed = train_one(TrainConfig(**{**first.to_dict(), "resume": first.output_dir, "max_steps": 3}))
    assert resumed["test"] == straight["test"] and resumed["best_validation"] == straight["best_validation"]


def test_dry_run_counts_and_writes_no_training(weightless):
    folder, make = weightless
    config = make("dry", method="lora", lora={"r": 4, "bias": "all"}, dry_run=True)
    summary = train_one(config)
    expected = apply(from_config(folder, head="classification", num_labels=2), "lora", r=4, bias="all")
    trainable = sum(p.numel() for p in expected.parameters() if p.requires_grad)
    assert (summary["stopped"], summary["steps"], summary["trainable_params"]) == ("dry_run", 0, trainable)
    assert summary["trainable_percent"] == pytest.approx(100 * trainable / summary["all_params"])
    out = Path(config.output_dir)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "config.yaml", "summary.json"]

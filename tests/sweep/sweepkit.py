"""Assets of the sweep tests: tiny model folders that hold only a config.json and tokenizer files (for ``--init
random``), tiny ``file:`` tasks, and the 45-run grid's sweep file (3 models × 3 tasks × 5 seeds)."""
from __future__ import annotations

import json
import random
from pathlib import Path

import kit
import yaml

WORDS = [f"w{i}" for i in range(60)]
SEEDS = [42, 20, 13, 5, 2]  # the course's seeds


def _config(family: str, **changes) -> dict:
    return {"model_type": family, **kit.FAMILIES[family].kwargs, **changes}


def tiny_models(root: Path) -> dict:
    """Three tiny "course models" as folders with a config.json and tokenizer files, no weights: a RoBERTa with a
    byte-pair-free WordLevel tokenizer.json (RoBERTa's <s> ... </s>), a BERT and a "SciBERT" (a BERT with another
    vocabulary order) with WordPiece vocab.txt files. Returns name → folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    root = Path(root)
    folders = {}
    roberta = root / "roberta-tiny"
    roberta.mkdir(parents=True, exist_ok=True)
    (roberta / "config.json").write_text(json.dumps(_config("roberta", hidden_dropout_prob=0.0)))
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    tokenizer.save(str(roberta / "tokenizer.json"))
    folders["roberta-tiny"] = roberta
    for name, words in (("bert-tiny", WORDS), ("scibert-tiny", list(reversed(WORDS)))):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(_config("bert", hidden_dropout_prob=0.0)))
        (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
        folders[name] = folder
    return folders


def tiny_tasks(root: Path, n_train: int = 16, n_test: int = 8) -> dict:
    """Three tiny file: tasks (train/dev/test CSVs): two classifications (is w7 in the text; 3 classes by length)
    and a regression (the share of low words). Returns name → task spec."""
    root = Path(root)
    rng = random.Random(0)
    labels = {"has-w7": lambda ws: int("w7" in ws), "length": lambda ws: min(len(ws) // 4, 2),
              "share": lambda ws: round(sum(int(w[1:]) < 30 for w in ws) / len(ws), 3)}
    tasks = {}
    for name, rule in labels.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for split, n in (("train", n_train), ("dev", n_test), ("test", n_test)):
            lines = ["text,label"]
            for _ in range(n):
                words = rng.choices(WORDS, k=rng.randint(2, 11))
                lines.append(f"{' '.join(words)},{rule(words)}")
            (folder / f"{split}.csv").write_text("\n".join(lines) + "\n")
        tasks[name] = f"file:{folder / 'train.csv'},{folder / 'dev.csv'},{folder / 'test.csv'}"
    return tasks


def grid_file(root: Path, models: dict, tasks: dict, seeds: list = SEEDS, **shared) -> Path:
    """A sweep file of models × tasks × seeds (random init, one step) with ``shared`` config keys."""
    data = {"grid": {"model": [str(p) for p in models.values()], "task": list(tasks.values()), "seed": seeds},
            "rows": "model", "cols": "task", "output_dir": str(Path(root) / "sweep"), "init": "random",
            "max_steps": 1, "batch_size": 8, "eval_batch_size": 16, "max_length": 16, "plot": False,
            "device": "cpu", "method": "full", **shared}
    path = Path(root) / "grid.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path

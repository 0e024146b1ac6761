"""The command on the real assets: the default MiniLM model found via importlib on AG News, and the causal-LM
path (prompt → generated label word) on Financial PhraseBank with a tiny Llama using SmolLM2's real tokenizer."""
import json

import pytest
import torch

from minift.train.__main__ import main


@pytest.mark.slow
def test_default_model_is_the_installed_minilm(tmp_path, minilm_dir, shared_data):
    out = tmp_path / "run"
    assert main(["--task", "agnews_fs", "--method", "lora", "--max-steps", "2", "--data-dir", str(shared_data),
                 "--output-dir", str(out), "--eval-batch-size", "128", "--plot", "false"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == str(minilm_dir)
    assert summary["test_examples"] == 760 and set(summary["test"]) == {"accuracy", "micro_f1", "macro_f1"}
    assert (out / "best" / "peft_config.json").is_file() and (out / "config.yaml").is_file()


@pytest.mark.slow
def test_causal_lm_task_generates_label_words(tmp_path, smollm2_gguf, shared_data):
    from transformers import LlamaConfig, LlamaForCausalLM

    from minift.models.gguf import load_gguf_tokenizer

    tokenizer = load_gguf_tokenizer(smollm2_gguf)
    folder = tmp_path / "lm"
    config = LlamaConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                         max_position_embeddings=256, bos_token_id=1, eos_token_id=2, tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save(str(folder / "tokenizer.json"))
    out = tmp_path / "run"
    assert main(["--task", "financial_phrasebank_lm", "--model", str(folder), "--method", "full",
                 "--data-dir", str(shared_data), "--max-steps", "40", "--batch-size", "16", "--warmup", "0",
                 "--lr", "1e-2", "--eval-batch-size", "64", "--output-dir", str(out), "--plot", "false"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    losses = [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
              if r["type"] == "train"]
    assert losses[-1] < 0.5 * losses[0]  # the loss is on the label tokens only: it drops fast
    # An unparseable generation scores 0; the model has learnt to answer with a label word, better than chance.
    assert summary["test_examples"] == 842 and summary["accuracy"] > 0.5


@pytest.mark.slow
def test_token_classification_task_reports_entity_scores(tmp_path, minilm_dir, shared_data):
    """bionlp2004 NER with a tiny BERT that uses MiniLM's real tokenizer: entity-level metrics come back."""
    import shutil

    from transformers import BertConfig, BertForTokenClassification

    folder = tmp_path / "ner"
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=128, num_labels=11)
    torch.manual_seed(0)
    BertForTokenClassification(config).save_pretrained(folder)
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        if (minilm_dir / name).is_file():
            shutil.copy(minilm_dir / name, folder / name)
    out = tmp_path / "run"
    assert main(["--task", "bionlp2004", "--model", str(folder), "--method", "full", "--data-dir", str(shared_data),
                 "--max-steps", "30", "--lr", "5e-3", "--warmup", "0", "--max-length", "64",
                 "--eval-batch-size", "256", "--output-dir", str(out), "--plot", "false"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["main_metric"] == "f1" and summary["test_examples"] == 3856
    assert set(summary["test"]) == {"f1", "precision", "recall", "token_accuracy"}
    losses = [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
              if r["type"] == "train"]
    assert losses[-1] < losses[0]
    assert summary["token_accuracy"] > 0.5  # "O" dominates: a model that learnt anything is past half

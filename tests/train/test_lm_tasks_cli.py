"""``python -m minift.train`` on decoder tasks, end to end with a tiny random Llama and a small byte-level BPE
tokenizer: mrpc_lm (prompt tuning and LoRA) on a slice of the real MRPC files, a ``file:`` causal-LM task with a
command-line prompt and label words, instruction tuning (LoRA and full, packed) whose held-out response loss goes
down and selects the best weights as lower-is-better, and the errors of bad prompts, label words and rows."""
import json
from pathlib import Path

import kit
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from minift.train.__main__ import main
from minift.train.flags import resolve_config

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
MRPC_ROWS = {"train.tsv": 48, "dev.tsv": 12, "msr_paraphrase_test.txt": 12}
PROMPT = r"Sentence 1: {text}\nSentence 2: {text_pair}\nParaphrase?"  # as typed in a shell: \n is two characters


def _mrpc_slice(shared_data: Path, root: Path) -> Path:
    """The first rows of each MRPC file, in their own format, under ``root/mrpc``."""
    folder = root / "mrpc"
    folder.mkdir(parents=True)
    for name, rows in MRPC_ROWS.items():
        lines = (shared_data / "mrpc" / name).read_text(encoding="utf-8").splitlines(keepends=True)
        (folder / name).write_text("".join(lines[:rows + 1]), encoding="utf-8")
    return root


def _pairs(root: Path) -> str:
    """A learnable paraphrase-like JSONL task: label 1 when both texts start with the same word."""
    g = torch.Generator().manual_seed(3)
    words = kit.WORDS[:12]
    rows = []
    for i in range(80):
        a, b = (words[int(j)] for j in torch.randint(0, len(words), (2,), generator=g))
        same = i % 2 == 0
        rows.append({"first": f"{a} {words[i % 7]} {words[i % 5]}", "second": f"{a if same else b} {words[i % 3]}",
                     "paraphrase": int(same or a == b)})
    path = root / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f"file:{path}"


def _chats(root: Path) -> str:
    """An instruction set the model can learn: "repeat after me: X" → "X X" (prompt/response and messages rows)."""
    g = torch.Generator().manual_seed(5)
    rows = []
    for i in range(60):
        phrase = " ".join(kit.WORDS[int(j)] for j in torch.randint(0, 20, (3,), generator=g))
        if i % 2:
            rows.append({"prompt": f"repeat after me: {phrase}", "response": f"{phrase} {phrase}"})
        else:
            rows.append({"messages": [{"role": "system", "content": "You repeat twice."},
                                      {"role": "user", "content": f"repeat after me: {phrase}"},
                                      {"role": "assistant", "content": f"{phrase} {phrase}"}]})
    path = root / "chats.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f"file:{path}"


@pytest.fixture(scope="module")
def decoder(tmp_path_factory, shared_data):
    """(root, model folder): a tiny random Llama with a byte-level BPE ``tokenizer.json`` trained on the test texts,
    ``<|im_end|>`` as its EOS and a ChatML template in ``tokenizer_config.json``."""
    transformers = pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("decoder")
    _mrpc_slice(shared_data, root)
    tasks = {"pairs": _pairs(root), "chats": _chats(root)}
    corpus = [line for path in root.rglob("*.*") for line in path.read_text(encoding="utf-8").splitlines()]
    corpus += ["Sentence 1: Sentence 2: Paraphrase? no yes system user assistant repeat after me"] * 20
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=600, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    folder = root / "model"
    ids = {token: tokenizer.token_to_id(token) for token in SPECIAL}
    config = kit.hf_config("llama", vocab_size=tokenizer.get_vocab_size(), max_position_embeddings=512,
                           bos_token_id=ids["<|im_start|>"], eos_token_id=ids["<|im_end|>"],
                           pad_token_id=ids["<|endoftext|>"])
    with torch.random.fork_rng():
        torch.manual_seed(0)
        transformers.LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHATML, "eos_token": "<|im_end|>",
                                                              "bos_token": "<|im_start|>"}))
    return root, folder, tasks


def _run(decoder, out, *args):
    root, folder, _ = decoder
    return main(["--model", str(folder), "--data-dir", str(root), "--output-dir", str(out), "--plot", "false",
                 "--device", "cpu", "--batch-size", "8", "--eval-batch-size", "16", "--log-every", "1", *args])


def _summary(out):
    return json.loads((Path(out) / "summary.json").read_text())


def _evals(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["type"] == "eval"]


@pytest.mark.parametrize(("method", "options"), [("prompt", ["--prompt-length", "4", "--lr", "0.1"]),
                                                 ("lora", ["--lora-r", "4", "--lr", "0.01"])])
def test_mrpc_lm_through_the_command(decoder, tmp_path, method, options):
    out = tmp_path / method
    assert _run(decoder, out, "--task", "mrpc_lm", "--method", method, "--max-steps", "3", "--max-length", "128",
                *options) == 0
    summary = _summary(out)
    assert summary["task"] == "mrpc_lm" and summary["test_examples"] == MRPC_ROWS["msr_paraphrase_test.txt"]
    assert 0 <= summary["accuracy"] <= 1 and 0 <= summary["f1"] <= 1 and summary["steps"] == 3
    assert summary["trainable_params"] < summary["all_params"] / 5


def test_file_causal_lm_task_with_prompt_and_label_words(decoder, tmp_path):
    _, _, tasks = decoder
    args = ["--task", tasks["pairs"], "--task-kind", "causal-lm", "--text-column", "first", "--text-pair-column",
            "second", "--label-column", "paraphrase", "--prompt", PROMPT, "--label-words", "no,yes", "--method",
            "full", "--lr", "3e-3", "--epochs", "4", "--max-length", "64"]
    config = resolve_config([*args, "--model", "m"])
    assert config.task_prompt == "Sentence 1: {text}\nSentence 2: {text_pair}\nParaphrase?"  # \n read as a newline
    assert config.label_words == ["no", "yes"]
    assert _run(decoder, tmp_path / "run", *args) == 0
    summary, evals = _summary(tmp_path / "run"), _evals(tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["task_prompt"].count("\n") == 2 and saved["label_words"] == ["no", "yes"]
    assert len(evals) == 4 and all(set(e) >= {"accuracy", "macro_f1"} for e in evals)
    assert summary["accuracy"] > 0.5  # it learned to answer "yes" / "no" (the classes are balanced-ish)


@pytest.mark.parametrize(("args", "message"), [
    (["--prompt", "Is it a paraphrase?"], "lacks {text}"),
    (["--prompt", "{text} {label}"], "names {label}"),
    (["--label-words", "no,yes,maybe"], "3 word(s) for 2 classes"),
    (["--label-words", "no,,yes"], "word 2 is empty"),
    (["--label-words", "No,no"], "have the same word"),
])
def test_bad_prompts_and_label_words_exit_2(decoder, tmp_path, capsys, args, message):
    assert _run(decoder, tmp_path / "run", "--task", "mrpc_lm", "--method", "lora", *args) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert message in err, err
    assert not (tmp_path / "run" / "summary.json").exists()


def test_rows_without_the_columns_exit_2(decoder, tmp_path, capsys):
    _, _, tasks = decoder
    assert _run(decoder, tmp_path / "run", "--task", tasks["pairs"], "--task-kind", "causal-lm", "--text-column",
                "first", "--text-pair-column", "sentence2", "--label-column", "paraphrase") == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "pairs.jsonl, line 1: missing column 'sentence2'" in err, err


@pytest.mark.parametrize(("args", "message"), [
    (["--task", "mrpc_lm", "--packing"], "--packing: options of instruction tuning"),
    (["--task", "sst2", "--prompt", "{text}"], "--prompt: options of causal-LM tasks; task 'sst2' is a "
                                               "classification task (its causal-LM form is sst2_lm)"),
])
def test_options_of_other_task_kinds_exit_2(decoder, tmp_path, capsys, args, message):
    assert _run(decoder, tmp_path / "run", *args) == 2
    assert message in " ".join(capsys.readouterr().err.split())


# --- instruction tuning ------------------------------------------------------------------------------------------

def test_sft_lowers_the_response_loss_and_keeps_the_lowest(decoder, tmp_path):
    _, _, tasks = decoder
    out = tmp_path / "run"
    assert _run(decoder, out, "--task", tasks["chats"], "--task-kind", "sft", "--method", "lora", "--lora-r", "8",
                "--lora-alpha", "32", "--lr", "0.03", "--packing", "--max-length", "96", "--batch-size", "2",
                "--max-steps", "16", "--eval-every", "4", "--sample-answers", "3") == 0
    summary, evals = _summary(out), _evals(out)
    losses = [e["response_loss"] for e in evals]
    assert summary["main_metric"] == "response_loss" and len(losses) >= 3  # every 6 steps and at epoch ends
    assert losses[-1] < losses[0]  # training lowers the held-out loss on the answers
    assert summary["best_validation"] == min(losses)  # lower is better: the lowest is kept ...
    assert summary["best_step"] == evals[losses.index(min(losses))]["step"]  # ... with its step
    assert summary["perplexity"] == pytest.approx(2.718281828 ** summary["response_loss"], rel=1e-6)
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 3 and all(s["prompt"].endswith("<|im_start|>assistant\n") for s in samples)
    assert all(s["answer"] and isinstance(s["generated"], str) for s in samples)


def test_sft_packing_needs_fewer_sequences_and_trains_the_same_tokens(decoder, tmp_path):
    from minift.train.build import build

    _, folder, tasks = decoder
    base = ["--task", tasks["chats"], "--task-kind", "sft", "--model", str(folder), "--max-length", "96",
            "--method", "lora", "--device", "cpu"]
    plain = build(resolve_config(base), torch.device("cpu")).data
    packed = build(resolve_config([*base, "--packing"]), torch.device("cpu")).data
    assert len(packed.train) < len(plain.train) / 2 and len(packed.val) == len(plain.val)
    targets = sorted(t for f in plain.train for t in f["labels"] if t != -100)
    assert sorted(t for f in packed.train for t in f["labels"] if t != -100) == targets
    assert all(len(f["input_ids"]) <= 96 for f in packed.train)


@pytest.mark.parametrize(("args", "message"), [
    (["--packing", "--method", "prompt"], "--packing with --method prompt"),
    (["--chat-template", "missing.jinja"], "--chat-template missing.jinja: no such file"),
])
def test_sft_option_errors_exit_2(decoder, tmp_path, capsys, args, message):
    _, _, tasks = decoder
    assert _run(decoder, tmp_path / "run", "--task", tasks["chats"], "--task-kind", "sft", *args) == 2
    assert message in " ".join(capsys.readouterr().err.split())


def test_prompt_and_label_words_from_yaml(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text('task: mrpc_lm\ntask_prompt: "1: {text}\\n2: {text_pair}\\nSame?"\n'  # YAML's own escapes
                    "label_words: [different, same]\n")
    config = resolve_config(["--config", str(path)])
    assert config.task_prompt == "1: {text}\n2: {text_pair}\nSame?" and config.label_words == ["different", "same"]
    flag = resolve_config(["--config", str(path), "--prompt", r"{text}\t{text_pair}"])  # the command line wins
    assert flag.task_prompt == "{text}\t{text_pair}"
    assert resolve_config(["--task", "mrpc_lm"]).max_length == 192  # configs/mrpc_lm.yaml
    (tmp_path / "bad.yaml").write_text("task: mrpc_lm\nprompt: '{text}'\n")
    with pytest.raises(ValueError, match="the prompt of a causal-LM task is task_prompt"):
        resolve_config(["--config", str(tmp_path / "bad.yaml")])

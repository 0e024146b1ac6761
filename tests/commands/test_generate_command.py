"""``python -m minift.generate``: the printed text is ``minift.models.generate``'s greedy continuation (alone and in
a padded batch), sampling repeats with its seed, ``--adapter`` generates with a run's weights, ``--chat`` renders
the checkpoint's chat template, and mistakes are one-line errors (exit 2)."""
from __future__ import annotations

import pytest
import torch
from cmdkit import llama_folder, noisy_lora

from minift.data.tokenizer import load_tokenizer
from minift.generate.__main__ import main
from minift.models import load_pretrained
from minift.models.generate import generate
from minift.peft import apply, save_trainable

PROMPTS = ["the cat sat", "a dog ran in the park and"]


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return llama_folder(tmp_path_factory.mktemp("generate"))


def _continuation(model, tokenizer, text: str, n: int = 6, special_tokens: bool = True) -> str:
    ids = torch.tensor([tokenizer.encode(text, add_special_tokens=special_tokens).ids])
    new = generate(model.eval(), ids, max_new_tokens=n, eos_token_id=2)[0, ids.shape[1]:].tolist()
    return tokenizer.decode(new[:new.index(2)] if 2 in new else new, skip_special_tokens=True)


def test_greedy_text_alone_and_batched(llama, capsys):
    model, tokenizer = load_pretrained(llama), load_tokenizer(llama)
    expected = [_continuation(model, tokenizer, p) for p in PROMPTS]
    assert any(expected)
    assert main(["--model", str(llama), "--prompt", PROMPTS[0], "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out == expected[0] + "\n"
    args = ["--model", str(llama), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--max-new-tokens", "6"]
    assert main(args) == 0  # left-padded together, each row as alone
    assert capsys.readouterr().out == f"--- [1] ---\n{expected[0]}\n--- [2] ---\n{expected[1]}\n"


def test_sampling_repeats_with_its_seed(llama, capsys):
    args = ["--model", str(llama), "--prompt", PROMPTS[0], "--max-new-tokens", "12", "--temperature", "1.5"]
    outputs = []
    for seed in ("1", "1", "2"):
        assert main([*args, "--seed", seed]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] != outputs[2]


def test_adapter_generates_with_the_runs_weights(llama, tmp_path, capsys):
    model = noisy_lora(apply(load_pretrained(llama), "lora", r=4, targets=["q_proj", "v_proj", "down_proj"]), 0.5)
    best = save_trainable(model, tmp_path / "best")  # a PEFT best/ folder on its own (--model: its base)
    tokenizer = load_tokenizer(llama)
    expected = _continuation(model, tokenizer, PROMPTS[1])
    assert expected != _continuation(load_pretrained(llama), tokenizer, PROMPTS[1])
    assert main(["--model", str(llama), "--adapter", str(best), "--prompt", PROMPTS[1], "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out == expected + "\n"


def test_chat_renders_the_checkpoints_template(llama, capsys):
    model, tokenizer = load_pretrained(llama), load_tokenizer(llama)
    rendered = "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    expected = _continuation(model, tokenizer, rendered, special_tokens=False)
    args = ["--model", str(llama), "--chat", "--system", "be brief", "--prompt", "hello", "--max-new-tokens", "6"]
    assert main(args) == 0
    assert capsys.readouterr().out == expected + "\n"


@pytest.mark.parametrize(("args", "message"), [
    (["--system", "x"], "--system needs --chat"),
    (["--top-p", "1.5"], "--top-p in (0, 1]"),
    (["--adapter", "no/such/run"], "is not a folder"),
])
def test_user_errors_are_one_line(llama, args, message, capsys):
    assert main(["--model", str(llama), "--prompt", "x", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_an_encoder_cannot_generate(tmp_path, capsys):
    import kit

    bert = kit.make_tiny(tmp_path, "bert", None).folder
    assert main(["--model", str(bert), "--prompt", "x"]) == 2
    assert "needs a decoder" in capsys.readouterr().err

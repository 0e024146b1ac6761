"""``python -m minift.export``: a LoRA run of a tiny Llama (trained by ``python -m minift.train`` on
financial_phrasebank_lm) as a GGUF file, an HF folder and a peft adapter, each loaded back — by minift, by
transformers (``gguf_file=``, ``from_pretrained``) and by peft — with the run's logits; a run on a GGUF base keeps
its tokenizer; what cannot be merged or written is refused in one line, and nothing is overwritten by default."""
from __future__ import annotations

import json

import kit
import pytest
import torch
from cmdkit import CHATML, LLAMA, llama_folder, summary, train_run

from minift.data.tokenizer import load_tokenizer
from minift.eval.__main__ import main as evaluate
from minift.eval.trained import find_trained
from minift.export.__main__ import main
from minift.export.run import load_run
from minift.models import load_pretrained
from minift.models.gguf_write import vocab_from_tokenizer, write_gguf

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")
TOLERANCE = {"f32": 1e-5, "f16": 5e-4, "q8_0": 2e-2}  # vs the unmerged LoRA model in fp32 (see test_gguf_write.py)


def _batch():
    with torch.random.fork_rng():  # the same batch wherever it is drawn (fixtures run at other RNG states)
        torch.manual_seed(0)
        b = kit.batch("llama", B=3, T=12, vocab=LLAMA["vocab_size"], padding="left")
    return b["input_ids"], b["attention_mask"]


def _logits(model, ids, mask):
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask)
    return getattr(out, "logits", out)[mask.bool()]


def _lm_run(root, shared_data, model, method="lora", *extra):
    return train_run(root / method, "financial_phrasebank_lm", model, method, "--max-steps", "3", "--lr", "0.05",
                     "--data-dir", str(shared_data), *extra)


@pytest.fixture(scope="module")
def lora(tmp_path_factory, shared_data):
    """(run folder, base model folder, the run's model's logits on ``_batch()``)."""
    root = tmp_path_factory.mktemp("export")
    model = llama_folder(root)
    run = _lm_run(root, shared_data, model, "lora", "--lora-targets", "q_proj,v_proj,down_proj")
    trained, ids_mask = load_run(find_trained(run)).model, _batch()
    base = _logits(load_pretrained(model), *ids_mask)
    expected = _logits(trained, *ids_mask)
    assert (expected - base).abs().max() > 1e-3  # the run's update matters at the scale compared below
    return run, model, expected


@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0"])
def test_gguf_loads_in_minift_and_transformers_with_the_runs_logits(lora, dtype, tmp_path, capsys):
    run, _, expected = lora
    out = tmp_path / f"model-{dtype}.gguf"
    assert main(["--run", str(run), "--format", "gguf", "--dtype", dtype, "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    ids, mask = _batch()
    ours = _logits(load_pretrained(out), ids, mask)
    theirs = _logits(transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=out.name).eval(), ids, mask)
    for got in (ours, theirs):
        torch.testing.assert_close(got, expected, atol=TOLERANCE[dtype], rtol=0)
    meta = gguf.GGUFReader(str(out)).fields
    assert meta["general.name"].contents() == run.name
    assert meta["tokenizer.chat_template"].contents() == CHATML  # the checkpoint's own travels along


def test_hf_folder_and_peft_adapter(lora, tmp_path):
    run, model, expected = lora
    ids, mask = _batch()
    assert main(["--run", str(run), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in (tmp_path / "hf").iterdir()}
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    torch.testing.assert_close(_logits(hf, ids, mask), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(_logits(load_pretrained(tmp_path / "hf"), ids, mask), expected, atol=1e-5, rtol=0)

    peft = pytest.importorskip("peft")
    assert main(["--run", str(run / "best"), "--format", "peft", "--out", str(tmp_path / "peft")]) == 0
    adapted = peft.PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(model),
                                             tmp_path / "peft").eval()
    torch.testing.assert_close(_logits(adapted, ids, mask), expected, atol=1e-5, rtol=0)


def test_the_exported_folder_scores_as_the_run(lora, tmp_path, shared_data):
    run, _, _ = lora
    assert main(["--run", str(run), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    common = ["--task", "financial_phrasebank_lm", "--data-dir", str(shared_data), "--max-length", "48"]
    assert evaluate([*common, "--model", str(tmp_path / "hf"), "--output-dir", str(tmp_path / "e")]) == 0
    assert summary(tmp_path / "e")["test"] == summary(run)["test"]


def test_nothing_is_overwritten_without_overwrite(lora, tmp_path, capsys):
    run, _, _ = lora
    out = tmp_path / "m.gguf"
    out.write_bytes(b"keep")
    assert main(["--run", str(run), "--format", "gguf", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == b"keep"
    assert main(["--run", str(run), "--format", "gguf", "--out", str(out), "--overwrite"]) == 0
    assert out.read_bytes()[:4] == b"GGUF" and not list(tmp_path.glob(".*tmp*"))
    assert main(["--run", str(run), "--format", "gguf"]) == 0  # the default place: inside the run folder
    assert (run / "export" / "model-f16.gguf").is_file()


def test_a_gguf_base_keeps_its_tokenizer(tmp_path, shared_data):
    folder = llama_folder(tmp_path, "source")
    source = load_pretrained(folder)
    tokenizer = load_tokenizer(folder)
    base = write_gguf(source, tmp_path / "base.gguf", vocab_from_tokenizer(tokenizer, source.config, CHATML), "f32")
    run = _lm_run(tmp_path, shared_data, base)
    assert main(["--run", str(run), "--format", "gguf", "--dtype", "f32", "--out", str(tmp_path / "out.gguf")]) == 0
    fields = [{k: f.contents() for k, f in gguf.GGUFReader(str(p)).fields.items() if k.startswith("tokenizer.")}
              for p in (base, tmp_path / "out.gguf")]
    assert fields[0] == fields[1]
    assert main(["--run", str(run), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    rebuilt, original = load_tokenizer(tmp_path / "hf"), load_tokenizer(base)
    text = "Operating profit rose 12% <|im_end|>"
    assert rebuilt.encode(text).ids == original.encode(text).ids
    settings = json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())
    assert settings["eos_token"] == "<|im_end|>" or settings["eos_token"] == tokenizer.id_to_token(2)
    ids, mask = _batch()
    expected = _logits(load_run(find_trained(run)).model, ids, mask)
    torch.testing.assert_close(_logits(load_pretrained(tmp_path / "hf"), ids, mask), expected, atol=1e-5, rtol=0)


def test_what_cannot_be_exported_is_refused(tmp_path, shared_data, capsys):
    model = llama_folder(tmp_path)
    prompt = _lm_run(tmp_path, shared_data, model, "prompt", "--prompt-length", "4")
    for fmt in ("gguf", "hf"):
        assert main(["--run", str(prompt), "--format", fmt, "--out", str(tmp_path / fmt)]) == 2
        err = capsys.readouterr().err
        assert "cannot be merged" in err and "Traceback" not in err
        assert not (tmp_path / fmt).exists()
    assert main(["--run", str(prompt), "--format", "peft", "--out", str(tmp_path / "peft")]) == 0  # a soft prompt
    capsys.readouterr()
    bert, task = kit.cli_assets(tmp_path / "bert", n_train=32, n_test=8)
    classifier = train_run(tmp_path / "cls", task, bert, "full", "--max-steps", "1")
    assert main(["--run", str(classifier), "--format", "gguf", "--out", str(tmp_path / "c.gguf")]) == 2
    assert "'bert'" in capsys.readouterr().err
    assert main(["--run", str(classifier), "--format", "peft", "--out", str(tmp_path / "c")]) == 2
    assert "full fine-tuning run has no adapter" in capsys.readouterr().err
    assert main(["--run", str(tmp_path / "nothing"), "--format", "hf"]) == 2


def test_an_instruction_tuned_run_carries_the_template_it_was_tuned_with(tmp_path):
    from minift.data.chat import PLAIN_TEMPLATE

    model = llama_folder(tmp_path)
    (model / "tokenizer_config.json").unlink()  # a checkpoint without a chat template: the run uses the plain one
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"say {w}", "response": w}) + "\n" for w in kit.WORDS[:24]))
    run = train_run(tmp_path / "sft", f"file:{data}", model, "lora", "--task-kind", "sft", "--max-steps", "2",
                    "--chat-template", "plain", "--max-length", "48")
    assert main(["--run", str(run), "--format", "gguf", "--out", str(tmp_path / "m.gguf")]) == 0
    assert gguf.GGUFReader(str(tmp_path / "m.gguf")).fields["tokenizer.chat_template"].contents() == PLAIN_TEMPLATE
    assert main(["--run", str(run), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    settings = json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())
    assert settings["chat_template"] == PLAIN_TEMPLATE

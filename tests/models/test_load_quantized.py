"""Quantisation while loading: ``load_pretrained(path, quantize="nf4")`` (safetensors, sharded or not, and GGUF)
gives exactly the model that quantising the loaded fp model gives, and holds at most the 4-bit model plus one
tensor while it reads (peak resident memory of a load, measured in a fresh process, below the bf16 size)."""
from __future__ import annotations

import json
import subprocess
import sys

import kit
import pytest
import torch
from torch import nn

from minift.models import ModelLoadError, load_pretrained
from minift.quant import NF4Config, nf4_layers, quantize_model


def _same_model(got: nn.Module, expected: nn.Module, batch: dict) -> None:
    state, reference = got.state_dict(), expected.state_dict()
    assert state.keys() == reference.keys()
    assert all(state[k].dtype == reference[k].dtype and torch.equal(state[k], reference[k]) for k in state)
    with torch.no_grad():
        assert torch.equal(got(**batch), expected(**batch))


@pytest.mark.parametrize("family,head", [("llama", "causal-lm"), ("bert", "classification"),
                                         ("gpt2", "causal-lm"), ("qwen2", "causal-lm")])
def test_quantised_load_equals_quantising_the_loaded_model(tiny, family, head):
    checkpoint = tiny(family, head)
    batch = kit.batch(family)
    got = checkpoint.load(quantize="nf4")
    expected = quantize_model(checkpoint.load())
    assert len(nf4_layers(got)) == len(nf4_layers(expected)) > 0
    assert all(type(m) is nn.Linear for m in got.modules() if isinstance(m, nn.Linear))  # the head stays fp
    _same_model(got, expected, batch)
    assert not any(t.is_meta for t in got.state_dict().values())
    assert got.fresh_keys == expected.fresh_keys and got.skipped_keys == expected.skipped_keys


def test_quantised_load_options_dtype_and_shards(tiny):
    checkpoint = tiny("llama", "causal-lm", max_shard_size="20KB")
    config = NF4Config(double_quant=False, targets=("q_proj", "down_proj"), compute_dtype=torch.bfloat16)
    got = checkpoint.load(quantize=config, dtype="bfloat16")
    # the weights are quantised as the checkpoint stores them (fp32 here), not rounded to bf16 first
    expected = quantize_model(checkpoint.load(), config).to(torch.bfloat16)
    assert sorted({n.rpartition(".")[2] for n in nf4_layers(got)}) == ["down_proj", "q_proj"]
    layer = got.blocks[0].self_attn.q_proj
    assert (layer.dtype, layer.compute_dtype, layer.double_quant) == (torch.bfloat16, torch.bfloat16, False)
    _same_model(got, expected, kit.batch("llama"))


def test_quantised_load_errors(tiny):
    checkpoint = tiny("llama", "causal-lm")
    with pytest.raises(ModelLoadError, match="unknown quantization 'int8'"):
        checkpoint.load(quantize="int8")
    with pytest.raises(ModelLoadError, match=r"match no linear layer.*q_proj"):
        checkpoint.load(quantize=NF4Config(targets=("query",)))


def _write_gguf(hf_model, path) -> None:
    """A tiny Llama as llama.cpp writes it (Q/K permuted, F32 tensors; no tokenizer: loading weights needs none)."""
    gguf = pytest.importorskip("gguf")
    from minift.models.gguf import permute_qk

    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    c = hf_model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    for key, tensor in hf_model.state_dict().items():
        t = tensor.detach().float()
        if key.endswith("q_proj.weight"):
            t = permute_qk(t, c.num_attention_heads)
        elif key.endswith("k_proj.weight"):
            t = permute_qk(t, c.num_key_value_heads)
        special = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                   "lm_head.weight": "output.weight"}
        if key in special:
            name = special[key]
        else:
            _, _, i, rest = key.split(".", 3)
            module, param = rest.rsplit(".", 1)
            name = f"blk.{i}.{names[module]}.{param}"
        w.add_tensor(name, t.numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_quantised_gguf_load_equals_quantising_the_loaded_model(tmp_path):
    hf = kit.hf_model("llama", "causal-lm", tie_word_embeddings=False)
    _write_gguf(hf, tmp_path / "tiny.gguf")
    got = load_pretrained(tmp_path / "tiny.gguf", quantize="nf4")
    expected = quantize_model(load_pretrained(tmp_path / "tiny.gguf"))
    assert len(nf4_layers(got)) == 14
    _same_model(got, expected, kit.batch("llama", padding=None))


# --- peak memory while loading: fresh processes; RSS from /proc, live tensor bytes from the profiler's events ----

MEASURE = """
import ctypes, gc, json, sys, torch
from torch.profiler import ProfilerActivity, profile
from minift.models import load_pretrained
from minift.quant import quantized_bytes
def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))
def load():
    return load_pretrained(sys.argv[1], dtype=torch.bfloat16, quantize=None if sys.argv[2] == "none" else sys.argv[2])
if sys.argv[3] == "allocated":  # replay the CPU allocator's events: the peak of live tensor bytes
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        model = load()
    current = peak = 0
    for _, n in sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                       if e.name() == "[memory]"):
        current += n
        peak = max(peak, current)
    print(json.dumps({"allocated": peak, "bytes": quantized_bytes(model)}))
    sys.exit()
model = load()
del model  # warm-up: the first meta build imports ~75 MB of modules (sympy, ...), which are not the load's memory
gc.collect()
ctypes.CDLL("libc.so.6").malloc_trim(0)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # VmHWM := VmRSS: the peak from here on
before = status("VmRSS")
model = load()
peak, held = status("VmHWM") - before, status("VmRSS") - before
ctypes.CDLL("libc.so.6").malloc_trim(0)
trimmed = status("VmRSS") - before
for t in model.state_dict().values():
    t.sum()  # use every tensor once: a memory-mapped bf16 load's pages become resident only now
print(json.dumps({"peak": peak, "held": held, "trimmed": trimmed, "used": status("VmRSS") - before,
                  "bytes": quantized_bytes(model)}))
"""


def load_memory(folder, quantize: str | None) -> dict:
    """What a bf16 load of ``folder`` costs the host, measured in fresh Python processes (bytes):

    - ``peak`` / ``held``: resident memory the load adds at its peak and at its end (glibc keeps freed memory);
    - ``trimmed``: at the end after ``malloc_trim`` (what is really in use), ``used`` after every tensor has been
      read once (a memory-mapped load's pages become resident only when used);
    - ``allocated``: the peak of live tensor bytes during the load (the CPU profiler's allocation events);
    - ``bytes``: what the model's tensors occupy (``quantized_bytes``).
    """
    def run(mode: str) -> dict:
        out = subprocess.run([sys.executable, "-c", MEASURE, str(folder), quantize or "none", mode],
                             capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    return {**run("rss"), **run("allocated")}


def random_llama_folder(root, hidden=1024, layers=4, intermediate=2816, vocab=1024):
    """A random Llama checkpoint (bf16 safetensors) large enough for its tensors to dwarf the allocator's noise:
    with the defaults 4 blocks of 12.8M weights, 107 MB in bf16."""
    from minift.models import save_pretrained
    from minift.models.config import ModelConfig
    from minift.models.load import build_model
    from minift.models.registry import get_family

    config = ModelConfig.from_hf({"model_type": "llama", "vocab_size": vocab, "hidden_size": hidden,
                                  "intermediate_size": intermediate, "num_hidden_layers": layers,
                                  "num_attention_heads": 16, "num_key_value_heads": 16,
                                  "max_position_embeddings": 256, "tie_word_embeddings": False})
    model = build_model(config, get_family("llama"), "causal-lm").to(torch.bfloat16)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
    save_pretrained(model, root)
    return root


@pytest.mark.slow
def test_peak_memory_of_a_quantised_load_is_the_4bit_model_plus_one_tensor(tmp_path):
    folder = random_llama_folder(tmp_path / "llama")
    bf16, nf4 = load_memory(folder, None), load_memory(folder, "nf4")
    largest = 2816 * 1024  # weights of the largest tensor (an MLP projection)
    assert bf16["used"] > 0.95 * bf16["bytes"] and bf16["allocated"] >= bf16["bytes"]
    assert nf4["bytes"] < 0.3 * bf16["bytes"]
    # live tensors: the 4-bit model, one bf16 tensor and quantize_nf4's temporaries for one chunk of 1M weights
    assert nf4["allocated"] < nf4["bytes"] + 2 * largest + 20 * 2**20, nf4
    assert nf4["trimmed"] == pytest.approx(nf4["bytes"], abs=4 * 2**20)  # what stays is the 4-bit model
    # resident memory: the same plus what glibc keeps of the freed temporaries (measured 0.55-0.68 of the bf16
    # size; it varies from run to run, and malloc_trim gives it back)
    assert nf4["peak"] < 0.8 * bf16["bytes"], (nf4, bf16)

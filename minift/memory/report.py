"""Rendering estimates: a rich table with the methods side by side, the assumptions, and what each term means.

A method that cannot run in the setup (a soft prompt that pushes the sequence past the model's positions, LoRA
targets that match nothing, ...) is an ``Unrunnable`` row: shown with its reason, not an error of the command.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from rich.console import Console
from rich.table import Table

from minift.memory.estimate import Estimate, Setup, usable


@dataclass(frozen=True)
class Unrunnable:
    """A method the estimate refused, and why (the ``ValueError`` a run would raise)."""

    method: str  # its label, e.g. "prompt n=20"
    reason: str

    def to_dict(self) -> dict:
        return {"method": self.method, "error": self.reason}

EXPLANATIONS = {
    "weights": "every parameter × its dtype (fp32 and mixed: 4 B — the fp32 weights are the master copy; pure bf16: "
               "2 B); frozen weights count too, and under bf16/fp16 autocast minift.train stores the frozen nn.Linear "
               "weights and biases once in that dtype (2 B; not under FSDP, nor a tied embedding/LM head or what a "
               "run saves). With --quantize nf4 the block linears are 4-bit codes + one absmax per "
               "64 weights (8-bit with --double-quant, + one fp32 scale per 256 absmax): 0.516 B per weight",
    "dequantised layer": "with --quantize nf4: one block linear's weight dequantised to the compute dtype (bf16 on "
                         "CUDA or under autocast) for one matmul, in forward and again in backward; the 4-bit base "
                         "keeps no fp copy and autocast makes none",
    "gradients": "one gradient per *trainable* parameter, in the weight dtype; frozen weights have none",
    "optimizer states": "AdamW: m and v per trainable parameter in the weight dtype (8 B/param in fp32); SGD: none, "
                        "with momentum one buffer; adamw-8bit: 1 B each + an fp32 scale per 256 (a what-if)",
    "optimizer temporaries": "alive only inside step(): foreach AdamW makes sqrt(v) for all tensors at once; the "
                             "per-tensor loop two temporaries of the largest tensor; fused none; SGD with weight "
                             "decay one of the largest tensor",
    "activations": "tensors autograd keeps for backward, counted op by op (Korthikanti et al. 2022, "
                   "arXiv:2205.05198, adapted per family): fused SDPA keeps q, k, v, output and log-sum-exp, eager "
                   "keeps the T×T probabilities and dropout mask; frozen linears keep no input but norms, "
                   "activations and attention still keep theirs for the input gradient; checkpointing keeps only "
                   "block inputs",
    "logits buffers": "the (B, T, V) logits held by the loop, the loss's fp32 copies and its kept log-softmax, and at "
                      "backward start two (B·T, V) fp32 gradients — large for 128k vocabularies",
    "autocast copies": "mixed precision: bf16/fp16 copies of the weights autocast makes for each matmul and autograd "
                       "keeps for backward — of the trainable linears (full fine-tuning, LoRA's A and B, adapters) and "
                       "a tied LM head; the frozen linears are stored in bf16/fp16 already and copied by none",
    "gathered (FSDP)": "with --gpus N --shard fsdp: FSDP2 all-gathers a unit's whole parameters in the autocast dtype "
                       "(else the weights') for its forward and backward: the root (embeddings, final norm, head; kept "
                       "from forward to the end of backward) and two blocks (the running one and the next, prefetched);"
                       " in backward one block's whole gradients and their fp32 reduce-scatter input. Weights, "
                       "gradients and states are GPU 0's torch.chunk share (1/N, rounded up per tensor); a 4-bit "
                       "base's codes are buffers, which FSDP2 does not shard: whole on every GPU",
    "DDP gradient buckets": "with --gpus N --shard ddp: DistributedDataParallel's flat buckets (25 MiB each) hold a "
                            "copy of every gradient for the whole run (gradient_as_bucket_view is off)",
    "peak": "largest phase of a step (not a sum): forward+loss, backward start, backward through the blocks "
            "(activations freed as gradients appear; with checkpointing one block recomputed), optimizer step "
            "(gradients + states + temporaries)",
}


def human(n: float) -> str:
    """Bytes as GiB / MiB / KiB with 2-3 significant digits."""
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def assumptions(setup: Setup, description: str, head: str | None) -> list[str]:
    lines = [
        f"model: {description}",
        f"head: {head}; batch {setup.batch_size} × {setup.max_length} tokens"
        + (f", {setup.grad_accum} micro-batches per step" if setup.grad_accum > 1 else "")
        + (" (padded, explicit masks)" if setup.padded else " (no padding: causal/flash path)"),
        (f"precision: {setup.precision}; optimizer: {setup.optimizer}; attention: {setup.attention}; "
        f"gradient checkpointing: {'on' if setup.gradient_checkpointing else 'off'}; device: {setup.device}"),
        ("memory counted as torch.cuda.memory_allocated sees it: the CUDA context (~0.5 GiB), cuBLAS workspaces and "
        "allocator fragmentation come on top (nvidia-smi shows more)"),
        ("training step as in minift.train: forward + loss under autocast, backward outside, step, "
        "zero_grad(set_to_none=True); dropout as in the config"),
    ]
    if setup.gpus > 1:
        lines.append(f"per GPU of {setup.gpus} (torchrun, --shard {setup.shard}; batch {setup.batch_size} on each): "
                     + ("parameters, gradients and AdamW states sharded 1/N by FSDP2, a unit's parameters gathered "
                        "whole while it runs" if setup.fsdp else "a whole copy of the model, gradients and states"))
    if setup.quantize:
        lines.append(f"frozen base: the block linears in {setup.quantize.upper()} (QLoRA), blocks of 64"
                     + (", double quantisation" if setup.double_quant else "") + f"; dequantised to "
                     f"{'bf16' if setup.compute_itemsize == 2 else 'fp32'} per matmul")
    return lines


def table(rows: list[Estimate | Unrunnable], title: str) -> Table:
    """Rows = memory terms, columns = methods (a method that cannot run: "—" and "cannot run")."""
    t = Table(title=title, title_justify="left")
    t.add_column("term")
    for r in rows:
        t.add_column(r.method, justify="right")
    results = [r for r in rows if isinstance(r, Estimate)]

    def row(name, values, missing="—"):
        values = iter(values)
        t.add_row(name, *(next(values) if isinstance(r, Estimate) else missing for r in rows))

    row("parameters (trainable)", [f"{r.params.total / 1e6:,.1f}M ({r.params.trainable / 1e6:,.3f}M)" for r in results])
    row("weights", [human(r.weights) for r in results])
    row("gradients", [human(r.gradients) for r in results])
    row("optimizer states", [human(r.optimizer_states) for r in results])
    row("optimizer temporaries", [human(r.optimizer_temporaries) for r in results])
    row("activations / layer", [human(r.activations.largest_layer) for r in results])
    row("activations kept by blocks", [human(r.activations.layers) for r in results])
    row("activations (total)", [human(r.activations.total - r.activations.logits) for r in results])
    row("logits buffers", [human(r.logits_buffers + r.activations.logits) for r in results])
    row("autocast copies", [human(r.autocast_copies) for r in results])
    if any(r.dequantized for r in results):
        row("dequantised layer (transient)", [human(r.dequantized) for r in results])
    if any(r.gathered for r in results):
        row("gathered units (FSDP)", [human(r.gathered) for r in results])
    if any(r.ddp_buckets for r in results):
        row("DDP gradient buckets", [human(r.ddp_buckets) for r in results])
    for phase in results[0].phases if results else ():
        row(f"  phase: {phase}", [human(r.phases[phase]) for r in results])
    row("[bold]peak allocated[/bold]", [f"[bold]{human(r.peak)}[/bold]" for r in results], "[red]cannot run[/red]")
    row("peak phase", [r.peak_phase for r in results])
    row("steady state (after step 2)", [human(r.steady) for r in results])
    return t


def render(console: Console, rows: list[Estimate | Unrunnable], setup: Setup, description: str, head: str | None,
           gpu: int | None = None, batches: dict[str, int] | None = None) -> None:
    """Print the table, the fit on ``gpu`` bytes (with the largest batch per method), assumptions and terms."""
    console.print(table(rows, "Estimated GPU memory of one fine-tuning step"))
    for r in rows:
        if isinstance(r, Unrunnable):
            console.print(f"[red]{r.method} cannot run[/red]: {r.reason}", highlight=False)
    results = [r for r in rows if isinstance(r, Estimate)]
    if gpu is not None:
        console.print(f"\n[bold]GPU {human(gpu)}[/bold] (usable for tensors ≈ {human(usable(gpu))}: 5% kept for "
                      "fragmentation, 0.75 GiB for the CUDA context)")
        for r in results:
            verdict = "[green]fits[/green]" if r.peak <= usable(gpu) else "[red]does not fit[/red]"
            largest = (batches or {}).get(r.method)
            extra = f"; largest batch that fits: {largest}" if largest else "; not even batch 1 fits"
            console.print(f"  {r.method}: peak {human(r.peak)} at batch {setup.batch_size} → {verdict}{extra}")
    console.print("\n[bold]Assumptions[/bold]")
    for line in assumptions(setup, description, head):
        console.print(f"  - {line}")
    console.print("\n[bold]Where the numbers come from[/bold]")
    for name, text in EXPLANATIONS.items():
        console.print(f"  - [italic]{name}[/italic]: {text}")


def to_json(rows: list[Estimate | Unrunnable], setup: Setup, description: str, head: str | None,
            gpu: int | None = None, batches: dict[str, int] | None = None) -> dict:
    """Everything ``render`` prints, as a dict (a method that cannot run: ``{"method", "error"}``)."""
    out = {"model": description, "head": head, "setup": asdict(setup), "methods": [r.to_dict() for r in rows],
           "assumptions": assumptions(setup, description, head)}
    results = [r for r in rows if isinstance(r, Estimate)]
    if gpu is not None:
        out["gpu"] = {"bytes": gpu, "usable": usable(gpu),
                      "fits": {r.method: r.peak <= usable(gpu) for r in results},
                      "largest_batch": dict(batches or {})}
    return out

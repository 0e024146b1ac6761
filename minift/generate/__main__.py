"""``python -m minift.generate --model M [--adapter RUN_DIR[/best]] --prompt TEXT [--prompt TEXT ...]
[--max-new-tokens N] [--temperature T --top-k K --top-p P --seed S] [--stop STR] [--chat [--system TEXT]]``.

Prints each prompt's continuation on stdout (greedy unless a sampling setting is given; ``--temperature 0`` is
greedy). ``--chat`` renders each prompt as a user turn with the checkpoint's chat template. The model, precision,
device and seed flags are ``python -m minift.train``'s; with ``--adapter RUN_DIR`` the run's base model is the
default ``--model``.

Examples::

    python -m minift.generate --model smollm2.gguf --prompt "The capital of France is" --max-new-tokens 8
    python -m minift.generate --adapter runs/sft-lora-X --chat --prompt "Is this news positive? Shares fell 3%."
    python -m minift.generate --model gpt2 --prompt "Once upon a time" --temperature 0.8 --top-p 0.95 --seed 1
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

GENERATE_FIELDS = ("model", "tokenizer", "precision", "device", "seed", "chat_template")  # TrainConfig's ones


def build_parser() -> argparse.ArgumentParser:
    from minift.eval.cli import add_debug_flag
    from minift.train.flags import build_parser as train_parser

    parser = train_parser(fields=GENERATE_FIELDS, methods=False, prog="python -m minift.generate",
                          description="Generate text with a decoder, or with what a run trained on it.")
    parser.add_argument("--adapter", help="what a run trained: RUN_DIR or RUN_DIR/best (its base model is the "
                                          "default --model)")
    parser.add_argument("--prompt", action="append", required=True, help="the text to continue (repeat for a batch)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="tokens to add at most (default: 64)")
    parser.add_argument("--temperature", type=float, help="sample with this temperature (0: greedy; default: greedy)")
    parser.add_argument("--top-k", type=int, help="sample from the k most likely tokens")
    parser.add_argument("--top-p", type=float, help="sample from the smallest set of tokens holding this probability")
    parser.add_argument("--stop", action="append", help="end a continuation at this text (repeatable)")
    parser.add_argument("--chat", action="store_true", help="render each prompt as a user turn with the "
                                                            "checkpoint's chat template")
    parser.add_argument("--system", help="with --chat: a system message before each prompt")
    add_debug_flag(parser)
    return parser


def main(argv: list | None = None) -> int:
    from minift.eval.cli import UsageError, run_command

    def body() -> int:
        from minift.eval.trained import find_trained
        from minift.generate.text import chat_prompts, generate_text, load_generator
        from minift.train.build import pick_device, resolve_model_path
        from minift.train.config import TrainConfig

        args = vars(build_parser().parse_args(argv))
        if args["max_new_tokens"] < 1 or (args["top_k"] is not None and args["top_k"] < 1) or not (
                args["top_p"] is None or 0 < args["top_p"] <= 1) or (args["temperature"] or 0) < 0:
            raise UsageError("--max-new-tokens and --top-k must be ≥ 1, --top-p in (0, 1], --temperature ≥ 0")
        if args["system"] and not args["chat"]:
            raise UsageError("--system needs --chat (the system message goes through the chat template)")
        trained = find_trained(args["adapter"]) if args.get("adapter") else None
        settings = {name: args[name] for name in GENERATE_FIELDS if name in args}
        for name in ("model", "tokenizer"):  # the run's base model and tokenizer, unless given
            if trained is not None and trained.config and settings.get(name) is None:
                settings[name] = trained.config.get(name)
        config = TrainConfig(**settings)
        tokenizer = Path(config.tokenizer).expanduser() if getattr(config, "tokenizer", None) else None
        generator = load_generator(resolve_model_path(config), trained, config.precision, pick_device(config.device),
                                   tokenizer)
        texts = args["prompt"]
        if args["chat"]:
            texts = chat_prompts(generator, texts, args["system"], getattr(config, "chat_template", None))
        outputs = generate_text(generator, texts, max_new_tokens=args["max_new_tokens"],
                                temperature=args["temperature"], top_k=args["top_k"], top_p=args["top_p"],
                                seed=config.seed, stop=args["stop"], special_tokens=not args["chat"])
        for i, text in enumerate(outputs):
            print(f"--- [{i + 1}] ---\n{text}" if len(outputs) > 1 else text, flush=True)
        return 0

    return run_command(body, argv)


if __name__ == "__main__":
    sys.exit(main())

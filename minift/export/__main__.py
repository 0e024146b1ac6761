"""``python -m minift.export --run RUN_DIR --format {gguf,hf,peft} [--dtype f16|q8_0|f32] [--out PATH]
[--overwrite]``: what a run trained, for other tools.

- ``gguf``: the merged causal LM as one llama.cpp file (llama.cpp, Ollama, LM Studio, transformers'
  ``from_pretrained(folder, gguf_file=...)``); ``--dtype`` f16 (default), q8_0 or f32 for the 2-D weights;
- ``hf``: a Hugging Face folder with the LoRA merged and the tokenizer files (transformers, ``--model`` of minift);
- ``peft``: a peft adapter folder (``PeftModel.from_pretrained``) for LoRA and decoder soft prompts.

``--out`` defaults to ``RUN_DIR/export/model-<dtype>.gguf``, ``RUN_DIR/export/hf`` or ``RUN_DIR/export/peft``; an
existing one is kept unless ``--overwrite``. Adapters and soft prompts cannot be merged into plain weights: ``gguf``
and ``hf`` refuse them.
"""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    from minift.eval.cli import add_debug_flag
    from minift.export.run import FORMATS
    from minift.models.gguf_write import DTYPES

    parser = argparse.ArgumentParser(prog="python -m minift.export", description=__doc__.split("\n\n")[0],
                                     allow_abbrev=False)
    parser.add_argument("--run", required=True, help="the run folder (or its best/)")
    parser.add_argument("--format", required=True, choices=FORMATS, help="gguf (llama.cpp), hf (a transformers "
                                                                         "folder) or peft (an adapter)")
    parser.add_argument("--dtype", default="f16", choices=DTYPES, help="GGUF: the type of the 2-D weights "
                                                                      "(default: f16; norms stay f32)")
    parser.add_argument("--out", help="the file (gguf) or folder (hf, peft) to write; default: RUN_DIR/export/...")
    parser.add_argument("--overwrite", action="store_true", help="replace --out when it exists")
    add_debug_flag(parser)
    return parser


def main(argv: list | None = None) -> int:
    from minift.eval.cli import run_command

    def body() -> int:
        from minift.export.run import export_run
        from minift.models.gguf_write import GGUFWriteError

        args = build_parser().parse_args(argv)
        try:
            out = export_run(args.run, args.format, args.dtype, args.out, args.overwrite)
        except GGUFWriteError as err:
            from minift.eval.cli import UsageError

            raise UsageError(f"--format gguf: {err}") from None
        print(out, flush=True)
        return 0

    return run_command(body, argv)


if __name__ == "__main__":
    sys.exit(main())

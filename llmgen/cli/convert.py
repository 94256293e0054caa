"""`llmgen convert`: llm.c's GPT-2 model file (.bin) <-> a Hugging Face folder (llmgen.llmc)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="llm.c GPT-2 model file (.bin) <-> Hugging Face folder",
        description="SRC.bin -o DIR: an llm.c model file (magic 20240326, fp32 or bf16) to "
        "model.safetensors + config.json (for -e, from_pretrained). SRC_DIR -o "
        "FILE.bin: a Hugging Face GPT-2 folder or an llmgen checkpoint to llm.c's file.",
    )
    p.add_argument("src", help="an llm.c .bin, or a folder with model.safetensors + config.json")
    p.add_argument("-o", required=True, metavar="DST", help="output folder (from .bin) or .bin file")
    p.add_argument(
        "--dtype",
        choices=("fp32", "bf16"),
        default="fp32",
        help="parameters of a written .bin: fp32 (version 3) or bf16 (version 5) [fp32]",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from llmgen.llmc import convert

    print(convert(args.src, args.o, args.dtype))
    return 0

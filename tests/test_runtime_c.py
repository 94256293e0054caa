"""Tests of templates/common/runtime.h through the C driver tests/c/runtime_driver.c.

The driver is built with gcc as C (gnu11), with g++ as C++17 (the CUDA target's
host dialect) and, where the toolchain has them, with ASan+UBSan; every test
runs against each build. Oracles are independent of the C code: numpy writes the
token shards and a Python re-implementation of llm.c's batch order predicts the
batches; torch/safetensors/transformers write and read the safetensors files.
"""

import json
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ROOT / "templates" / "common" / "runtime.h"
DRIVER_SRC = ROOT / "tests" / "c" / "runtime_driver.c"
WARN = ["-Wall", "-Wextra", "-Werror"]

BUILDS = {
    "c": ["gcc", "-std=gnu11", "-O2", *WARN],
    "cxx": ["g++", "-std=c++17", "-x", "c++", "-O2", *WARN],
    "c-sanitized": [
        "gcc",
        "-std=gnu11",
        "-O1",
        "-g",
        "-fsanitize=address,undefined",
        "-fno-sanitize-recover=undefined",
        *WARN,
    ],
}


def _compile(cmd, src, out):
    return subprocess.run([*cmd, str(src), "-o", str(out), "-lm"], capture_output=True, text=True)


_BUILT = {}


def _driver(name, tmp_path_factory):
    if name not in _BUILT:
        out = tmp_path_factory.mktemp(f"driver-{name}") / "driver"
        res = _compile(BUILDS[name], DRIVER_SRC, out)
        _BUILT[name] = (str(out), res)
    out, res = _BUILT[name]
    if name == "c-sanitized" and res.returncode != 0 and "sanitize" in res.stderr:
        pytest.skip("toolchain lacks ASan/UBSan")
    assert res.returncode == 0, f"{name} build failed:\n{res.stderr}"
    return out


@pytest.fixture(scope="session", params=list(BUILDS))
def driver(request, tmp_path_factory):
    return _driver(request.param, tmp_path_factory)


@pytest.fixture(scope="session")
def sanitized_driver(tmp_path_factory):
    return _driver("c-sanitized", tmp_path_factory)


def run_ok(driver, *args):
    res = subprocess.run([driver, *map(str, args)], capture_output=True, text=True)
    assert res.returncode == 0, f"driver {args} failed ({res.returncode}):\n{res.stderr}"
    assert res.stderr == ""
    return res.stdout


def run_fail(driver, *args):
    """Run expecting llmgen_fail: exit status 1 and one 'error: ...' line; returns the message."""
    # llmgen_fail exits at once, so memory still in use then is no leak
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0")
    res = subprocess.run([driver, *map(str, args)], capture_output=True, text=True, env=env)
    assert res.returncode == 1, f"expected failure, got {res.returncode}:\n{res.stdout}\n{res.stderr}"
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


# ----------------------------------------------------------------------------
# the header alone compiles everywhere, with nothing used and no warnings


@pytest.mark.parametrize(
    "cmd",
    [
        ["gcc", "-std=gnu11", "-Wpedantic", *WARN],
        ["g++", "-std=c++17", "-x", "c++", "-Wpedantic", *WARN],
    ],
    ids=["gcc", "g++"],
)
def test_header_alone_compiles_without_warnings(cmd, tmp_path):
    src = tmp_path / "empty.c"
    src.write_text(f'#include "{RUNTIME}"\nint main(void) {{ return 0; }}\n')
    res = subprocess.run([*cmd, "-c", str(src), "-o", str(tmp_path / "empty.o")], capture_output=True, text=True)
    assert res.returncode == 0 and res.stderr == "", res.stderr


def test_header_compiles_with_nvcc(tmp_path):
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not installed")
    src = tmp_path / "driver.cu"
    src.write_text(f'#include "{DRIVER_SRC}"\n')
    res = subprocess.run(
        ["nvcc", "-std=c++17", "-c", str(src), "-o", str(tmp_path / "driver.o"), "-Xcompiler", "-Wall,-Wextra,-Werror"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    assert "warning" not in res.stderr, res.stderr


# ----------------------------------------------------------------------------
# token shards


def write_shard(path, tokens, fmt="u16", magic=None, version=None, count=None, extra=b""):
    header = np.zeros(256, dtype="<i4")
    header[0] = magic if magic is not None else (20240520 if fmt == "u16" else 20240801)
    header[1] = version if version is not None else (1 if fmt == "u16" else 7)
    header[2] = len(tokens) if count is None else count
    body = np.asarray(tokens, dtype="<u2" if fmt == "u16" else "<u4").tobytes()
    Path(path).write_bytes(header.tobytes() + body + extra)


def oracle_batches(shards, B, T, ops):
    """llm.c's order without shuffling, re-implemented: returns [(state, inputs, targets)], final state."""
    s, pos, out = 0, 0, []
    ops = list(ops)
    while ops:
        op = ops.pop(0)
        if op == "reset":
            s, pos = 0, 0
        elif op == "reopen":
            pass
        elif op == "set":
            s, pos = int(ops.pop(0)), int(ops.pop(0))
        else:
            for _ in range(int(op)):
                state = (s, pos)
                if pos + B * T + 1 > len(shards[s]):
                    s, pos = (s + 1) % len(shards), 0
                buf = np.asarray(shards[s][pos : pos + B * T + 1], dtype=np.int64)
                out.append((state, buf[:-1].tolist(), buf[1:].tolist()))
                pos += B * T
    return out, (s, pos)


def parse_batches(text):
    lines = text.strip().splitlines()
    out = []
    for i in range(0, len(lines) - 1, 3):
        st, inp, tg = lines[i].split(), lines[i + 1].split(), lines[i + 2].split()
        assert st[0] == "state" and inp[0] == "in" and tg[0] == "tg"
        out.append(((int(st[1]), int(st[2])), [int(x) for x in inp[1:]], [int(x) for x in tg[1:]]))
    last = lines[-1].split()
    assert last[0] == "state"
    return out, (int(last[1]), int(last[2]))


def check_batches(driver, pattern, shards, B, T, V, ops):
    got = parse_batches(run_ok(driver, "batches", pattern, B, T, V, *ops))
    want = oracle_batches(shards, B, T, ops)
    assert got == want


def test_batches_uint16_multiple_shards_wraparound(driver, tmp_path):
    rng = np.random.default_rng(0)
    V = 50257
    shards = [rng.integers(0, V, n) for n in (57, 33, 90)]  # uneven lengths, leftovers at the ends
    for i, toks in enumerate(shards):
        write_shard(tmp_path / f"train_{i:06d}.bin", toks)
    # a non-matching file must be ignored by the glob
    write_shard(tmp_path / "val_000000.bin", [V] * 40)
    check_batches(driver, str(tmp_path / "train_*.bin"), shards, 2, 4, V, ["40"])


def test_batches_uint32_large_vocab(driver, tmp_path):
    rng = np.random.default_rng(1)
    V = 128256  # Llama-3: needs uint32 tokens
    shards = [rng.integers(0, V, n) for n in (41, 64)]
    shards[0][3] = V - 1
    for i, toks in enumerate(shards):
        write_shard(tmp_path / f"s{i}.bin", toks, fmt="u32")
    check_batches(driver, str(tmp_path / "s*.bin"), shards, 3, 5, V, ["17"])


def test_batches_sorted_glob_mixed_formats_and_exact_fit(driver, tmp_path):
    # names deliberately created out of order; the last shard holds exactly B*T+1 tokens
    rng = np.random.default_rng(2)
    B, T, V = 2, 3, 1000
    shards = [rng.integers(0, V, 20), rng.integers(0, V, B * T + 1), rng.integers(0, V, 13)]
    write_shard(tmp_path / "d_c.bin", shards[2], fmt="u16")
    write_shard(tmp_path / "d_a.bin", shards[0], fmt="u32")
    write_shard(tmp_path / "d_b.bin", shards[1], fmt="u16")
    check_batches(driver, str(tmp_path / "d_*.bin"), shards, B, T, V, ["15"])


def test_batches_reset_resume_and_set_state(driver, tmp_path):
    rng = np.random.default_rng(3)
    B, T, V = 1, 8, 300
    shards = [rng.integers(0, V, n) for n in (30, 50, 19)]
    for i, toks in enumerate(shards):
        write_shard(tmp_path / f"r{i}.bin", toks)
    pattern = str(tmp_path / "r*.bin")
    ops = ["5", "reopen", "6", "reset", "3", "set", "2", "8", "4", "set", "1", "50", "2"]
    check_batches(driver, pattern, shards, B, T, V, ops)
    # resuming from a saved state gives exactly the batches an uninterrupted run gives
    straight, _ = parse_batches(run_ok(driver, "batches", pattern, B, T, V, "12"))
    resumed, _ = parse_batches(run_ok(driver, "batches", pattern, B, T, V, "7", "reopen", "5"))
    assert straight == resumed


def test_shard_wrong_magic(driver, tmp_path):
    write_shard(tmp_path / "a.bin", range(100))
    write_shard(tmp_path / "b.bin", range(100), magic=20240326)
    msg = run_fail(driver, "batches", tmp_path / "*.bin", 1, 4, 1000, 1)
    assert str(tmp_path / "b.bin") in msg and "magic 20240326" in msg and "version 1" in msg


def test_shard_wrong_version(driver, tmp_path):
    write_shard(tmp_path / "a.bin", range(100), fmt="u32", version=1)
    msg = run_fail(driver, "batches", tmp_path / "a.bin", 1, 4, 1000, 1)
    assert "magic 20240801 version 1" in msg and str(tmp_path / "a.bin") in msg


def test_shard_truncated_and_oversized(driver, tmp_path):
    write_shard(tmp_path / "t.bin", range(100), count=120)
    msg = run_fail(driver, "batches", tmp_path / "t.bin", 1, 4, 1000, 1)
    assert "truncated" in msg and str(1024 + 2 * 120) in msg and str(1024 + 2 * 100) in msg
    write_shard(tmp_path / "o.bin", range(100), fmt="u32", extra=b"\0\0")
    msg = run_fail(driver, "batches", tmp_path / "o.bin", 1, 4, 1000, 1)
    assert "oversized" in msg and str(1024 + 400) in msg and str(1024 + 402) in msg


def test_shard_shorter_than_header(driver, tmp_path):
    (tmp_path / "h.bin").write_bytes(b"\0" * 1000)
    msg = run_fail(driver, "batches", tmp_path / "h.bin", 1, 4, 1000, 1)
    assert str(tmp_path / "h.bin") in msg and "1000 bytes" in msg and "1024" in msg


def test_shard_token_out_of_vocab(driver, tmp_path):
    toks = np.arange(3000) % 500
    toks[2345] = 777  # beyond the first validation chunk boundary is irrelevant; index must be exact
    write_shard(tmp_path / "v.bin", toks)
    msg = run_fail(driver, "batches", tmp_path / "v.bin", 2, 8, 500, 1)
    assert str(tmp_path / "v.bin") in msg and "token 2345" in msg and "777" in msg and "500" in msg


def test_shard_too_short_for_one_batch(driver, tmp_path):
    write_shard(tmp_path / "s.bin", range(16))
    msg = run_fail(driver, "batches", tmp_path / "s.bin", 2, 8, 100, 1)
    assert str(tmp_path / "s.bin") in msg and "16 tokens" in msg and "17" in msg


def test_empty_glob(driver, tmp_path):
    msg = run_fail(driver, "batches", tmp_path / "nothing_*.bin", 1, 4, 100, 1)
    assert msg == f"error: no file matches {tmp_path / 'nothing_*.bin'}"


def test_set_state_out_of_range(driver, tmp_path):
    write_shard(tmp_path / "a.bin", range(40))
    assert "shard index 3" in run_fail(driver, "batches", tmp_path / "a.bin", 1, 4, 100, "set", 3, 0)
    assert "position 41" in run_fail(driver, "batches", tmp_path / "a.bin", 1, 4, 100, "set", 0, 41)


# ----------------------------------------------------------------------------
# safetensors reading


def unescape(s):
    return re.sub(r"\\(.)", lambda m: {"t": "\t", "n": "\n", "\\": "\\"}[m.group(1)], s)


def parse_dump(text):
    meta, tensors, lines = {}, {}, text.split("\n")[:-1]
    i = 0
    while i < len(lines):
        parts = lines[i].split("\t")
        if parts[0] == "meta":
            meta[unescape(parts[1])] = unescape(parts[2])
            i += 1
            continue
        assert parts[0] == "tensor"
        name, dtype, shape = unescape(parts[1]), parts[2], tuple(json.loads(parts[3]))
        vals = lines[i + 1].split()
        assert vals[0] == "values"
        arr = np.array([float(v) for v in vals[1:]], dtype=np.float64).astype(np.float32).reshape(shape)
        tensors[name] = (dtype, arr)
        i += 2
    return meta, tensors


def assert_same_floats(got, want):
    """Bit-exact equality, treating every NaN as equal to every NaN."""
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    assert got.shape == want.shape
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=96, n_positions=16, n_embd=32, n_layer=2, n_head=2)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    d = tmp_path_factory.mktemp("gpt2")
    model.save_pretrained(d)
    assert (d / "model.safetensors").exists()
    return d, model


def test_reads_transformers_checkpoint(driver, gpt2_dir):
    from safetensors import safe_open
    from safetensors.torch import load_file

    d, model = gpt2_dir
    meta, got = parse_dump(run_ok(driver, "st_dump", d / "model.safetensors"))
    want = load_file(d / "model.safetensors")
    with safe_open(d / "model.safetensors", "pt") as f:
        assert meta == f.metadata()
    assert meta.get("format") == "pt"
    assert set(got) == set(want) and len(got) > 10
    state = model.state_dict()
    for name, t in want.items():
        dtype, arr = got[name]
        assert dtype == "F32"
        assert_same_floats(arr, t.numpy())
        assert_same_floats(arr, state[name].numpy())


def test_reads_f32_bf16_f16_exactly(driver, tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    every16 = torch.arange(65536, dtype=torch.int32).to(torch.int16)  # all 16-bit patterns
    tensors = {
        "f32": torch.randn(3, 4, 5, generator=g),
        "f32_special": torch.tensor([0.0, -0.0, float("inf"), -float("inf"), 1e-45, 3.4e38]),
        "bf16": (torch.randn(7, 3, generator=g) * 100).bfloat16(),
        "f16": (torch.randn(2, 2, 9, generator=g) * 100).half(),
        "bf16_every": every16.clone().view(torch.bfloat16),
        "f16_every": every16.clone().view(torch.float16),
        "scalar": torch.tensor(2.5).half(),
        "empty": torch.zeros(0, 3),
    }
    path = tmp_path / "mixed.safetensors"
    save_file(tensors, path, metadata={"note": 'tab\there "quoted" é'})
    meta, got = parse_dump(run_ok(driver, "st_dump", path))
    assert meta == {"note": 'tab\there "quoted" é'}
    assert set(got) == set(tensors)
    for name, t in tensors.items():
        dtype, arr = got[name]
        assert dtype == {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}[t.dtype]
        assert_same_floats(arr, t.float().numpy())


def test_st_find_and_st_load(driver, tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({"w": torch.ones(2, 3), "b": torch.ones(3).bfloat16()}, path, metadata={"format": "pt"})
    assert run_ok(driver, "st_find", path, "b") == "found BF16 [3]\nformat pt\n"
    assert run_ok(driver, "st_find", path, "nope") == "absent\nformat pt\n"
    assert run_ok(driver, "st_load", path, "w", 2, 3) == "ok 6\n"
    msg = run_fail(driver, "st_load", path, "w", 3, 2)
    assert str(path) in msg and '"w"' in msg and "[2, 3]" in msg and "expected [3, 2]" in msg
    msg = run_fail(driver, "st_load", path, "missing", 1)
    assert str(path) in msg and '"missing"' in msg


def handmade(path, header, data=b"", pad=True):
    raw = header.encode() if isinstance(header, str) else header
    if pad:
        raw += b" " * (-len(raw) % 8)
    Path(path).write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def test_json_scanner_escapes_and_nesting(driver, tmp_path):
    # the two-character escapes, \\u escapes (kept as written: the reader looks up ASCII names), odd whitespace,
    # unknown fields with nested values, non-string metadata values: all legal JSON that must parse
    header = (
        '{ "__metadata__" : {"format":"pt","nested":{"a":[1,2,{"b":null}]},"n":-1.5e3,'
        '"esc":"a\\"b\\\\c\\/d\\n\\u00e9\\ud83d\\ude00"},\n'
        '"x\\u00e9\\ud83d\\ude00\\ty" :{"shape":[2],"dtype":"F32","data_offsets":[0,8],'
        '"extra":[true,false,null,{"k":[]}]},\t"s":{"dtype":"F16","shape":[],"data_offsets":[8,10]}}'
    )
    data = struct.pack("<2f", 1.5, -2.0) + np.float16(0.25).tobytes()
    path = handmade(tmp_path / "esc.safetensors", header, data)
    meta, got = parse_dump(run_ok(driver, "st_dump", path))
    assert set(meta) == {"format", "esc"}  # non-strings are skipped
    assert meta["format"] == "pt"
    # as json.loads decodes the two-character escapes; \\uXXXX as written
    want = json.loads(header)["__metadata__"]["esc"].replace("\u00e9\U0001f600", "\\u00e9\\ud83d\\ude00")
    assert meta["esc"] == want == 'a"b\\c/d\n\\u00e9\\ud83d\\ude00'
    assert list(got) == ["x\\u00e9\\ud83d\\ude00\ty", "s"]
    assert_same_floats(got["x\\u00e9\\ud83d\\ude00\ty"][1], [1.5, -2.0])
    assert got["s"][1].shape == () and got["s"][1] == np.float32(0.25)


@pytest.mark.parametrize(
    "case, header, data, expect",
    [
        ("garbage", b"\x89PNG\r\n\x1a\n not json at all", b"", ["malformed", "expected '{'"]),
        ("not_closed", '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}', b"\0" * 4, ["malformed"]),
        ("trailing", "{}xyz", b"", ["malformed", "padding"]),
        ("bad_escape", '{"a\\q":{}}', b"", ["malformed", "escape"]),
        ("float_shape", '{"a":{"dtype":"F32","shape":[1.0],"data_offsets":[0,4]}}', b"\0" * 4, ["integer"]),
        ("negative_offset", '{"a":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}}', b"", ["data_offsets"]),
        (
            "bad_dtype",
            '{"w":{"dtype":"Q7","shape":[1],"data_offsets":[0,4]}}',
            b"\0" * 4,
            ['"w"', '"Q7"', "unsupported"],
        ),
        ("missing_field", '{"w":{"dtype":"F32","data_offsets":[0,4]}}', b"\0" * 4, ['"w"', '"shape"']),
        (
            "out_of_range",
            '{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}',
            b"\0" * 8,
            ['"w"', "[0, 16]", "8-byte data section"],
        ),
        (
            "size_mismatch",
            '{"w":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,16]}}',
            b"\0" * 16,
            ['"w"', "16 bytes", "BF16", "[2, 3]", "12 bytes"],
        ),
        (
            "duplicate",
            '{"w":{"dtype":"F32","shape":[],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[],"data_offsets":[0,4]}}',
            b"\0" * 4,
            ['"w"', "twice"],
        ),
        (
            "too_many_dims",
            '{"w":{"dtype":"F32","shape":[1,1,1,1,1,1,1,1,1],"data_offsets":[0,4]}}',
            b"\0" * 4,
            ["8 dimensions"],
        ),
        ("deep", '{"__metadata__":{"x":' + "[" * 100 + "]" * 100 + "}}", b"", ["deeper"]),
        ("long_name", '{"' + "n" * 300 + '":{"dtype":"F32","shape":[],"data_offsets":[0,4]}}', b"\0" * 4, ["too long"]),
    ],
)
def test_safetensors_bad_header(driver, tmp_path, case, header, data, expect):
    path = handmade(tmp_path / f"{case}.safetensors", header, data)
    msg = run_fail(driver, "st_dump", path)
    assert str(path) in msg
    for e in expect:
        assert e in msg, (e, msg)


def test_safetensors_fuzz_never_crashes(sanitized_driver, tmp_path):
    """Truncated and mutated files must end in a clean exit 0 or a clean 'error:' exit 1 (ASan+UBSan build)."""
    driver = sanitized_driver
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    good = tmp_path / "good.safetensors"
    save_file(
        {"a": torch.randn(2, 3), "b": torch.randn(4).bfloat16(), "c": torch.ones(1).half()},
        good,
        metadata={"format": "pt", "k": "v\\u"},
    )
    raw = good.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    rng = np.random.default_rng(0)
    alphabet = b'{}[]",:0123456789-.eE\\u tfn\x00\xff'
    variants = [raw[:k] for k in range(0, 8 + n + 4, 3)]
    for _ in range(150):
        b = bytearray(raw)
        for _ in range(int(rng.integers(1, 4))):
            b[int(rng.integers(8, 8 + n))] = alphabet[int(rng.integers(len(alphabet)))]
        variants.append(bytes(b))
    variants += [struct.pack("<Q", v) + raw[8:] for v in (0, 1, n - 1, n + 1, 2**63, 2**64 - 1)]
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0")
    for i, data in enumerate(variants):
        path = tmp_path / "fuzz.safetensors"
        path.write_bytes(data)
        res = subprocess.run([driver, "st_dump", str(path)], capture_output=True, env=env)
        res.stderr = res.stderr.decode(errors="replace")  # messages may echo a mutated name
        assert res.returncode in (0, 1), (i, data[: 8 + n], res.stderr)
        if res.returncode == 1:
            assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1, (i, res.stderr)


def test_safetensors_truncated(driver, tmp_path, gpt2_dir):
    d, _ = gpt2_dir
    raw = (d / "model.safetensors").read_bytes()
    short = tmp_path / "short.safetensors"
    short.write_bytes(raw[:5])
    msg = run_fail(driver, "st_dump", short)
    assert str(short) in msg and "5 bytes" in msg
    cut = tmp_path / "cut_header.safetensors"
    cut.write_bytes(raw[:100])
    msg = run_fail(driver, "st_dump", cut)
    assert str(cut) in msg and "header length" in msg and "92 bytes" in msg
    data_cut = tmp_path / "cut_data.safetensors"
    data_cut.write_bytes(raw[:-10])
    msg = run_fail(driver, "st_dump", data_cut)
    assert str(data_cut) in msg and "out of range" in msg
    missing = tmp_path / "missing.safetensors"
    msg = run_fail(driver, "st_dump", missing)
    assert str(missing) in msg and "No such file" in msg


def test_non_float_dtype_is_listed_but_not_read_as_float(driver, tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    path = tmp_path / "ids.safetensors"
    save_file({"w": torch.ones(2), "ids": torch.arange(3)}, path)
    assert run_ok(driver, "st_find", path, "ids").startswith("found I64 [3]")
    msg = run_fail(driver, "st_dump", path)
    assert str(path) in msg and '"ids"' in msg and "I64" in msg


# ----------------------------------------------------------------------------
# safetensors writing


def test_roundtrip_loads_in_safetensors_and_transformers(driver, tmp_path, gpt2_dir):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from safetensors import safe_open
    from safetensors.torch import load_file

    d, model = gpt2_dir
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    shutil.copy(d / "config.json", out_dir / "config.json")
    out = out_dir / "model.safetensors"
    run_ok(driver, "st_roundtrip", d / "model.safetensors", out)
    assert not Path(str(out) + ".tmp").exists()
    raw = out.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert n % 8 == 0
    with safe_open(out, "pt") as f:
        assert f.metadata() == {"format": "pt"}
    want, got = load_file(d / "model.safetensors"), load_file(out)
    assert list(got) == list(json.loads(raw[8 : 8 + n]).keys())[1:]  # file order kept
    assert set(got) == set(want)
    for k in want:
        assert got[k].dtype == torch.float32 and torch.equal(got[k], want[k])
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(out_dir).eval()
    ids = torch.tensor([[1, 5, 7, 2, 90]])
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, model(ids).logits)


def test_roundtrip_converts_half_types_to_f32(driver, tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file, save_file

    src = {"a": torch.randn(5, 3).bfloat16(), "b": torch.randn(4).half(), "c": torch.randn(2, 2)}
    save_file(src, tmp_path / "in.safetensors")
    run_ok(driver, "st_roundtrip", tmp_path / "in.safetensors", tmp_path / "out.safetensors")
    got = load_file(tmp_path / "out.safetensors")
    for k, t in src.items():
        assert got[k].dtype == torch.float32 and torch.equal(got[k], t.float())


def test_write_special_names_scalar_and_empty(driver, tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors import safe_open
    from safetensors.torch import load_file

    out = tmp_path / "special.safetensors"
    out.write_bytes(b"previous contents")
    run_ok(driver, "st_write_special", out)
    got = load_file(out)
    a = torch.tensor([1.0, -2.5, 3.25, 0.0, -0.0, 1e-30])
    weird = 'quote"back\\slash\ttab/é'
    assert list(got) == [weird, "scalar", "empty", "model.layers.0.w"]
    assert torch.equal(got[weird], a.reshape(2, 3))
    assert got["scalar"].shape == () and got["scalar"].item() == 42.0
    assert got["empty"].shape == (0, 5)
    assert torch.equal(got["model.layers.0.w"], a)
    with safe_open(out, "pt") as f:
        assert f.metadata() == {"format": "pt"}
    assert sorted(os.listdir(tmp_path)) == ["special.safetensors"]


# ----------------------------------------------------------------------------
# atomic writes, directories, files


def test_write_file_atomic_replaces_and_keeps_old_on_failure(driver, tmp_path):
    p = tmp_path / "ckpt.bin"
    run_ok(driver, "write_atomic", p, "first")
    run_ok(driver, "write_atomic", p, "second, longer")
    assert p.read_text() == "second, longer"
    assert sorted(os.listdir(tmp_path)) == ["ckpt.bin"]
    (tmp_path / "ckpt.bin.tmp").mkdir()  # the temporary cannot be created
    msg = run_fail(driver, "write_atomic", p, "third")
    assert str(p) + ".tmp" in msg
    assert p.read_text() == "second, longer"
    msg = run_fail(driver, "write_atomic", tmp_path / "no" / "dir" / "f", "x")
    assert str(tmp_path / "no" / "dir" / "f.tmp") in msg and "No such file" in msg


def test_mkdirs(driver, tmp_path):
    target = tmp_path / "a" / "b" / "c"
    run_ok(driver, "mkdirs", str(target) + "//")
    assert target.is_dir()
    run_ok(driver, "mkdirs", target)  # already there: fine
    (tmp_path / "file").write_text("x")
    msg = run_fail(driver, "mkdirs", tmp_path / "file" / "sub")
    assert "Not a directory" in msg or "not a directory" in msg
    msg = run_fail(driver, "mkdirs", tmp_path / "file")
    assert str(tmp_path / "file") in msg and "not a directory" in msg


def test_xfopen_names_path_and_cause(driver, tmp_path):
    msg = run_fail(driver, "fopen", tmp_path / "absent.txt", "rb")
    assert str(tmp_path / "absent.txt") in msg and "No such file or directory" in msg
    assert run_ok(driver, "now") == "1\n"


# ----------------------------------------------------------------------------
# random numbers


def splitmix64_u32(seed, n):
    m = (1 << 64) - 1
    s, out = seed, []
    for _ in range(n):
        s = (s + 0x9E3779B97F4A7C15) & m
        z = s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
        out.append((z ^ (z >> 31)) >> 32)
    return out


@pytest.mark.parametrize("seed", [0, 1337, 2**64 - 1])
def test_rng_u32_is_splitmix64(driver, seed):
    got = [int(x) for x in run_ok(driver, "rng", seed, 50).split()]
    assert got == splitmix64_u32(seed, 50)


def test_rng_uniform_and_normal_statistics(driver):
    lines = dict(l.split(" ", 1) for l in run_ok(driver, "rng_stats", 42, 100000).splitlines())
    umin, umax, umean, non24 = lines["uniform"].split()
    assert 0.0 <= float(umin) < 1e-3 and 1 - 1e-3 < float(umax) < 1.0
    assert abs(float(umean) - 0.5) < 0.005 and int(non24) == 0
    mean, std, zmin, zmax = map(float, lines["normal"].split())
    assert abs(mean) < 0.02 and abs(std - 1.0) < 0.02  # ~6 standard errors at n=1e5
    assert -6.5 < zmin < -3.5 and 3.5 < zmax < 6.5
    assert lines["replay"] == "1"
    assert run_ok(driver, "rng_stats", 42, 1000) == run_ok(driver, "rng_stats", 42, 1000)

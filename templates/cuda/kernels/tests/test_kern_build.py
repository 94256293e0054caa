"""The kernel headers as build artifacts (no GPU or libcuda needed: nvcc -c only).

- Each header compiles alone: with g++ through the emulation (-Wall -Wextra -Werror on the kernel
  headers; the emulation's own headers are included as system headers) and with nvcc
  -c for sm_80 and sm_90a.
- kernels/instantiate.cu instantiates every kernel at the GPT-2 124M (C 768, V 50257 / 50304) and
  Llama-3.1-8B (C 4096, V 128256) shapes, fp32 and bf16; nvcc -Xptxas -v reports registers and spills
  per kernel for sm_80 and sm_90a: every kernel must have ZERO spill bytes. The table is printed
  (pytest -s) and written to <tmp>/ptxas-<arch>.txt.
- The headers pass through the generator's Jinja environment unchanged (the program may include them
  as templates).
Skipped, saying why, where nvcc (CUDA 13.0 here) is not installed."""

import concurrent.futures
import re
import shutil
import subprocess

import pytest

from kern_helpers import DRIVERS, GXX_FLAGS, GXX_INCLUDES, INCLUDES, KERNEL_HEADERS, cuda_include, nvcc_path

HEADERS = ["common.cuh", "norms.cuh", "xent.cuh", "adamw.cuh", "embed.cuh"]
ARCHS = ["sm_80", "sm_90a"]
# the kernels instantiate.cu must produce: per model and storage type 4 norm forwards, 2 norm backwards,
# 2 cross-entropies, 3 embedding kernels; AdamW per storage type; the two of the gradient norm
EXPECTED = 4 * 11 + 2 + 2


def nvcc_or_skip() -> str:
    nvcc = nvcc_path()
    if nvcc is None:
        pytest.skip("nvcc not found: the emulated tests run the same kernels; ptxas needs the CUDA toolkit")
    return nvcc


def nvcc_cmd(nvcc: str, arch: str, src, obj, verbose: bool) -> list[str]:
    return [
        nvcc,
        "-std=c++17",
        "-O3",
        f"-arch={arch}",
        "-c",
        *(["-Xptxas", "-v"] if verbose else []),
        *INCLUDES,
        str(src),
        "-o",
        str(obj),
    ]


@pytest.mark.parametrize("header", HEADERS)
def test_header_alone_emulated_warning_free(tmp_path, header):
    if cuda_include() is None:
        pytest.skip("CUDA headers (cuda_runtime.h) not found")
    src = tmp_path / "alone.cu"
    src.write_text(f'#include "{header}"\nint main() {{ return 0; }}\n')
    cmd = [
        "g++",
        *GXX_FLAGS,
        "-fopenmp",
        "-Wall",
        "-Wextra",
        "-Werror",
        *GXX_INCLUDES,
        f"-I{cuda_include()}",
        str(src),
        "-o",
        str(tmp_path / "a.out"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_instantiations_emulated_warning_free(tmp_path):
    if cuda_include() is None:
        pytest.skip("CUDA headers (cuda_runtime.h) not found")
    cmd = [
        "g++",
        *GXX_FLAGS,
        "-c",
        "-fopenmp",
        "-Wall",
        "-Wextra",
        "-Werror",
        *GXX_INCLUDES,
        f"-I{cuda_include()}",
        str(DRIVERS / "instantiate.cu"),
        "-o",
        str(tmp_path / "inst.o"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("header", HEADERS)
def test_header_alone_nvcc(tmp_path, header, arch):
    nvcc = nvcc_or_skip()
    src = tmp_path / "alone.cu"
    src.write_text(f'#include "{header}"\n')
    proc = subprocess.run(nvcc_cmd(nvcc, arch, src, tmp_path / "a.o", False), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def parse_ptxas(text: str) -> dict[str, dict[str, int]]:
    """ptxas -v output -> {mangled entry: {regs, stack, spill_stores, spill_loads, smem}}"""
    rows: dict[str, dict[str, int]] = {}
    cur = None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '(\S+)'", line)
        if m:
            cur = m.group(1)
            rows[cur] = {"regs": -1, "stack": 0, "spill_stores": 0, "spill_loads": 0, "smem": 0}
            continue
        if cur is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            rows[cur]["stack"], rows[cur]["spill_stores"], rows[cur]["spill_loads"] = map(int, m.groups())
        m = re.search(r"Used (\d+) registers", line)
        if m:
            rows[cur]["regs"] = int(m.group(1))
            s = re.search(r"(\d+) bytes smem", line)
            rows[cur]["smem"] = int(s.group(1)) if s else 0
    return rows


def demangle(names: list[str]) -> list[str]:
    filt = shutil.which("c++filt")
    if filt is None:
        return names
    out = subprocess.run([filt], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return [
        re.sub(r"\(.*", "", d).replace("llmk::", "").replace("__nv_bfloat16", "bf16").replace("void ", "") for d in out
    ]


@pytest.fixture(scope="module")
def ptxas_reports(tmp_path_factory):
    nvcc = nvcc_or_skip()
    out = tmp_path_factory.mktemp("ptxas")

    def build(arch):
        proc = subprocess.run(
            nvcc_cmd(nvcc, arch, DRIVERS / "instantiate.cu", out / f"inst-{arch}.o", True),
            capture_output=True,
            text=True,
        )
        return arch, proc

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as ex:
        results = dict(ex.map(build, ARCHS))
    return out, results


@pytest.mark.parametrize("arch", ARCHS)
def test_no_kernel_spills(ptxas_reports, arch):
    out, results = ptxas_reports
    proc = results[arch]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = parse_ptxas(proc.stdout + proc.stderr)
    names = demangle(list(rows))
    table = [f"{'regs':>4} {'smem':>5} {'stack':>5} {'spill':>9}  kernel ({arch}, nvcc -O3 -Xptxas -v)"]
    for name, r in sorted(zip(names, rows.values())):
        spill = f"{r['spill_stores']:4d}/{r['spill_loads']:<4d}"
        table.append(f"{r['regs']:4d} {r['smem']:5d} {r['stack']:5d} {spill}  {name}")
    text = "\n".join(table)
    print(text)
    (out / f"ptxas-{arch}.txt").write_text(text + "\n")
    assert len(rows) == EXPECTED, f"expected {EXPECTED} kernels, ptxas compiled {len(rows)}:\n{text}"
    spilling = [n for n, r in zip(names, rows.values()) if r["spill_stores"] or r["spill_loads"]]
    assert not spilling, f"kernels spill registers on {arch}: {spilling}\n{text}"
    assert all(r["regs"] > 0 for r in rows.values())


@pytest.mark.parametrize("header", HEADERS)
def test_header_passes_through_jinja_unchanged(header):
    from llmgen.codegen import environment

    text = (KERNEL_HEADERS / header).read_text()
    assert environment().from_string(text).render() == text

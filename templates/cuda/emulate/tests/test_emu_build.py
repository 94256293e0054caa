"""The emulation header as a build artifact: every test .cu also compiles with nvcc for sm_90
(without LLMGEN_EMULATE; ptx.cu, the inline PTX of templates/cuda/ptx.cuh, for sm_80 too, through
ptxas); emulate.h with ptx.cuh is warning-free under -Wall -Wextra; ptx.cuh passes through the
generator's Jinja environment unchanged (it may be pasted into train.cu); the cuBLASLt enum
values and by-value struct sizes it declares equal NVIDIA's (when a cublasLt.h is found: the CUDA
toolkit's, $LLMGEN_CUBLAS_INCLUDE, or the one of the pip package nvidia-cublas==13.0.2.14, which is
the cuBLAS of CUDA 13.0)."""

import concurrent.futures
import os
import subprocess

import pytest

from emu_helpers import CUDA_TEMPLATES, GXX_FLAGS, HEADER_DIR, KERNELS, cublas_include, cuda_include, nvcc_path

SOURCES = sorted(p.name for p in KERNELS.glob("*.cu"))
ARCHS = {"ptx.cu": ["sm_80", "sm_90"]}  # the others: sm_90
BUILDS = [(source, arch) for source in SOURCES for arch in ARCHS.get(source, ["sm_90"])]
NEEDS_CUBLAS = {"cublaslt.cu", "cublaslt_fp8.cu"}
NO_CUBLAS = (
    "cublasLt.h not found: the CUDA toolkit here has no cuBLAS headers "
    "(pip install nvidia-cublas==13.0.2.14, or set LLMGEN_CUBLAS_INCLUDE)"
)


@pytest.fixture(scope="module")
def nvcc_results(tmp_path_factory) -> dict[str, subprocess.CompletedProcess | None]:
    """nvcc -arch=... -c for every kernel source and arch, two at a time; None where cuBLAS is missing."""
    nvcc = nvcc_path()
    if nvcc is None:
        pytest.skip("nvcc not found")
    out = tmp_path_factory.mktemp("nvcc")
    inc = cublas_include()

    def build(source_arch: tuple[str, str]):
        source, arch = source_arch
        if source in NEEDS_CUBLAS and inc is None:
            return source_arch, None
        extra = [f"-I{inc}"] if source in NEEDS_CUBLAS else []
        cmd = [
            nvcc,
            f"-arch={arch}",
            "-c",
            f"-I{HEADER_DIR}",
            f"-I{CUDA_TEMPLATES}",
            f"-I{KERNELS}",
            *extra,
            str(KERNELS / source),
            "-o",
            str(out / f"{source}.{arch}.o"),
        ]
        return source_arch, subprocess.run(cmd, capture_output=True, text=True)

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as ex:
        return dict(ex.map(build, BUILDS))


@pytest.mark.parametrize("source,arch", BUILDS)
def test_compiles_with_nvcc(nvcc_results, source, arch):
    proc = nvcc_results[(source, arch)]
    if proc is None:
        pytest.skip(NO_CUBLAS)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("std", ["c++17", "c++20"])
def test_header_is_warning_free(tmp_path, std):
    if cuda_include() is None:
        pytest.skip("CUDA headers not found")
    src = tmp_path / "only_header.cu"
    src.write_text(
        '#include "emulate.h"\n#include "ptx.cuh"\n'
        "__global__ void k(float* p) {\n"
        "    uint32_t a[4] = {0, 0, 0, 0}, b[2] = {0, 0}; float c[4] = {0, 0, 0, 0};\n"
        "    ptx_mma_m16n8k16_bf16(c, a, b, c);\n"
        "    p[threadIdx.x] = ptx_ex2_approx(c[0]) + ptx_ld_shared(p); __syncthreads(); }\n"
        "int main() { float* p; cudaMalloc(&p, 128); LLMGEN_LAUNCH(k, 1, 32, 0, 0, p); return 0; }\n"
    )
    flags = [f if f != "-std=c++17" else f"-std={std}" for f in GXX_FLAGS]
    cmd = [
        "g++",
        *flags,
        "-fopenmp",
        "-Wall",
        "-Wextra",
        "-Werror",
        f"-I{HEADER_DIR}",
        f"-I{CUDA_TEMPLATES}",
        f"-I{cuda_include()}",
        str(src),
        "-o",
        str(tmp_path / "a.out"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ptx_header_passes_through_jinja_unchanged():
    """the generator's environment (llmgen.codegen.environment) leaves ptx.cuh's text as it is"""
    from llmgen.codegen import environment

    text = (CUDA_TEMPLATES / "ptx.cuh").read_text()
    assert environment().from_string(text).render() == text


CUBLAS_NAMES = """
CUBLAS_STATUS_SUCCESS CUBLAS_STATUS_NOT_INITIALIZED CUBLAS_STATUS_ALLOC_FAILED CUBLAS_STATUS_INVALID_VALUE
CUBLAS_STATUS_ARCH_MISMATCH CUBLAS_STATUS_MAPPING_ERROR CUBLAS_STATUS_EXECUTION_FAILED CUBLAS_STATUS_INTERNAL_ERROR
CUBLAS_STATUS_NOT_SUPPORTED CUBLAS_STATUS_LICENSE_ERROR CUBLAS_OP_N CUBLAS_OP_T CUBLAS_OP_C
CUBLAS_POINTER_MODE_HOST CUBLAS_POINTER_MODE_DEVICE
CUBLAS_COMPUTE_16F CUBLAS_COMPUTE_32F CUBLAS_COMPUTE_32F_PEDANTIC CUBLAS_COMPUTE_32F_FAST_16F
CUBLAS_COMPUTE_32F_FAST_16BF CUBLAS_COMPUTE_32F_FAST_TF32 CUBLAS_COMPUTE_64F CUBLAS_COMPUTE_32I
CUBLASLT_POINTER_MODE_HOST CUBLASLT_POINTER_MODE_DEVICE CUBLASLT_POINTER_MODE_DEVICE_VECTOR
CUBLASLT_ORDER_COL CUBLASLT_ORDER_ROW
CUBLASLT_MATRIX_LAYOUT_TYPE CUBLASLT_MATRIX_LAYOUT_ORDER CUBLASLT_MATRIX_LAYOUT_ROWS CUBLASLT_MATRIX_LAYOUT_COLS
CUBLASLT_MATRIX_LAYOUT_LD CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET
CUBLASLT_MATMUL_DESC_COMPUTE_TYPE CUBLASLT_MATMUL_DESC_SCALE_TYPE CUBLASLT_MATMUL_DESC_POINTER_MODE
CUBLASLT_MATMUL_DESC_TRANSA CUBLASLT_MATMUL_DESC_TRANSB CUBLASLT_MATMUL_DESC_TRANSC CUBLASLT_MATMUL_DESC_EPILOGUE
CUBLASLT_MATMUL_DESC_BIAS_POINTER CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER
CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_BATCH_STRIDE
CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_DATA_TYPE CUBLASLT_MATMUL_DESC_FAST_ACCUM CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE
CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET CUBLASLT_MATMUL_DESC_A_SCALE_POINTER CUBLASLT_MATMUL_DESC_AMAX_D_POINTER
CUBLASLT_MATMUL_DESC_B_SCALE_POINTER CUBLASLT_MATMUL_DESC_C_SCALE_POINTER CUBLASLT_MATMUL_DESC_D_SCALE_POINTER
CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_SCALE_POINTER CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_AMAX_POINTER
CUBLASLT_EPILOGUE_DEFAULT CUBLASLT_EPILOGUE_RELU CUBLASLT_EPILOGUE_BIAS CUBLASLT_EPILOGUE_GELU
CUBLASLT_EPILOGUE_GELU_AUX CUBLASLT_EPILOGUE_GELU_BIAS CUBLASLT_EPILOGUE_GELU_AUX_BIAS CUBLASLT_EPILOGUE_DGELU
CUBLASLT_EPILOGUE_DGELU_BGRAD CUBLASLT_EPILOGUE_BGRADA CUBLASLT_EPILOGUE_BGRADB CUBLASLT_EPILOGUE_DRELU_BGRAD
CUBLASLT_MATMUL_PREF_SEARCH_MODE CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES CUBLASLT_SEARCH_BEST_FIT
""".split()
# Types a program holds by value. (The opaque descriptors' sizes change between cuBLAS releases --
# 13.0 and 13.1 use 8 words for a layout, 13.10 uses 14 -- and programs only hold pointers to them.)
CUBLAS_TYPES = ["cublasLtMatmulHeuristicResult_t", "cublasLtMatmulAlgo_t"]


def dump_program(prologue: str) -> str:
    lines = [prologue, "#include <stdio.h>", "int main() {"]
    lines += [f'  printf("{n} %lld\\n", (long long){n});' for n in CUBLAS_NAMES]
    lines += [f'  printf("sizeof({t}) %zu\\n", sizeof({t}));' for t in CUBLAS_TYPES]
    lines += ["  return 0;", "}"]
    return "\n".join(lines) + "\n"


def test_cublaslt_enums_match_nvidia(tmp_path):
    inc, cuda = cublas_include(), cuda_include()
    if inc is None or cuda is None:
        pytest.skip(NO_CUBLAS)
    outputs = []
    for name, prologue, flags in [
        ("nvidia", "#include <cublasLt.h>", [f"-I{inc}", f"-I{cuda}"]),
        ("emulated", '#include "emulate.h"', ["-x", "c++", "-DLLMGEN_EMULATE", f"-I{HEADER_DIR}", f"-I{cuda}"]),
    ]:
        src = tmp_path / f"{name}.cpp"
        src.write_text(dump_program(prologue))
        exe = tmp_path / name
        proc = subprocess.run(["g++", "-std=c++17", *flags, str(src), "-o", str(exe)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        outputs.append(subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout)
    assert outputs[0] == outputs[1]

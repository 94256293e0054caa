"""The C kernel headers compiled alone (no llmgen, no Jinja): a small driver includes gemm.h and one family's
header, calls a body with literal sizes inside `omp parallel` as the emitted kernels do, and prints the
outputs, which must match numpy. Odd sizes on purpose: partial register tiles and vector tails.

Run: python -m pytest -q templates/c/tests
Tolerances: layernorm 2e-6 absolute (fp32 reductions in another order than numpy's); the GEMM 1e-5 relative
to the largest |value| (a K = 37 reduction in fp32 against numpy's float64)."""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent.parent  # templates/c

PRELUDE = """#include <math.h>
#include <omp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
static void llmgen_fail(const char *fmt, ...) { va_list a; va_start(a, fmt); vfprintf(stderr, fmt, a); exit(1); }
static void *xmalloc(size_t n) { void *p = malloc(n); if (!p) llmgen_fail("oom"); return p; }
static int B __attribute__((unused)), T __attribute__((unused)), BT __attribute__((unused));
#include "gemm.h"
"""


def run_driver(tmp_path: Path, header: str, body: str, n_out: int) -> np.ndarray:
    """Compile PRELUDE + header + a main() with `body`, which fills out[n_out]; return out."""
    if not shutil.which("gcc"):
        pytest.skip("no gcc")
    src = tmp_path / "driver.c"
    src.write_text(
        PRELUDE
        + f'#include "{header}"\n'
        + f"""
static float in(int i) {{ return (float)((i * 37 % 101) - 50) / 25.0f; }}   /* deterministic inputs */
int main(void) {{
    static float out[{n_out}];
{body}
    for (int i = 0; i < {n_out}; i++) printf("%a\\n", out[i]);
    return 0;
}}
"""
    )
    exe = tmp_path / "driver"
    r = subprocess.run(
        [
            "gcc",
            "-O3",
            "-march=native",
            "-fopenmp",
            "-fno-math-errno",
            "-std=gnu11",
            "-Wall",
            "-Werror",
            "-Wno-unused-function",
            f"-I{HERE}",
            str(src),
            "-lm",
            "-o",
            str(exe),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    r = subprocess.run([str(exe)], capture_output=True, text=True, check=True)
    return np.array([float.fromhex(x) for x in r.stdout.split()], dtype=np.float32)


def inputs(n: int, offset: int = 0) -> np.ndarray:
    i = np.arange(offset, offset + n)
    return ((i * 37 % 101) - 50).astype(np.float32) / np.float32(25)


def test_layernorm_forward_matches_numpy(tmp_path):
    N, C = 5, 37
    body = f"""
    static float x[{N * C}], w[{C}], b[{C}], mean[{N}], rstd[{N}];
    for (int i = 0; i < {N * C}; i++) x[i] = in(i);
    for (int c = 0; c < {C}; c++) {{ w[c] = in(c + 1000); b[c] = in(c + 2000); }}
    #pragma omp parallel
    layernorm_forward(out, mean, rstd, x, w, b, {N}, {C}, 1e-5f);"""
    got = run_driver(tmp_path, "layernorm.h", body, N * C).reshape(N, C)
    x = inputs(N * C).reshape(N, C).astype(np.float64)
    w, b = inputs(C, 1000), inputs(C, 2000)
    want = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * w + b
    np.testing.assert_allclose(got, want, atol=2e-6, rtol=0)


@pytest.mark.parametrize("gelu", [0, 1])
def test_linear_forward_matches_numpy(tmp_path, gelu):
    M, K, N = 13, 37, 53  # partial register tiles in rows and columns, a reduction of 37
    body = f"""
    static float x[{M * K}], w[{N * K}], b[{N}], pre[{M * N}];
    for (int i = 0; i < {M * K}; i++) x[i] = in(i);
    for (int i = 0; i < {N * K}; i++) w[i] = in(i + 5000);
    for (int n = 0; n < {N}; n++) b[n] = in(n + 9000);
    #pragma omp parallel
    linear_forward(pre, out, x, w, b, {M}, {K}, {N}, {gelu}, 16, 32, 64);"""
    got = run_driver(tmp_path, "linear.h", body, M * N).reshape(M, N)
    x = inputs(M * K).reshape(M, K).astype(np.float64)
    w = inputs(N * K, 5000).reshape(N, K).astype(np.float64)
    want = x @ w.T + inputs(N, 9000)
    if gelu:
        want = 0.5 * want * (1 + np.tanh(np.sqrt(2 / np.pi) * (want + 0.044715 * want**3)))
    np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max(), rtol=0)

"""The CUDA target in-process: the same train.cu built as a shared library, driven from Python,
its device buffers read with pycuda (the `gpu` extra) by graph name.

With emulate=True the library is the .cu built for the CPU through emulate.h: its "device"
memory is host memory, so it runs (and is tested) without a GPU or pycuda.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llmgen.codegen import Options
from llmgen.runtime.build import build_trainer
from llmgen.runtime.process import InProcessTrainer


def _pycuda():
    try:
        import pycuda.driver as cuda
    except ImportError as e:  # the gpu extra is missing, or no driver to link against
        raise RuntimeError(f"the CUDA in-process runner needs pycuda (pip install 'llmgen[gpu]'): {e}") from None
    return cuda


class CudaTrainer(InProcessTrainer):
    def __init__(
        self,
        spec,
        B: int,
        T: int,
        build_dir,
        init_from=None,
        seed: int = 1337,
        options: Options = Options(target="cuda"),
        emulate: bool = False,
    ):
        if options.target != "cuda":
            raise ValueError("CudaTrainer runs the cuda target; use InProcessTrainer for the C target")
        self.emulate = emulate
        if not emulate:
            cuda = _pycuda()
            cuda.init()
            # share the CUDA runtime's primary context with the library: its cudaMalloc'd pointers
            # are then valid for pycuda's copies
            self._ctx = cuda.Device(0).retain_primary_context()
            self._ctx.push()
        super().__init__(spec, B, T, build_dir, init_from, seed, options)

    def _build(self, spec, build_dir: Path, options: Options) -> Path:
        return build_trainer(spec, options, build_dir, library=True, emulate=self.emulate)

    def _copy_out(self, ptr: int, n: int, dtype) -> np.ndarray:
        if self.emulate:
            return super()._copy_out(ptr, n, dtype)
        out = np.empty(n, dtype)
        _pycuda().memcpy_dtoh(out, ptr)
        return out

    def close(self) -> None:
        if not self.emulate:
            self._ctx.pop()

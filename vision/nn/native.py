"""SeeDNorm's one-pass CPU kernels (csrc/seednorm_cpu.c), built at first use and called via ctypes.

torch.compile fuses SeeDNorm into a few whole-tensor loops; on a CPU the multihead form then
costs 1.5-2x LayerNorm, because every per-head reduction and broadcast is its own pass. These
kernels instead finish each row while it sits in L1, like ATen's LayerNorm. They are built with
the machine's C compiler into a per-user cache (``$VISION_CACHE_DIR`` or ``~/.cache/seednorm-vision``),
keyed by the source, the compiler and the CPU's flags; when no compiler works, ``available()``
is False and SeeDNorm uses the compiled or eager kernels instead.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("csrc") / "seednorm_cpu.c"
DTYPES = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}

_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_error: str | None = None
_kernels: dict[torch.dtype, tuple] = {}  # dtype -> (forward, backward) entry points


def cache_dir() -> Path:
    root = os.environ.get("VISION_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "seednorm-vision")
    return Path(root)


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return ""


def _build() -> ctypes.CDLL:
    compiler = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        raise RuntimeError("no C compiler (gcc or $CC) found")
    # Reassociation lets the per-head reductions vectorize (about 25% faster); NaN and Inf
    # semantics are kept (no -ffast-math). 256-bit vectors suit the short head widths (24, 48).
    flags = ["-O3", "-march=native", "-mprefer-vector-width=256", "-fassociative-math", "-fno-signed-zeros",
             "-fno-trapping-math", "-fno-math-errno", "-fopenmp", "-shared", "-fPIC", "-std=gnu11"]
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256(
        "\n".join([SOURCE.read_text(), compiler, version, " ".join(flags), _cpu_flags()]).encode()
    ).hexdigest()[:16]
    target = cache_dir() / f"seednorm_cpu_{key}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        # Build under a temporary name and rename: parallel processes (DDP ranks) never load a
        # half-written library.
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        try:
            proc = subprocess.run([compiler, *flags, str(SOURCE), "-o", tmp, "-lm"], capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"{compiler} failed: {proc.stderr.strip()[:500]}")
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    lib = ctypes.CDLL(str(target))
    ptr, i64, f32, i32 = ctypes.c_void_p, ctypes.c_long, ctypes.c_float, ctypes.c_int
    for suffix in DTYPES.values():
        fwd = getattr(lib, f"seednorm_forward_{suffix}")
        fwd.argtypes = [ptr, ptr, ptr, ptr, ptr, ptr, f32, i64, i64, i64, f32, f32, ptr, ptr, ptr, i32]
        fwd.restype = None
        bwd = getattr(lib, f"seednorm_backward_{suffix}")
        bwd.argtypes = [ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, f32, i64, i64, i64, f32, i32, ptr, ptr, i32]
        bwd.restype = None
    return lib


def library() -> ctypes.CDLL | None:
    """The loaded kernels, building them on first call; None when they cannot be built."""
    global _library, _error
    if _library is None and _error is None:
        with _lock:
            if _library is None and _error is None:
                try:
                    lib = _build()
                    for dtype, suffix in DTYPES.items():
                        _kernels[dtype] = (getattr(lib, f"seednorm_forward_{suffix}"), getattr(lib, f"seednorm_backward_{suffix}"))
                    _library = lib
                except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
                    _error = str(exc)
    return _library


def available() -> bool:
    return library() is not None


def build_error() -> str | None:
    """Why the kernels could not be built, or None."""
    library()
    return _error


def supports(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype in DTYPES


def _param(p: torch.Tensor | None) -> torch.Tensor | None:
    if p is None or (p.dtype is torch.float32 and p.is_contiguous()):
        return p
    return p.detach().to(torch.float32).contiguous()


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def forward(x2, weight, alpha, beta, bias, keep, keep_scale, num_heads, eps, scale):
    """SeeDNorm forward of a contiguous (N, D) CPU tensor; returns (y, rinv (N,), t (N, H))."""
    if not _kernels and library() is None:
        raise RuntimeError(f"the native SeeDNorm kernels could not be built: {_error}")
    n, dim = x2.shape
    y = torch.empty_like(x2)
    rinv = torch.empty(n, dtype=torch.float32)
    t = torch.empty(n, num_heads, dtype=torch.float32)
    # Locals hold converted parameters alive until the C call returns.
    weight, alpha, beta, bias = _param(weight), _param(alpha), _param(beta), _param(bias)
    _kernels[x2.dtype][0](
        x2.data_ptr(), _ptr(weight), alpha.data_ptr(), beta.data_ptr(), _ptr(bias), _ptr(keep), keep_scale,
        n, dim, num_heads, eps, scale, y.data_ptr(), rinv.data_ptr(), t.data_ptr(), torch.get_num_threads(),
    )
    return y, rinv, t


def backward(grad2, x2, rinv, t, weight, alpha, beta, keep, keep_scale, scale, has_bias):
    """Gradients for x and the stacked float32 parameter gradients (dweight, dalpha, dbeta, dbias)."""
    n, dim = x2.shape
    threads = torch.get_num_threads()
    dx = torch.empty_like(x2)
    partial = torch.empty(threads, 4, dim, dtype=torch.float32)  # zeroed by the kernel
    weight, alpha, beta = _param(weight), _param(alpha), _param(beta)
    grad2 = grad2.contiguous()
    _kernels[x2.dtype][1](
        grad2.data_ptr(), x2.data_ptr(), rinv.data_ptr(), t.data_ptr(), _ptr(weight), alpha.data_ptr(),
        beta.data_ptr(), _ptr(keep), keep_scale, n, dim, t.shape[1], scale, int(has_bias), dx.data_ptr(),
        partial.data_ptr(), threads,
    )
    return dx, partial[0]

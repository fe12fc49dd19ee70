"""Native CPU kernels for the hot spots of training, compiled on first use against the installed TF.

``bn_hard_swish.cc`` holds training-mode batch norm + hard_swish forward and backward (two passes
over the activations each way, sums in double; see the file), ``depthwise_filter_grad.cc`` the
filter gradient of a depthwise 2D convolution (any kernel, strides and explicit padding; sums in
double per image), with what both share in ``kernels.h``. They are built into one library with
the C++ compiler (``$CXX``, else ``c++``) into a cache directory (``$MOVINET_NATIVE_CACHE``, else
``~/.cache/movinet/native``) under a name that hashes the sources, the TF version, the flags and
this CPU's instruction set, so concurrent workers (pytest-xdist, Ray trials) and nodes of a
mixed cluster each load a build that fits them; a file lock keeps them from compiling twice.

Where it cannot be built (no compiler, no TF headers) one warning names the compiler's error and
callers fall back to their portable TF path. ``MOVINET_NATIVE=0`` turns the kernels off; so does
``disabled()`` around functions that XLA compiles, which cannot hold custom ops. They run on
CPU only and are skipped when a GPU or TPU is visible.
"""

from __future__ import annotations

import contextlib
import contextvars
import fcntl
import hashlib
import os
import platform
import shlex
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import tensorflow as tf

from movinet.allocator import switched_off

SOURCES = tuple(Path(__file__).with_name(name) for name in ("bn_hard_swish.cc", "depthwise_filter_grad.cc"))
HEADERS = (Path(__file__).with_name("kernels.h"),)
# Eigen's AVX512-FP16 header does not compile with GCC, so -march=native on a CPU that has it
# needs -mno-avx512fp16; compilers that lack the flag retry without it.
ARCH_FLAGS = (["-march=native", "-mno-avx512fp16"], ["-march=native"], [])

_DISABLED = contextvars.ContextVar("movinet_native_disabled", default=False)
_lock = threading.Lock()
_loaded: dict[str, object] = {}


class NativeBuildError(RuntimeError):
    """The native library could not be compiled or loaded; the message holds the compiler's output."""


@contextlib.contextmanager
def disabled(when: bool = True):
    """Within it (if ``when``), functions traced use the portable TF ops (for XLA-compiled functions)."""
    token = _DISABLED.set(when or _DISABLED.get())
    try:
        yield
    finally:
        _DISABLED.reset(token)


def cache_dir() -> Path:
    configured = os.environ.get("MOVINET_NATIVE_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "movinet" / "native"


def _cpu_signature() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _compiler() -> list[str]:
    return shlex.split(os.environ.get("CXX", "c++"))


def _build(directory: Path) -> Path:
    """Compiles SOURCES into ``directory`` (once per source, TF, compiler and CPU) and returns the library."""
    base_flags = ["-shared", "-fPIC", "-O3", "-std=c++17", "-w"]
    tf_flags = tf.sysconfig.get_compile_flags() + tf.sysconfig.get_link_flags()
    texts = [path.read_text() for path in SOURCES + HEADERS]
    key = hashlib.sha256("\0".join([*texts, tf.__version__, *_compiler(), *base_flags, *tf_flags,
                                    _cpu_signature()]).encode()).hexdigest()[:16]
    library = directory / f"movinet_native_{key}.so"
    if library.exists():
        return library
    directory.mkdir(parents=True, exist_ok=True)
    with open(library.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if library.exists():   # another process built it while this one waited
            return library
        errors = []
        for arch in ARCH_FLAGS:
            handle, partial = tempfile.mkstemp(dir=directory, suffix=".so.partial")
            os.close(handle)
            command = [*_compiler(), *base_flags, *arch, *map(str, SOURCES), "-o", partial, *tf_flags]
            try:
                result = subprocess.run(command, capture_output=True, text=True)
            except OSError as error:
                os.unlink(partial)
                raise NativeBuildError(f"cannot run the C++ compiler {_compiler()[0]!r}: {error}") from error
            if result.returncode == 0:
                os.replace(partial, library)
                return library
            os.unlink(partial)
            errors.append(f"$ {shlex.join(command)}\n{result.stderr.strip()[-2000:]}")
        raise NativeBuildError(f"compiling {' and '.join(map(str, SOURCES))} failed:\n" + "\n".join(errors))


def library():
    """The loaded op library (building it if needed); raises NativeBuildError."""
    directory = cache_dir()
    with _lock:
        cached = _loaded.get(str(directory))
        if isinstance(cached, NativeBuildError):
            raise cached
        if cached is None:
            try:
                path = _build(directory)
                try:
                    cached = tf.load_op_library(str(path))
                except (tf.errors.OpError, OSError) as error:
                    raise NativeBuildError(f"loading {path} failed: {error}") from error
            except NativeBuildError as error:
                _loaded[str(directory)] = error
                raise
            _loaded[str(directory)] = cached
        return cached


def enabled() -> bool:
    """Whether functions traced now should use the native kernels (warns once when they cannot)."""
    if _DISABLED.get() or switched_off("MOVINET_NATIVE"):
        return False
    if tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"):
        return False
    try:
        library()
    except NativeBuildError as error:
        if not getattr(error, "warned", False):
            error.warned = True
            warnings.warn(f"movinet native kernels unavailable, using the TF ops instead: {error}", RuntimeWarning,
                          stacklevel=2)
        return False
    return True


def batch_norm_hard_swish(x, gamma, beta, epsilon: float):
    """hard_swish of training-mode batch norm of ``x`` [rows, C], with the batch mean and biased
    variance (no gradient through those two), by the native kernels; call only where ``enabled()``."""
    ops = library()

    @tf.custom_gradient
    def forward(x, gamma, beta):
        y, mean, variance = ops.movinet_bn_hard_swish(x, gamma, beta, epsilon=epsilon)

        def grad(upstream, *_):
            return ops.movinet_bn_hard_swish_grad(x, upstream, gamma, beta, mean, variance, epsilon=epsilon)

        return (y, tf.stop_gradient(mean), tf.stop_gradient(variance)), grad

    return forward(x, gamma, beta)


def depthwise_filter_gradient(x, upstream, kernel_size, strides, paddings):
    """The filter gradient [kh, kw, C, 1] of a depthwise 2D convolution of ``x`` [N, H, W, C]
    (strides [1, sh, sw, 1], explicit ``paddings`` [[0, 0], [top, bottom], [left, right], [0, 0]])
    whose output gradient is ``upstream``, by the native kernel; call only where ``enabled()``."""
    return library().movinet_depthwise_filter_grad(
        x, upstream, kernel_h=kernel_size[0], kernel_w=kernel_size[1], stride_h=strides[1], stride_w=strides[2],
        pad_top=paddings[1][0], pad_left=paddings[2][0])

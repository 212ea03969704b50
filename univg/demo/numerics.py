"""The demo's floating-point kernels, pinned so a seed gives the same numbers on another x86-64 CPU.

Left alone, PyTorch picks its kernels by the CPU it finds: ATen's vectorised kernels (AVX2 or
AVX-512), MKL's GEMM code path, oneDNN's JIT ISA (and blocking by cache size), and the thread
count splits reductions. Each choice changes the rounding of a few results, and 1,000 stage-1 steps
at lr 3e-3 amplify that into a different model (the demo's README table once differed between an
AMD EPYC and an Intel Xeon). ``"avx2"`` (the default) pins every choice to one that every x86-64
CPU with AVX2 can take (Intel since 2013, AMD since 2015):

- ``ATEN_CPU_CAPABILITY=avx2``: ATen's AVX2 kernels, also on CPUs that have AVX-512;
- ``MKL_CBWR=AVX2``: MKL's conditional numerical reproducibility, its AVX2 code path;
- oneDNN off (``torch.backends.mkldnn``; ``ONEDNN_MAX_CPU_ISA=AVX2`` in case something calls it);
- 2 threads (OpenMP, MKL and torch), whatever the machine has; deterministic algorithms on.

``"baseline"`` pins the same things to what any x86-64 CPU runs (ATen ``default``, MKL
``COMPATIBLE``, oneDNN ``SSE41``): about twice as slow. ``"native"`` pins nothing (numbers are this
CPU's). The environment variables are read when torch loads its kernels, so they are set before
torch is imported: ``python -m univg.demo`` does that first (this module imports no torch); a
process that imported torch already gets the torch-level pins only, and its summary says so.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any, Literal, get_args

Numerics = Literal["avx2", "baseline", "native"]
NUMERICS: tuple[str, ...] = get_args(Numerics)
THREADS = 2  # fixed: a reduction split over another thread count rounds differently
DEFAULT: Numerics = "avx2"

#: Environment set before torch is imported, per mode.
PINNED_ENV: dict[str, dict[str, str]] = {
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "baseline": {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "SSE41"},
    "native": {},
}
#: The ATen capability each mode must end up with (``torch.backends.cpu.get_cpu_capability()``).
EXPECTED_CAPABILITY = {"avx2": "AVX2", "baseline": "DEFAULT"}
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def check_numerics(numerics: str) -> Numerics:
    if numerics not in NUMERICS:
        raise ValueError(f"numerics must be one of {NUMERICS}, got {numerics!r}")
    return numerics  # type: ignore[return-value]


def pin_environment(
    numerics: Numerics = DEFAULT, env: MutableMapping[str, str] | None = None
) -> dict[str, str]:
    """Set the mode's environment (overriding what was there); return what was set.

    Must run before torch is imported to take effect; raises if torch is already loaded and the
    values would change.
    """
    env = os.environ if env is None else env
    wanted = dict(PINNED_ENV[check_numerics(numerics)])
    if numerics != "native":
        wanted.update({k: str(THREADS) for k in THREAD_ENV})
    if env is os.environ and "torch" in sys.modules and any(env.get(k) != v for k, v in wanted.items()):
        raise RuntimeError(
            f"pin_environment({numerics!r}): torch is already imported, so {sorted(wanted)} would not "
            "take effect; call it first thing (python -m univg.demo does)"
        )
    env.update(wanted)
    return wanted


@contextmanager
def pinned_torch(numerics: Numerics = DEFAULT) -> Iterator[dict[str, Any]]:
    """The torch-level pins (threads, deterministic algorithms, oneDNN off) for the duration of the
    block, then torch's previous state back; yields a report of the numerics in effect, for
    ``summary.json``. Warns when the environment pins did not take."""
    import torch

    before = (
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.mkldnn.enabled,
    )
    try:
        if numerics != "native":
            torch.set_num_threads(THREADS)
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.mkldnn.enabled = False
        yield _report(numerics)
    finally:
        torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1], warn_only=before[2])
        torch.backends.mkldnn.enabled = before[3]


def _report(numerics: Numerics) -> dict[str, Any]:
    import torch

    report: dict[str, Any] = {
        "mode": numerics,
        "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        **{k: os.environ.get(k) for k in ("MKL_CBWR", "ONEDNN_MAX_CPU_ISA", *THREAD_ENV)},
    }
    expected = EXPECTED_CAPABILITY.get(numerics)
    report["pinned"] = expected is not None and (
        report["aten_cpu_capability"] == expected
        and all(os.environ.get(k) == v for k, v in PINNED_ENV[numerics].items())
    )
    if expected is not None and not report["pinned"]:
        warnings.warn(
            f"univg.demo numerics {numerics!r} not in effect (ATen capability "
            f"{report['aten_cpu_capability']}, expected {expected}; MKL_CBWR {report['MKL_CBWR']}): "
            "torch was imported before the pins were set, or this CPU lacks the instructions; the "
            "numbers are this machine's. Run `python -m univg.demo` for the pinned ones.",
            stacklevel=4,
        )
    return report

"""RapidFire AI's resource arguments of ``Experiment`` and ``run_fit``: what each means here.

=================================  =========================================================
argument                           here
=================================  =========================================================
``Experiment(num_cpus=n)``         honoured: training uses ``n`` CPU threads
                                   (``torch.set_num_threads(n)`` while ``run_fit`` /
                                   ``continue_fit`` trains; the previous count is restored)
``Experiment(num_gpus=n)``,        the engine trains every run on one device (``cuda:0``, or
``run_fit(num_gpus=n)``            the CPU when no GPU is usable): ``n`` equal to that (1 with a
                                   GPU, 0 without) is what happens anyway; any other ``n``
                                   warns once that it has no effect
``run_fit(monte_carlo_simulations  no meaning (RapidFire AI sizes its multi-GPU schedule search
=n)``                              with it; runs here take turns on one device): warns once
=================================  =========================================================

Bad values (not an int, ``num_cpus < 1``, ``num_gpus < 0``, ``monte_carlo_simulations < 1``)
raise ValueError naming the argument. "Once": per argument and value, per process.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

from rapidfire_core.errors import ConfigTranslationWarning

_warned: set[tuple[str, object]] = set()


def _warn_once(argument: str, value: object, message: str) -> None:
    if (argument, value) in _warned:
        return
    _warned.add((argument, value))
    warnings.warn(message, ConfigTranslationWarning, stacklevel=4)


def _check_int(argument: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{argument} must be an int >= {minimum}, got {value!r}")


def check_num_cpus(num_cpus: int | None) -> int | None:
    if num_cpus is not None:
        _check_int("num_cpus", num_cpus, 1)
    return num_cpus


@contextlib.contextmanager
def cpu_threads(num_cpus: int | None) -> Iterator[None]:
    """Within the block, torch uses `num_cpus` intra-op threads (None: unchanged)."""
    if num_cpus is None:
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(num_cpus)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def check_num_gpus(num_gpus: int | None, where: str) -> None:
    """Validate `num_gpus` and warn once unless it is the one device the engine uses."""
    if num_gpus is None:
        return
    _check_int(f"{where}(num_gpus=)", num_gpus, 0)
    from rapidfire_core.automl.translate import gpu_available

    gpu = gpu_available()
    if num_gpus == (1 if gpu else 0):
        return
    device = "one GPU (cuda:0)" if gpu else "the CPU (no usable GPU)"
    _warn_once(
        "num_gpus",
        num_gpus,
        f"{where}(num_gpus={num_gpus}) has no effect: rapidfire_core trains every run on {device}",
    )


def check_monte_carlo_simulations(value: int | None) -> None:
    if value is None:
        return
    _check_int("run_fit(monte_carlo_simulations=)", value, 1)
    _warn_once(
        "monte_carlo_simulations",
        value,
        f"run_fit(monte_carlo_simulations={value}) has no effect: RapidFire AI sizes its multi-GPU "
        "schedule search with it; here runs take turns on one device, round by round",
    )


__all__ = ["check_monte_carlo_simulations", "check_num_cpus", "check_num_gpus", "cpu_threads"]

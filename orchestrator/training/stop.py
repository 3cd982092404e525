"""Stopping a sweep's fits when its driver is interrupted (Ctrl-C, SIGTERM, `ray job stop`).

Without it the fits train on while the driver flushes and reconciles MLflow, until its exit takes
their actors down: on a tracking server that took ~50 s, in which a rung could train to its end, and
the reconcile could never be exact. The driver sets one `StopFlag` actor; rank 0 of every fit reads it
after each step and broadcasts the answer, so every rank leaves the loop after the same step (a rank
alone would hang the others' collectives). The rung resumes from its last sealed checkpoint, as after
a kill.
"""

from __future__ import annotations

import threading

import torch
import torch.distributed as dist

STOP_WAIT_S = 60  # how long the driver waits for its fits to leave their step loops


class StopFlag:
    """A Ray actor (orchestrator.scheduler creates one per driver run): set once, read every step."""

    def __init__(self) -> None:
        self._stop = False

    def set(self) -> None:
        self._stop = True

    def is_set(self) -> bool:
        return self._stop


def stop_requested(flag, rank: int) -> bool:
    """On every rank of a fit after each step: whether the driver asked its fits to stop. One actor
    call on rank 0 (~1 ms) and one broadcast; False at no cost when the fit has no flag."""
    if flag is None:
        return False
    import ray

    asked = False
    if rank == 0:
        try:
            asked = ray.get(flag.is_set.remote())
        except ray.exceptions.RayError:  # the flag's node lost: train on (the driver's exit still stops us)
            asked = False
    stop = torch.tensor([1 if asked else 0])
    dist.broadcast(stop, src=0)
    return bool(stop.item())


def stop_fits(ray, flag, threads: list[threading.Thread]) -> None:
    """Driver side: set the flag, then wait (at most STOP_WAIT_S in all) for the fits' threads to end."""
    ray.get(flag.set.remote())
    for thread in threads:
        thread.join(STOP_WAIT_S)


def new_stop_flag():
    """The driver's flag, on the driver's node, holding no CPU."""
    import ray

    return ray.remote(num_cpus=0)(StopFlag).remote()

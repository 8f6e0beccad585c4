"""How many Ray actors of what size one `--runner ray` run asks for, from the cluster's resources.

Apart from the Ray module (`eluserve.classify.ray_runner`) because it needs no Ray: the numbers come
from `ray.nodes()` there, and are plain numbers here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from eluserve.classify.files import UsageError


@dataclass(frozen=True)
class RayResources:
    """What the user asked for; None: decided from the cluster by `plan`."""

    actors: int | None = None
    gpus_per_actor: float | None = None


@dataclass(frozen=True)
class Plan:
    """The resources one run asks for, resolved against the cluster."""

    actors: int
    gpus_per_actor: float
    #: CPUs each actor reserves.
    cpus_per_actor: float
    #: Its session's intra-op threads, and on CPU plans its decoding threads too.
    threads: int
    #: CPUs each decoding task reserves; 0 on CPU plans, whose actors decode (`ClassifyActor`).
    decode_cpus: float


#: Threads of a CPU actor, which reserves as many CPUs: its decoding threads and its session's intra-op
#: threads share them, as in the in-process runner. One, so one actor per CPU: on the shared 2-core
#: project machine (load average 4-6) two actors of one thread classified 10 000 files at 0.98-1.15× the
#: in-process runner's img/s (files per call 128-512), one actor of two threads at 0.86× (same run,
#: medians of 3 rounds). Processes share no GIL, and a one-thread session waits for no sibling thread
#: that the busy machine has descheduled. Larger nodes were not measured.
ACTOR_THREADS = 1
#: CPUs one decoding task of a GPU plan reserves: fractions, so that decoding fits beside the actors.
DECODE_CPUS = 0.25
#: Files per call of a CPU actor, at most. Each call is a Ray task (scheduling, a block through the
#: object store, ordering) and the actor's decoding runs ahead only within a call, so calls are large;
#: but the first rows wait for the first call. Two actors on 2 cores, 10 000 files: 128 files a call
#: 0.98× the in-process runner, 256 1.02×, 512 1.15× (first row after 5.8, 7.1, 8.1 s).
FILES_PER_CALL = 512


def files_per_call(files: int, actors: int, batch_size: int) -> int:
    """Paths per CPU actor call: up to `FILES_PER_CALL`, but at least four calls per actor, so that the
    actors share the files evenly and the first rows come soon; never less than one inference batch."""
    return max(batch_size, min(FILES_PER_CALL, math.ceil(files / (4 * actors))))


def plan(node_cpus: Sequence[float], gpus: float, resources: RayResources) -> Plan:
    """Actor count and sizes from the alive nodes' CPUs and the cluster's GPUs.

    GPU actors (default when the cluster has GPUs): one per GPU, each reserving one CPU to feed it;
    decoding tasks run on every CPU left. CPU actors: `ACTOR_THREADS` threads (at most the smallest
    node's CPUs), reserving that many CPUs, as many as fit on each node; they decode their own files.
    """
    gpus_per_actor = (
        resources.gpus_per_actor if resources.gpus_per_actor is not None else (1.0 if gpus else 0.0)
    )
    if gpus_per_actor > 0:
        if gpus < gpus_per_actor:
            raise UsageError(
                f"--ray-gpus-per-actor {gpus_per_actor:g}: the cluster has {gpus:g} GPUs; "
                "pass --ray-gpus-per-actor 0 for CPU actors"
            )
        fitting = int(gpus // gpus_per_actor)
        if (resources.actors or 0) > fitting:
            raise UsageError(
                f"{resources.actors} inference actors of {gpus_per_actor:g} GPUs do not fit on the "
                f"cluster's {gpus:g} GPUs; lower --ray-actors"
            )
        return Plan(resources.actors or fitting, gpus_per_actor, 1.0, 1, DECODE_CPUS)
    # A head node started with --num-cpus=0 (a common way to keep work off it) runs no actor.
    cpu_nodes = [cpus for cpus in node_cpus if cpus > 0]
    threads = max(1, min(ACTOR_THREADS, int(min(cpu_nodes, default=1.0))))
    fitting = sum(int(cpus // threads) for cpus in cpu_nodes)
    if fitting < 1 or (resources.actors or 0) > fitting:
        raise UsageError(
            f"{resources.actors or 1} inference actors of {threads} CPUs do not fit on the cluster's "
            f"nodes ({', '.join(f'{cpus:g}' for cpus in node_cpus)} CPUs); lower --ray-actors"
        )
    return Plan(resources.actors or fitting, 0.0, float(threads), threads, 0.0)

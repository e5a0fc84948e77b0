"""``torchrun ... -m repro.resnet --runs N``: the N seeds shared over the ranks, each seed run once.

    torchrun --nproc-per-node 2 -m repro.resnet --stage final --runs 8

Rank r runs seeds s + r, s + r + P, ... of every stage on its own device (``cuda:LOCAL_RANK``, or
the CPU with ``cores // local ranks`` torch threads). Each rank publishes its finished records,
and the (stage, seed) it is running, in the process group's store as it goes; rank 0 collects
them, appends every record exactly once and prints the ladder table. A rank that makes no
progress (no training step, epoch, or run started or finished) for ``--dist-timeout`` seconds is
given up on with a one-line error, whether it was killed or is alive but stuck (a deadlock,
stalled I/O, SIGSTOP): its finished runs are still appended, and the run it was in is appended as
``failed``. Seeds it had not reached are named in the error, not recorded (they never ran). The
timeout must exceed the longest stretch without a step: a test pass, a compilation.

Without ``WORLD_SIZE`` in the environment (plain ``python -m repro.resnet``) nothing here is used.
Limitation: the records travel through rank 0, so a run whose rank 0 dies leaves no records.
"""

from __future__ import annotations

import datetime as _dt
import os
import math
import pickle
import time
from dataclasses import dataclass, field

import torch

from ..errors import UserError
from .records import RunRecord

HEARTBEAT_SECONDS = 2.0
DEFAULT_TIMEOUT = 600.0


@dataclass
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device
    backend: str
    timeout: float
    store: object = field(repr=False, default=None)
    last_beat: float = field(repr=False, default=-math.inf)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun(environ=os.environ) -> bool:
    return "WORLD_SIZE" in environ and "RANK" in environ


def my_seeds(seed: int, runs: int, rank: int, world_size: int) -> list[int]:
    """Rank r's seeds: s + r, s + r + P, ...; over all ranks each of s .. s+runs-1 exactly once."""
    return [seed + i for i in range(rank, runs, world_size)]


def share(runs: list, seeds, rank: int, world_size: int) -> list:
    """Rank ``rank``'s part of ``runs`` ((stage, seed) pairs): the pairs whose seed is one of
    ``my_seeds`` of that rank, in the plan's order."""
    mine = set(my_seeds(seeds[0], len(seeds), rank, world_size)) if seeds else set()
    return [(stage, seed) for stage, seed in runs if seed in mine]


def _env_int(environ, name: str, default: int | None = None) -> int:
    value = environ.get(name)
    if value is None:
        if default is None:
            raise UserError(f"torchrun environment incomplete: {name} is not set")
        return default
    try:
        return int(value)
    except ValueError:
        raise UserError(f"torchrun environment: {name}={value!r} is not an integer") from None


def init_from_env(device_request: str, timeout: float, threads: int | None = None,
                  environ=os.environ) -> DistContext | None:
    """The process group from torchrun's variables (None when not launched that way).

    NCCL on ``cuda:LOCAL_RANK`` when CUDA is asked for or available, else gloo on the CPU with
    the cores shared between this node's ranks (unless ``threads`` is given).
    """
    if not launched_by_torchrun(environ):
        return None
    import torch.distributed as dist

    if timeout <= 0:
        raise UserError("--dist-timeout must be above 0")
    rank, world = _env_int(environ, "RANK"), _env_int(environ, "WORLD_SIZE")
    local_rank = _env_int(environ, "LOCAL_RANK", 0)
    local_world = _env_int(environ, "LOCAL_WORLD_SIZE", world)
    use_cuda = device_request == "cuda" or (device_request == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA device is available (use --device cpu or auto)")
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {local_rank}, but this node has {torch.cuda.device_count()} CUDA "
                            "device(s): use --nproc-per-node at most that many")
        device, backend = torch.device("cuda", local_rank), "nccl"
        torch.cuda.set_device(device)
    else:
        device, backend = torch.device("cpu"), "gloo"
        torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // max(1, local_world)))
    try:
        dist.init_process_group(backend, timeout=_dt.timedelta(seconds=timeout),
                                device_id=device if use_cuda else None)
    except Exception as exc:  # a peer that never came up: DistStoreError / RuntimeError after the timeout
        raise UserError(f"rank {rank}: the process group did not form within --dist-timeout {timeout:g}s "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    ctx = DistContext(rank, world, local_rank, local_world, device, backend, timeout,
                      store=dist.distributed_c10d._get_default_store())
    beat(ctx, force=True)
    return ctx


def beat(ctx: DistContext, *, force: bool = False) -> None:
    """Tell rank 0 this rank made progress: ``beat/RANK`` counts up, at most once per
    ``HEARTBEAT_SECONDS`` unless ``force``. Called from the training loop's own hooks (a step,
    an epoch) and when a run starts or ends, never from a thread of its own: a rank whose
    training is stuck stops beating even though its process lives."""
    now = time.monotonic()
    if not force and now - ctx.last_beat < HEARTBEAT_SECONDS:
        return
    ctx.last_beat = now
    try:
        ctx.store.add(f"repro/beat/{ctx.rank}", 1)
    except Exception:  # the store (rank 0's agent) is gone: nothing left to tell
        pass


def broadcast(ctx: DistContext, value):
    """Rank 0's ``value`` on every rank (the group id of the runs)."""
    import torch.distributed as dist

    box = [value if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ctx: DistContext) -> None:
    import torch.distributed as dist

    dist.barrier()


class Reporter:
    """One rank's reports in the store: what it is running, what it finished, when it is done."""

    def __init__(self, ctx: DistContext):
        self.ctx, self.records = ctx, []

    def starting(self, stage: str, seed: int) -> None:
        self.ctx.store.set(f"repro/running/{self.ctx.rank}", pickle.dumps((stage, seed)))
        beat(self.ctx, force=True)

    def finished(self, record: dict) -> None:
        """Keep the record here and publish it; rank 0 appends it later."""
        self.records.append(record)
        self.ctx.store.set(f"repro/records/{self.ctx.rank}", pickle.dumps(self.records))
        self.ctx.store.set(f"repro/running/{self.ctx.rank}", pickle.dumps(None))
        beat(self.ctx, force=True)

    def done(self, outcome: str) -> None:
        self.ctx.store.set(f"repro/done/{self.ctx.rank}", outcome.encode())


def _get(store, key: str, default=None):
    if not store.check([key]):
        return default
    return pickle.loads(store.get(key))


def collect(ctx: DistContext, own: list[dict], plan: dict[int, list[tuple[str, int]]], group_id: str,
            *, patience: float | None = None) -> tuple[list[dict], list[str]]:
    """On rank 0: every rank's records, and one error line per rank given up on.

    Waits for each rank's ``done`` while its beats keep counting (each beat is progress, see
    ``beat``); one whose count has not moved for ``patience`` seconds (default
    ``--dist-timeout``) is given up on: its finished records are kept, the run it was in becomes
    a ``failed`` record.
    """
    store, patience = ctx.store, ctx.timeout if patience is None else patience
    records, errors = list(own), []
    waiting = set(range(1, ctx.world_size))
    last_beat = {r: (None, time.monotonic()) for r in waiting}
    while waiting:
        for r in sorted(waiting):
            if store.check([f"repro/done/{r}"]):
                records.extend(_get(store, f"repro/records/{r}", []))
                waiting.discard(r)
                continue
            beat = store.add(f"repro/beat/{r}", 0)
            if beat != last_beat[r][0]:
                last_beat[r] = (beat, time.monotonic())
            elif time.monotonic() - last_beat[r][1] > patience:
                finished = _get(store, f"repro/records/{r}", [])
                records.extend(finished)
                running = _get(store, f"repro/running/{r}")
                lost = f"rank {r} stopped reporting (killed or hung) for over {patience:g}s"
                if running is not None:
                    stage, seed = running
                    records.append(RunRecord(stage=stage, seed=seed, group_id=group_id, status="failed", error=lost,
                                             rank=r, world_size=ctx.world_size).to_dict())
                done = {(rec["stage"], rec["seed"]) for rec in finished} | ({running} if running else set())
                never = [f"{s} seed {n}" for s, n in plan[r] if (s, n) not in done]
                errors.append(lost + (f"; its run {running[0]} seed {running[1]} is recorded as failed"
                                      if running else "") + (f"; never run: {', '.join(never)}" if never else ""))
                waiting.discard(r)
        if waiting:
            time.sleep(0.2)
    return records, errors


def teardown(ctx: DistContext | None) -> None:
    if ctx is None:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:
            pass


def mark_collected(ctx: DistContext) -> None:
    ctx.store.set("repro/collected", b"1")


def wait_collected(ctx: DistContext) -> bool:
    """On ranks > 0: stay up until rank 0 has the records (torchrun stops every rank when one exits
    with an error), at most ``--dist-timeout``."""
    try:
        ctx.store.wait(["repro/collected"], _dt.timedelta(seconds=ctx.timeout))
        return True
    except Exception:
        return False

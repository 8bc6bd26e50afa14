"""The processes of one round under a multi-process launch (``accelerate launch``, ``torchrun``).

The main process owns the round: the lock, the export, the run record and its progress, the gate,
the release. It alone reads and writes Redis and the data directory. Once it has prepared what the
round trains on (``trainer.round_update.TrainingInputs``) it sends that to the others in one broadcast,
or, when the round ends before training (no new feedback, the lock held, a bad config), word to stop.
Then every process trains the reward model and updates the policy with it: each takes an equal share
of every batch (``share_of``, ``shard``), gradients are averaged across processes (DDP), and only the
main process writes the candidate. The others then exit; the main process gates and releases.

A process that fails stops the launch: the launcher sends SIGTERM to the others, which the main
process turns into ``StoppedError`` (``leading``), so that its run is recorded failed, nothing is
released and the lock is freed. One process (plain ``loopdesk train``, the RQ worker) is a team of
one: nothing is sent, and every share is the whole.
"""

from __future__ import annotations

import signal
import sys
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Iterator, Sequence, TypeVar

from accelerate import PartialState
from accelerate.utils import broadcast_object_list, gather_object, get_int_from_env, parse_flag_from_env

from trainer.round_config import RoundConfig

T = TypeVar("T")


class LaunchError(RuntimeError):
    """The launcher started several processes, but they did not form one process group."""


class StoppedError(BaseException):
    """The launcher stopped this process (SIGTERM), as it does once another process of the round failed.

    A BaseException, like KeyboardInterrupt: nothing on the way catches it as a training error.
    """


def _stopped(signum: int, frame: Any) -> None:
    """SIGTERM in the main process: raise ``StoppedError`` once, unless an error is being handled already
    (the round is failing and recording why: let it finish; the launcher waits a while before SIGKILL)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if sys.exc_info()[1] is None:
        raise StoppedError("the launcher stopped this process (SIGTERM), as it does when another process of the "
                           "round fails: that process's output says why")


class Team:
    """This process's place in the round's processes: ``index`` of ``size``, the main one at index 0."""

    def __init__(self) -> None:
        # the process group as the launch configured it: ACCELERATE_USE_CPU is read as Accelerator() reads it
        self.state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
        self.sent = False

    @classmethod
    def launched(cls) -> "Team":
        """The team the launcher started this process in.

        Raises:
            LaunchError: the launcher started several processes (``WORLD_SIZE``) but accelerate formed no
                process group of that size, as on a machine without a GPU unless ``ACCELERATE_USE_CPU=true``.
        """
        team = cls()
        started = get_int_from_env(["WORLD_SIZE"], 1)  # torchrun's contract with the processes it starts
        if started != team.size:
            raise LaunchError(
                f"the launcher started {started} processes but accelerate formed a group of {team.size}: without "
                "a GPU, set ACCELERATE_USE_CPU=true so that they train on the CPU together (gloo); each would "
                "otherwise run a round of its own")
        return team

    @property
    def size(self) -> int:
        return self.state.num_processes

    @property
    def index(self) -> int:
        return self.state.process_index

    @property
    def is_main(self) -> bool:
        return self.state.is_main_process

    def share_of(self, config: RoundConfig) -> RoundConfig:
        """``config`` with the batch sizes of the stages the round runs cut to this process's share.

        Raises:
            ValueError: a batch size is not a multiple of the number of processes (each takes an equal
                share, so that a step means the same on any number of them).
        """
        if self.size == 1:
            return config
        cuts = {"reward_model": ("batch_size",)}
        if config.method == "ppo":
            cuts["ppo"] = ("batch_size", "mini_batch_size") + (("ptx_batch_size",) if config.ppo.ptx_coef > 0 else ())
        if config.method != "ppo" or config.warm_start_steps > 0:
            cuts["baseline"] = ("batch_size",)
        uneven = [f"{section}.{name} ({getattr(getattr(config, section), name)})" for section, names in cuts.items()
                  for name in names if getattr(getattr(config, section), name) % self.size]
        if uneven:
            raise ValueError(f"{', '.join(uneven)} must be multiples of the {self.size} processes: each process "
                             "takes an equal share of every batch")
        if "baseline" in cuts and config.baseline.batch_size // self.size < 2:
            raise ValueError(f"baseline.batch_size ({config.baseline.batch_size}) leaves each of the {self.size} "
                             "processes fewer than the 2 examples a batch needs")
        return replace(config, **{section: replace(getattr(config, section), **{
            name: getattr(getattr(config, section), name) // self.size for name in names})
            for section, names in cuts.items()})

    def shard(self, items: Sequence[T]) -> list[T]:
        """This process's equal share of ``items`` (contiguous); what does not divide evenly is left out."""
        whole = len(items) - len(items) % self.size
        with self.state.split_between_processes(list(items[:whole])) as mine:
            return list(mine)

    def gather(self, value: T) -> list[T]:
        """``value`` of every process, in process order (every process calls it)."""
        return gather_object([value])

    def send(self, inputs: Any) -> None:
        """The main process: hand ``inputs`` (None: stop, no training) to the others, once."""
        if self.size > 1:
            broadcast_object_list([inputs], from_process=0)
        self.sent = True

    def receive(self) -> Any:
        """A non-main process: what the main process sent (``send``)."""
        box = [None]
        broadcast_object_list(box, from_process=0)
        return box[0]

    @contextmanager
    def leading(self) -> Iterator["Team"]:
        """The main process's part around its round: SIGTERM raises ``StoppedError``, and if the round ends
        before ``send`` (a failure, an early exit), the others are told to stop."""
        previous = signal.signal(signal.SIGTERM, _stopped) if self.size > 1 else None
        stopped = False
        try:
            yield self
        except StoppedError:
            stopped = True
            raise
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            if not (self.sent or stopped):
                try:
                    self.send(None)
                except Exception as exc:  # the others are gone already: the launcher stops the launch
                    print(f"loopdesk: could not tell the other processes to stop: {exc}", file=sys.stderr)

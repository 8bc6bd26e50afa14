"""``python -m tests.failing_peer train ...``: the ``loopdesk`` command, with process 1 of a launch failing
in its first PPO rollout (how a test makes one process of a round fail)."""

from __future__ import annotations

import sys

from trainer.ppo import PPOTrainer
from trainer.team import Team


def broken_rollout(self, prompts):
    raise RuntimeError("process 1 ran out of memory in its rollout")


if __name__ == "__main__":
    if Team.launched().index == 1:
        PPOTrainer.rollout = broken_rollout
    from loopdesk.cli import main

    sys.exit(main())

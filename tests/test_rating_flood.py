"""The rating flood of ``bench/rating_flood.py`` at a small size: through the real app, a flood from
one and from five addresses moves a worse canary's weighted CSAT by less than 0.1 and flips no
decision, while the old counting of the same ratings promotes it."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.rating_flood import LIFTED, ZERO_TURN_TRIES, run_scenario
from loopdesk.config import load_settings

pytestmark = pytest.mark.slow


def test_a_flood_neither_moves_the_weighted_canary_csat_nor_flips_the_decision(data_dir: Path, base_model_dir: Path,
                                                                               tmp_path: Path):
    settings = load_settings({}, data_dir=data_dir, base_model=str(base_model_dir), max_reply_tokens=4,
                             rate_limit_per_ip=LIFTED, rate_limit_per_conversation=LIFTED)
    rows, attacks = run_scenario(settings, base_model_dir, "worse", n=60, fakes=60,
                                 address_counts=(1, 5), seed=0)
    for attack in attacks:
        assert attack.refused == ZERO_TURN_TRIES  # the attacker had to chat before every rating
        assert sum(r.answered for r in attack.ratings) == 60
    old = [r for r in rows if r.rule == "old"]
    new = [r for r in rows if r.rule == "new"]
    assert len(old) == len(new) == 2
    assert all(r.shift > 0.3 and r.decision_after == "promote" for r in old), old
    assert all(abs(r.shift) < 0.1 and not r.flipped for r in new), new

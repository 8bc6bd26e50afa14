"""Whether a person can take a chat now (an agent online, within ``business_hours``), and what the
customer is told of a handoff: its state, with when the team is back while it is closed."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from bot.schemas import HandoffState
from bot.services import Services
from feedback_store.records import Handoff


@dataclass(frozen=True)
class Availability:
    """``available``: an agent is online and it is within business hours; ``back``: when the team is
    back (empty within business hours, or when no hours are set)."""

    available: bool
    back: str
    agents_online: int


def availability(svc: Services, now: datetime | None = None) -> Availability:
    """Whether a handoff now would reach a person."""
    now = now or datetime.now(timezone.utc)
    hours = svc.settings.opening_hours
    open_now = hours is None or hours.is_open(now)
    online = len(svc.store.handoffs.agents_online())
    return Availability(open_now and online > 0, "" if open_now else hours.when_back(now), online)


def handoff_state(svc: Services, handoff: Handoff | None) -> HandoffState | None:
    """What the widget shows of ``handoff`` (``back`` as of now, for one nobody could take)."""
    if handoff is None:
        return None
    back = "" if handoff.available else availability(svc).back
    return HandoffState(reason=handoff.reason, available=handoff.available, back=back,
                        agent_name=handoff.agent_name, contact_email=handoff.contact_email)

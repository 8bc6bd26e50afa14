"""Hostile input on feedback_store: any text, number or tag either round-trips (PII masked) or is refused
with a typed error; nothing else escapes and nothing is half-written."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from feedback_store import FeedbackStoreError
from loopdesk.pii import mask_pii
from tests.store_helpers import chat

ANY_TEXT = st.text(min_size=0, max_size=300) | st.sampled_from(
    ["<script>alert(1)</script>", "'; DROP TABLE x; --", "\x00\x01", "LD:NOTFOUND:fake", "🙂" * 50, " "])
FUZZ = hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(text=ANY_TEXT)
def test_customer_text_round_trips_or_is_refused(store, text):
    conv, token = store.conversations.start("base")
    try:
        turn = store.conversations.append_customer(conv.id, token, text)
    except FeedbackStoreError:
        assert store.conversations.get(conv.id).n_turns == 0
        return
    assert store.conversations.turns(conv.id)[turn.index].text == mask_pii(text)  # stored as the model sees it


@FUZZ
@given(score=st.integers(-10, 10), comment=ANY_TEXT)
def test_ratings_accept_only_one_to_five(store, score, comment):
    conv, token = chat(store)
    try:
        store.ratings.rate(conv.id, token, score, comment)
    except FeedbackStoreError:
        assert not 1 <= score <= 5 or len(comment) > 2000
        assert store.conversations.get(conv.id).csat is None
        return
    got = store.conversations.get(conv.id)
    assert (got.csat, got.csat_comment) == (score, mask_pii(comment))


@FUZZ
@given(score=st.integers(-5, 5), tags=st.lists(ANY_TEXT, max_size=4), note=ANY_TEXT, expert=ANY_TEXT,
       conv_id=st.none() | ANY_TEXT)
def test_annotations_validate_every_field(store, score, tags, note, expert, conv_id):
    conv, token = store.conversations.start("base")
    store.conversations.append_customer(conv.id, token, "hi")
    from tests.store_helpers import bot_turn

    store.conversations.append_bot(conv.id, bot_turn())
    target = conv.id if conv_id is None else conv_id
    try:
        store.annotations.annotate(target, 1, expert, score, tags, "", note)
    except FeedbackStoreError:
        assert store.annotations.for_conversation(conv.id) == {}
        return
    assert store.annotations.for_conversation(conv.id)[1][0].score == score

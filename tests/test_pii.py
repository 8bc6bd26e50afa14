"""The PII maskers: every Luhn-valid card number, e-mail address and common phone format is masked
wherever it stands in a sentence; quantities, order numbers, prices, dates and times are not."""

from __future__ import annotations

import re

from hypothesis import given, settings as hsettings, strategies as st

from loopdesk.pii import CARD_MASK, EMAIL_MASK, PHONE_MASK, luhn_valid, mask_pii, page_url

EXAMPLES = hsettings(max_examples=300, deadline=None)
WORDS = st.sampled_from(["my", "card", "is", "thanks", "please", "refund", "the", "boots", "order", "ok", "exp",
                         "number", "call", "me", "on", "at", "email", "and", "when", "ça", "größe", "🙂"])
SENTENCE = st.lists(WORDS, max_size=6).map(" ".join)
PUNCTUATION = st.sampled_from(["", " ", ": ", " (", ", ", ". ", "\n", "'", '"', "x", "-"])
NON_DIGIT_EDGE = st.sampled_from(["", " ", ".", ",", ")", "!", "?", "\n", " and", "x"])


def with_check_digit(body: str) -> str:
    """``body`` plus the digit that makes it pass the Luhn check."""
    return next(body + d for d in "0123456789" if luhn_valid(body + d))


@st.composite
def card_numbers(draw) -> str:
    """A Luhn-valid number of 13-19 digits as a customer might type it: unbroken, in fours, or in
    other groups of 3+ digits split by spaces or dashes."""
    length = draw(st.integers(13, 19))
    digits = with_check_digit(draw(st.text("0123456789", min_size=length - 1, max_size=length - 1)))
    style = draw(st.sampled_from(["plain", "fours", "groups"]))
    if style == "plain":
        return digits
    if style == "fours":
        sizes = [4] * (length // 4) + ([length % 4] if length % 4 else [])
        if sizes[-1] < 3:
            sizes = sizes[:-2] + [sizes[-2] + sizes[-1]]
    else:
        sizes, left = [], length
        while left:
            size = left if left <= 6 else draw(st.integers(3, min(6, left - 3)))
            sizes.append(size)
            left -= size
    separator = draw(st.sampled_from([" ", "-"]))
    parts, at = [], 0
    for size in sizes:
        parts.append(digits[at:at + size])
        at += size
    return separator.join(parts)


@EXAMPLES
@given(before=SENTENCE, edge_before=PUNCTUATION, card=card_numbers(), edge_after=NON_DIGIT_EDGE, after=SENTENCE)
def test_every_luhn_valid_card_number_is_masked_wherever_it_stands(before, edge_before, card, edge_after, after):
    text = f"{before}{edge_before}{card}{edge_after}{after}"
    masked = mask_pii(text)
    assert CARD_MASK in masked and card not in masked
    assert re.sub(r"\D", "", card) not in re.sub(r"\D", "", masked)


def test_a_card_number_beside_its_expiry_date_and_a_luhn_invalid_number():
    assert mask_pii("card 4111 1111 1111 1111 12/25 cvv 123") == "card [card] 12/25 cvv 123"
    assert mask_pii("4111111111111112") == "4111111111111112"  # fails the Luhn check, and too long for a phone


@st.composite
def email_addresses(draw) -> str:
    local = draw(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._%+-]{0,20}", fullmatch=True))
    labels = draw(st.lists(st.from_regex(r"[a-z0-9][a-z0-9-]{0,10}", fullmatch=True), min_size=1, max_size=3))
    tld = draw(st.from_regex(r"[a-z]{2,6}", fullmatch=True))
    return f"{local}@{'.'.join(labels)}.{tld}"


@EXAMPLES
@given(before=SENTENCE, edge=PUNCTUATION, email=email_addresses(), after=SENTENCE)
def test_every_email_address_is_masked(before, edge, email, after):
    masked = mask_pii(f"{before}{edge}{email} {after}")
    assert EMAIL_MASK in masked and "@" not in masked


PHONE_FORMATS = ["0800 ### ####", "07### ######", "+44 ## #### ####", "+44 (0)## #### ####", "(###) ###-####",
                 "###-###-####", "+1 ###-###-####", "1-800-###-####", "###.###.####", "0# ## ## ## ##",
                 "+33 # ## ## ## ##", "+49 ## #######", "0##########"]


@EXAMPLES
@given(before=SENTENCE, edge_before=PUNCTUATION, pattern=st.sampled_from(PHONE_FORMATS),
       digits=st.text("0123456789", min_size=12, max_size=12), edge_after=NON_DIGIT_EDGE, after=SENTENCE)
def test_common_phone_number_formats_are_masked(before, edge_before, pattern, digits, edge_after, after):
    fill = iter(digits)
    phone = re.sub("#", lambda _: next(fill), pattern)
    masked = mask_pii(f"{before}{edge_before}{phone}{edge_after}{after}")
    assert PHONE_MASK in masked and phone not in masked


@st.composite
def ordinary_numbers(draw) -> str:
    """Numbers a customer-service chat is full of: none is personal data."""
    n = draw(st.integers(0, 99_999_999))
    year, month, day = draw(st.integers(1990, 2099)), draw(st.integers(1, 12)), draw(st.integers(1, 28))
    hour, minute = draw(st.integers(0, 23)), draw(st.integers(0, 59))
    pounds, pence = draw(st.integers(0, 999_999)), draw(st.integers(0, 99))
    time_of_day = f"{hour:02d}:{minute:02d}"
    return draw(st.sampled_from([
        f"{n % 1000} days", f"order {n}", f"order #{draw(st.integers(0, 10**12))}", f"{n % 100} items",
        f"£{pounds}.{pence:02d}", f"${pounds:,}.{pence:02d}", f"€ {pounds}", f"{pounds},{pence:02d} EUR",
        f"{n % 100}%", f"size {n % 20}", f"{year}-{month:02d}-{day:02d}", f"{day:02d}/{month:02d}/{year}",
        f"{day:02d}.{month:02d}.{year}", f"{day} March {year}", f"March {day}, {year}", time_of_day,
        f"{year}-{month:02d}-{day:02d} {time_of_day}", f"{day:02d}.{month:02d}.{year} {time_of_day}",
        f"{time_of_day} on {year}-{month:02d}-{day:02d}", f"{year}-{month:02d}-{day:02d}T{time_of_day}:00",
        f"between {year} and {year + 1}", f"{n % 10} x {n % 7} boxes", f"{hour}am to {hour % 12 + 1}pm",
    ]))


@EXAMPLES
@given(numbers=st.lists(ordinary_numbers(), min_size=1, max_size=4),
       joiner=st.sampled_from([" and ", ", ", "; ", " then ", ". On "]), before=SENTENCE)
def test_ordinary_numbers_are_left_alone(numbers, joiner, before):
    text = f"{before} {joiner.join(numbers)}"
    assert mask_pii(text) == text


@EXAMPLES
@given(text=st.text(max_size=200) | st.builds(lambda a, c, b: f"{a} {c} {b}", SENTENCE, card_numbers(), SENTENCE))
def test_masking_is_idempotent_and_never_empties_a_message(text):
    once = mask_pii(text)
    assert mask_pii(once) == once
    assert bool(once.strip()) == bool(text.strip())


def test_a_long_message_is_masked_quickly():
    import time

    started = time.perf_counter()
    for hostile in ("a" * 8000, "1" * 8000, "1 " * 4000, "a@" * 4000, "a." * 4000 + "@", "(1)" * 2600):
        mask_pii(hostile)
    assert time.perf_counter() - started < 1.0


def test_page_urls_keep_scheme_host_and_path_only():
    assert page_url("https://shop.example/account/orders?email=a%40b.example&token=abc#top") == \
        "https://shop.example/account/orders"
    assert page_url("http://user:pw@shop.example:8080/boots") == "http://shop.example:8080/boots"
    assert page_url("/checkout?card=4111111111111111") == "/checkout"
    assert page_url("summer sale") == "summer sale"

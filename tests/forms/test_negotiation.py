"""forms/negotiation.py's urlencoded reader is parse_qsl's contract at half its CPU: the same pairs and the
same refusals, on generated bodies full of the characters that matter (separators, '+', '%' escapes good and
bad, non-ASCII)."""

from __future__ import annotations

from urllib.parse import parse_qsl

from hypothesis import example, given, settings
from hypothesis import strategies as st

from leadsync.forms.negotiation import parse_urlencoded

PIECES = ["&", "=", "+", "%", "%2", "%40", "%2B", "%C3%A9", "%E2%82", "%FF", "%zz", "a", "Zoë", "東", " ", ";", "&&"]


def outcome(parse: object, text: str, max_fields: int) -> object:
    try:
        return parse(text, max_fields)  # type: ignore[operator]
    except (ValueError, UnicodeDecodeError) as error:
        return type(error)


def stdlib(text: str, max_fields: int) -> list[tuple[str, str]]:
    return parse_qsl(text, keep_blank_values=True, max_num_fields=max_fields, errors="strict")


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=30).map("".join), st.integers(min_value=1, max_value=8))
@example("email=ann%40example.org&first_name=Ann&phone=%2B1+415+555+2671&newsletter_opt_in=&website=", 100)
@example("", 1)
@example("a=1&b=2", 1)
@example("a=1&b=2", 2)
@example("=&=", 5)
@example("%E9=1", 5)
def test_the_same_pairs_and_refusals_as_parse_qsl(text: str, max_fields: int) -> None:
    assert outcome(parse_urlencoded, text, max_fields) == outcome(stdlib, text, max_fields)

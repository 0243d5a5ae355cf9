"""TokenAuth remembers headers that authenticated (each call is authenticated twice):
the memo must never let in what the tokens file does not, and must stay bounded."""

from __future__ import annotations

import pytest

from hashmatch.server.auth import KNOWN_HEADERS_KEPT, TokenAuth, Unauthenticated, hash_token


def _auth(*tokens: str) -> TokenAuth:
    return TokenAuth.from_mapping(
        {"tenants": {"acme": {"tokens_sha256": [hash_token(t) for t in tokens]}}}
    )


def _md(header: str) -> list[tuple[str, str]]:
    return [("user-agent", "test"), ("authorization", header)]


def test_a_remembered_header_gives_the_same_principal_and_unknown_ones_stay_refused():
    auth = _auth("good-token")
    first = auth.authenticate(_md("Bearer good-token"))
    assert auth.authenticate(_md("Bearer good-token")) is first
    assert first.tenant == "acme"
    for header in ("Bearer bad-token", "Bearer good-token2", "Basic good-token", "Bearer "):
        with pytest.raises(Unauthenticated):
            auth.authenticate(_md(header))


def test_a_reload_without_the_token_refuses_it():
    old = _auth("rotated-out")
    old.authenticate(_md("Bearer rotated-out"))
    with pytest.raises(Unauthenticated):
        _auth("new-token").authenticate(_md("Bearer rotated-out"))


def test_many_spellings_of_a_valid_header_keep_the_memo_bounded():
    auth = _auth("good-token")
    for n in range(KNOWN_HEADERS_KEPT * 2 + 5):
        header = "Bearer good-token" + " " * n  # the token is stripped: all valid
        assert auth.authenticate(_md(header)).tenant == "acme"
        assert len(auth._known_headers) <= KNOWN_HEADERS_KEPT

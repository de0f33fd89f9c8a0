"""The one OPS_TOKEN policy (leadsync/ops_auth.py): HTTP fails closed, the CLI is open until a token is set."""

from __future__ import annotations

from leadsync.config import Settings
from leadsync.ops_auth import Refusal, cli_allows, http_refusal


def test_http_fails_closed_and_wants_the_bearer_token() -> None:
    unset = Settings(_env_file=None, ops_token="")
    assert http_refusal(unset, "Bearer anything") == Refusal(
        403, "authorization", "OPS_TOKEN is not configured on this server."
    )
    token = Settings(_env_file=None, ops_token="s3cret")
    wrong = Refusal(401, "authorization", "Send Authorization: Bearer <OPS_TOKEN>.")
    assert [http_refusal(token, header) for header in ("", "Bearer", "Bearer nope", "Basic s3cret")] == [wrong] * 4
    assert http_refusal(token, "Bearer s3cret") is None and http_refusal(token, "bearer  s3cret ") is None


def test_the_cli_runs_without_a_token_configured_and_wants_it_once_set() -> None:
    assert cli_allows(Settings(_env_file=None, ops_token=""), None)
    token = Settings(_env_file=None, ops_token="s3cret")
    assert [cli_allows(token, presented) for presented in (None, "", "nope", "s3cret")] == [False, False, False, True]

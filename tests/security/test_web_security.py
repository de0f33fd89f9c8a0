"""CORS only for ALLOWED_ORIGINS, security headers on every answer, OPS_TOKEN checks, and secrets that never
show in a repr."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from leadsync.config import Settings
from leadsync.forms.app import create_app
from leadsync.forms.security import require_ops_token
from leadsync.ops_auth import matches as ops_token_matches
from leadsync.worker.crm.hubspot import HubSpotCrm
from leadsync.worker.mail.transport import SmtpTransport
from tests.support.stack import TEST_SECRET

SITE = "https://clinic.example"


def offline_settings(tmp_path: Path, **values: object) -> Settings:
    values = {"form_token_secret": TEST_SECRET, **values}
    return Settings(var_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'x.db'}", **values)  # type: ignore[arg-type]


def test_cors_allows_only_the_configured_origins(tmp_path: Path) -> None:
    client = TestClient(create_app(offline_settings(tmp_path, allowed_origins=[SITE])))
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    allowed = client.options("/forms/newsletter", headers={"Origin": SITE, **preflight})
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == SITE
    refused = client.options("/forms/newsletter", headers={"Origin": "https://evil.example", **preflight})
    assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers
    simple = client.get("/healthz", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in simple.headers


@pytest.mark.parametrize("path", ["/healthz", "/openapi.json", "/thank-you", "/static/v1/leadsync-forms.js", "/nope"])
def test_every_answer_carries_the_security_headers(tmp_path: Path, path: str) -> None:
    response = TestClient(create_app(offline_settings(tmp_path))).get(path)
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "strict-origin-when-cross-origin"
    assert response.headers["x-frame-options"] == "DENY"
    csp = response.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
    assert "strict-transport-security" not in response.headers  # http: HSTS would be meaningless


def test_the_demo_page_works_under_the_csp_and_https_gets_hsts(tmp_path: Path) -> None:
    settings = offline_settings(tmp_path, dev_mode=True, public_base_url="https://leads.clinic.example")
    response = TestClient(create_app(settings)).get("/")
    assert response.status_code == 200
    assert "<script>" not in response.text  # no inline script: script-src 'self' lets the page work
    assert 'src="/static/v1/leadsync-forms.js"' in response.text
    assert response.headers["strict-transport-security"].startswith("max-age=")


async def _protected(request: Request) -> Response:
    if (refused := require_ops_token(request)) is not None:
        return refused
    return JSONResponse({"ok": True})


def _ops_app(token: str | None) -> TestClient:
    app = Starlette(routes=[Route("/ops", _protected, methods=["POST"])])
    app.state.settings = Settings(ops_token=token)
    return TestClient(app)


def test_operations_endpoints_need_the_ops_token() -> None:
    client = _ops_app("s3cret-ops")
    assert client.post("/ops").status_code == 401
    assert client.post("/ops", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.post("/ops", headers={"Authorization": "Basic s3cret-ops"}).status_code == 401
    assert client.post("/ops", headers={"Authorization": "Bearer s3cret-ops"}).json() == {"ok": True}
    assert _ops_app(None).post("/ops", headers={"Authorization": "Bearer "}).status_code == 403  # fails closed


def test_ops_token_comparison() -> None:
    settings = Settings(ops_token="s3cret-ops")
    assert ops_token_matches("s3cret-ops", settings)
    assert not ops_token_matches("s3cret-op", settings) and not ops_token_matches(None, settings)
    assert not ops_token_matches("é", settings)  # non-ASCII does not raise (compare_digest on bytes)
    assert not ops_token_matches("", Settings(ops_token=""))


def test_secrets_never_show_in_reprs() -> None:
    settings = Settings(
        hubspot_access_token="pat-na1-SECRET-hub",
        smtp_password="SECRET-smtp",
        smtp_username="mailer",
        ops_token="SECRET-ops",
        form_token_secret="SECRET-form",
        database_url="postgresql+psycopg://leadsync:SECRET-db@db.internal/leadsync",
        broker_url="redis://:SECRET-redis@redis.internal:6379/0",
    )
    crm = HubSpotCrm(token="pat-na1-SECRET-hub", base_url="https://api.hubapi.com", timeout=5)
    transport = SmtpTransport(settings.model_copy(update={"smtp_host": "smtp.example"}))
    for shown in (repr(settings), str(settings), repr(crm), str(crm), repr(transport), str(transport)):
        assert "SECRET" not in shown, shown
    assert "db.internal" in repr(settings)  # the rest of the URL stays readable
    assert isinstance(settings.smtp_password, SecretStr)

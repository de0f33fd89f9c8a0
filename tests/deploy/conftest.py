"""One production rehearsal for the whole of tests/deploy: started once (about 10 s), its logs shown on failure."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.deploy.rehearsal import HUBSPOT_TOKEN, Rehearsal
from tests.support.hubspot_emulator import HubSpotEmulator
from tests.support.services import PostgresServer, RedisServer, SmtpSink


@pytest.fixture(scope="package")
def rehearsal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rehearsal]:
    # Servers of its own: rate-limit counters and rows from other tests cannot leak into its figures.
    with RedisServer() as redis, PostgresServer() as postgres, SmtpSink() as smtp:
        hubspot = HubSpotEmulator(token=HUBSPOT_TOKEN).start()
        running = Rehearsal(tmp_path_factory.mktemp("rehearsal"), postgres, redis, smtp, hubspot)
        try:
            yield running.start()
        finally:
            running.stop()
            hubspot.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
    report = yield
    if report.when == "call" and report.failed and "rehearsal" in getattr(item, "funcargs", {}):
        # Server logs live in files; a failing test shows them, a passing one keeps the output quiet.
        report.sections.append(("rehearsal logs", item.funcargs["rehearsal"].logs()))
    return report

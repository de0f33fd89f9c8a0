"""The CRM port without a network: both adapters keep the `Crm` protocol's signatures, and the batch
narrowing (worker/crm/batching.py) settles a refused batch against the in-memory stub."""

from __future__ import annotations

import inspect

import pytest

from leadsync.config import get_settings
from leadsync.worker.crm.batching import write_batch
from leadsync.worker.crm.hubspot import HubSpotCrm
from leadsync.worker.crm.mapping import Mapping, load_mapping
from leadsync.worker.crm.port import Crm, CrmRateLimited, WriteInput
from leadsync.worker.crm.stub import StubCrm


def mapping() -> Mapping:
    return load_mapping(get_settings().hubspot_mapping_path)


def inputs(count: int) -> list[WriteInput]:
    return [WriteInput(f"p{i}@example.org", {"firstname": f"P{i}"}, str(i)) for i in range(count)]


def test_both_adapters_keep_the_protocol_signatures() -> None:
    members = [name for name in dir(Crm) if not name.startswith("_")]
    assert {"upsert_by_email", "gdpr_delete", "check", "budget", "take_budget"} <= set(members)
    for adapter in (HubSpotCrm, StubCrm):
        for name in members:
            if callable(getattr(Crm, name)):
                wanted = list(inspect.signature(getattr(Crm, name)).parameters)
                assert list(inspect.signature(getattr(adapter, name)).parameters) == wanted, (adapter, name)
    assert isinstance(StubCrm(), Crm)


def test_one_bad_input_in_a_refused_batch_is_isolated_and_the_others_go_through() -> None:
    crm = StubCrm(reject_batches_with={"p5@example.org"})
    outcome = write_batch(crm, mapping(), crm.upsert_by_email, inputs(16))
    assert set(outcome.ids) == {str(i) for i in range(16)} - {"5"}
    assert set(outcome.errors) == {"5"} and outcome.errors["5"].code == "VALIDATION_ERROR"
    # Halving 16 down to the one: 1 + 2 + 2 + 2 + 2 calls, within the budget of 2 * log2(16) + 2 = 10.
    assert crm.count("upsert_by_email") == 9
    assert sorted(props["email"] for props in crm.records.values()) == sorted(
        f"p{i}@example.org" for i in range(16) if i != 5
    )


def test_an_input_refused_in_a_207_is_an_error_for_that_input_only() -> None:
    crm = StubCrm(refuse={"p2@example.org": "INVALID_EMAIL"})
    outcome = write_batch(crm, mapping(), crm.upsert_by_email, inputs(4))
    assert set(outcome.ids) == {"0", "1", "3"} and outcome.errors["2"].code == "INVALID_EMAIL"
    assert crm.count("upsert_by_email") == 1


def test_the_stub_counts_calls_and_hands_each_429_over_once() -> None:
    crm = StubCrm()
    crm.fail_next(CrmRateLimited("HubSpot 429", 10.0, "TEN_SECONDLY_ROLLING"))
    with pytest.raises(CrmRateLimited):
        crm.check()
    crm.check()
    assert (crm.budget().calls, crm.budget().rate_limited) == (2, 1)
    assert crm.take_budget()[1] == 1 and crm.take_budget()[1] == 0  # the shared count gets it once

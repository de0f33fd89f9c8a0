"""The HubSpot emulator, driven only through the real hubspot-api-client (no mocks).

Why: integration tests of the CRM sync trust this emulator to answer like HubSpot; these tests pin the
behaviours the sync depends on (upsert semantics, multi-status batches, errors, rate limits, faults).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hubspot import HubSpot
from hubspot.communication_preferences import PublicUpdateSubscriptionStatusRequest
from hubspot.communication_preferences.exceptions import ApiException as PreferencesApiException
from hubspot.crm.contacts import (
    BatchInputSimplePublicObjectBatchInputUpsert,
    BatchInputSimplePublicObjectId,
    BatchReadInputSimplePublicObjectId,
    PublicGdprDeleteInput,
    PublicObjectSearchRequest,
    SimplePublicObjectBatchInputUpsert,
    SimplePublicObjectId,
    SimplePublicObjectInput,
    SimplePublicObjectInputForCreate,
)
from hubspot.crm.contacts.exceptions import ApiException, NotFoundException, ServiceException, UnauthorizedException
from hubspot.crm.properties import PropertyCreate, PropertyGroupCreate
from hubspot.crm.properties.exceptions import ApiException as PropertiesApiException
from urllib3.exceptions import ReadTimeoutError

from tests.support.hubspot_emulator import HubSpotEmulator, Strict

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server() -> Iterator[HubSpotEmulator]:
    with HubSpotEmulator(token="emulator-token") as emulator:
        yield emulator


@pytest.fixture
def hub(server: HubSpotEmulator) -> HubSpotEmulator:
    """A fresh portal per test; a generous rate limit unless the test lowers it."""
    server.reset()
    server.rate_limit, server.window_seconds, server.daily_limit = 10_000, 10.0, 250_000
    server.search_lag_seconds = 0.0
    server.strict = Strict()  # the convenient defaults; a test turns strict modes on itself
    return server


@pytest.fixture
def client(hub: HubSpotEmulator) -> HubSpot:
    return HubSpot(access_token=hub.token, host=hub.url)


@pytest.fixture
def upsert(client: HubSpot) -> Callable[..., Any]:
    """Batch upsert by email; keeps one batch_api (each attribute access builds a new api client)."""
    batch_api = client.crm.contacts.batch_api

    def run(*rows: dict[str, Any], trace: bool = False, **kwargs: Any) -> Any:
        inputs = [
            SimplePublicObjectBatchInputUpsert(
                id=row["email"],
                id_property="email",
                properties={k: v for k, v in row.items() if k != "email"},
                object_write_trace_id=f"trace-{i}" if trace else None,
            )
            for i, row in enumerate(rows)
        ]
        return batch_api.upsert(BatchInputSimplePublicObjectBatchInputUpsert(inputs=inputs), **kwargs)

    return run


def error_body(exc: Exception) -> dict[str, Any]:
    return json.loads(exc.body)  # type: ignore[attr-defined]


def test_batch_upsert_creates_then_updates_the_same_record(hub: HubSpotEmulator, upsert: Callable[..., Any]) -> None:
    first = upsert({"email": "ada@example.com", "firstname": "Ada"})
    assert first.status == "COMPLETE"
    created = first.results[0]
    assert created.new is True
    assert created.properties["firstname"] == "Ada"
    assert created.properties["hs_object_id"] == created.id

    time.sleep(0.002)  # so updatedAt can move
    second = upsert({"email": "ada@example.com", "lastname": "Lovelace"})
    updated = second.results[0]
    assert updated.new is False
    assert updated.id == created.id
    assert updated.updated_at > created.updated_at
    stored = hub.contact_by_email("ada@example.com")
    assert stored is not None
    assert stored["properties"]["firstname"] == "Ada"
    assert stored["properties"]["lastname"] == "Lovelace"
    assert hub.calls("/batch/upsert")[0].inputs == 1


def test_upsert_matches_email_case_insensitively_and_stores_it_lowercased(
    hub: HubSpotEmulator, upsert: Callable[..., Any]
) -> None:
    first = upsert({"email": "Grace.Hopper@Example.COM", "firstname": "Grace"}).results[0]
    second = upsert({"email": "grace.hopper@example.com", "jobtitle": "Rear Admiral"}).results[0]
    assert second.id == first.id
    assert second.new is False
    assert first.properties["email"] == "grace.hopper@example.com"
    assert len(hub.contacts) == 1


def test_more_than_100_inputs_is_a_400(hub: HubSpotEmulator, upsert: Callable[..., Any]) -> None:
    with pytest.raises(ApiException) as caught:
        upsert(*({"email": f"user{i}@example.com"} for i in range(101)))
    assert caught.value.status == 400
    assert error_body(caught.value)["category"] == "VALIDATION_ERROR"
    assert hub.contacts == {}
    assert hub.calls("/batch/upsert")[0].inputs == 101


def test_two_inputs_for_the_same_record_are_a_400(hub: HubSpotEmulator, upsert: Callable[..., Any]) -> None:
    with pytest.raises(ApiException) as caught:
        upsert({"email": "dup@example.com"}, {"email": "DUP@example.com"}, trace=True)
    assert caught.value.status == 400
    assert "Duplicate" in error_body(caught.value)["message"]
    assert hub.contacts == {}


def test_invalid_email_without_trace_ids_rejects_the_whole_batch(
    hub: HubSpotEmulator, upsert: Callable[..., Any]
) -> None:
    with pytest.raises(ApiException) as caught:
        upsert({"email": "good@example.com"}, {"email": "not-an-email"})
    assert caught.value.status == 400
    body = error_body(caught.value)
    assert body["category"] == "VALIDATION_ERROR"
    assert body["correlationId"]
    assert body["errors"][0]["code"] == "INVALID_EMAIL"
    assert body["errors"][0]["context"] == {"propertyName": ["email"]}
    assert hub.contacts == {}, "a rejected batch writes nothing"


def test_trace_ids_on_every_input_give_a_207_and_write_the_good_inputs(
    hub: HubSpotEmulator, upsert: Callable[..., Any]
) -> None:
    result = upsert(
        {"email": "good@example.com", "lifecyclestage": "lead"},
        {"email": "not-an-email"},
        {"email": "bad-stage@example.com", "lifecyclestage": "prospect"},
        trace=True,
    )
    assert type(result).__name__ == "BatchResponseSimplePublicUpsertObjectWithErrors"
    assert result.num_errors == 2
    assert [r.properties["email"] for r in result.results] == ["good@example.com"]
    assert result.results[0].object_write_trace_id == "trace-0"
    by_trace = {e.context["objectWriteTraceId"][0]: e for e in result.errors}
    assert set(by_trace) == {"trace-1", "trace-2"}
    assert by_trace["trace-1"].errors[0].code == "INVALID_EMAIL"
    assert by_trace["trace-2"].errors[0].code == "INVALID_OPTION"
    assert by_trace["trace-2"].category == "VALIDATION_ERROR"
    assert hub.contact_by_email("good@example.com") is not None
    assert len(hub.contacts) == 1
    assert hub.count("/batch/upsert", status=207) == 1


def test_unknown_property_fails_until_the_property_is_created(
    hub: HubSpotEmulator, client: HubSpot, upsert: Callable[..., Any]
) -> None:
    row = {"email": "lead@example.com", "leadsync_source": "pricing-page"}
    with pytest.raises(ApiException) as caught:
        upsert(row)
    body = error_body(caught.value)
    assert caught.value.status == 400
    assert body["errors"][0]["code"] == "PROPERTY_DOESNT_EXIST"
    assert body["errors"][0]["context"]["propertyName"] == ["leadsync_source"]

    created = client.crm.properties.core_api.create(
        "contacts",
        PropertyCreate(
            name="leadsync_source",
            label="Lead source",
            type="string",
            field_type="text",
            group_name="contactinformation",
        ),
    )
    assert created.name == "leadsync_source"
    assert upsert(row).results[0].properties["leadsync_source"] == "pricing-page"


def test_single_create_of_an_existing_email_is_a_409_conflict(hub: HubSpotEmulator, client: HubSpot) -> None:
    basic_api = client.crm.contacts.basic_api
    first = basic_api.create(SimplePublicObjectInputForCreate(properties={"email": "taken@example.com"}))
    with pytest.raises(ApiException) as caught:
        basic_api.create(SimplePublicObjectInputForCreate(properties={"email": "TAKEN@example.com"}))
    assert caught.value.status == 409
    body = error_body(caught.value)
    assert body["category"] == "CONFLICT"
    assert body["message"] == f"Contact already exists. Existing ID: {first.id}"


def test_search_by_email_and_other_properties(hub: HubSpotEmulator, client: HubSpot) -> None:
    for i in range(3):
        hub.add_contact({"email": f"p{i}@example.com", "firstname": "Pat", "company": "Acme" if i else "Initech"})
    search_api = client.crm.contacts.search_api

    by_email = search_api.do_search(
        PublicObjectSearchRequest(
            filter_groups=[{"filters": [{"propertyName": "email", "operator": "EQ", "value": "P1@Example.com"}]}],
            properties=["email", "company"],
        )
    )
    assert by_email.total == 1
    assert by_email.results[0].properties["email"] == "p1@example.com"
    assert by_email.results[0].properties["company"] == "Acme"

    page = search_api.do_search(
        PublicObjectSearchRequest(
            filter_groups=[{"filters": [{"propertyName": "company", "operator": "EQ", "value": "acme"}]}], limit=1
        )
    )
    assert page.total == 2
    assert page.paging.next.after == "1"


def test_search_lags_behind_writes_when_asked(hub: HubSpotEmulator, client: HubSpot) -> None:
    hub.search_lag_seconds = 0.3
    hub.add_contact({"email": "late@example.com"})
    request = PublicObjectSearchRequest(
        filter_groups=[{"filters": [{"propertyName": "email", "operator": "EQ", "value": "late@example.com"}]}]
    )
    search_api = client.crm.contacts.search_api
    assert search_api.do_search(request).total == 0
    time.sleep(0.35)
    assert search_api.do_search(request).total == 1


def test_wrong_token_is_a_401(hub: HubSpotEmulator) -> None:
    intruder = HubSpot(access_token="not-the-token", host=hub.url)
    with pytest.raises(UnauthorizedException) as caught:
        intruder.crm.contacts.basic_api.get_page()
    assert caught.value.status == 401
    assert error_body(caught.value)["category"] == "INVALID_AUTHENTICATION"
    assert hub.count(status=401) == 1


def test_rate_limit_answers_429_with_headers_and_the_window_rolls(
    hub: HubSpotEmulator, client: HubSpot, upsert: Callable[..., Any]
) -> None:
    hub.rate_limit, hub.window_seconds = 5, 1.0
    basic_api = client.crm.contacts.basic_api
    _, _, headers = basic_api.get_page_with_http_info()
    assert headers["X-HubSpot-RateLimit-Max"] == "5"
    assert headers["X-HubSpot-RateLimit-Remaining"] == "4"
    for _ in range(4):
        basic_api.get_page()

    with pytest.raises(ApiException) as caught:
        upsert({"email": "throttled@example.com"})
    assert caught.value.status == 429
    assert caught.value.headers["X-HubSpot-RateLimit-Remaining"] == "0"
    assert caught.value.headers["X-HubSpot-RateLimit-Interval-Milliseconds"] == "1000"
    assert caught.value.headers["X-HubSpot-RateLimit-Daily"] == "250000"
    assert caught.value.headers["X-HubSpot-RateLimit-Daily-Remaining"] == str(250_000 - 5)
    body = error_body(caught.value)
    assert body["errorType"] == "RATE_LIMIT"
    assert body["policyName"] == "TEN_SECONDLY_ROLLING"
    assert hub.contact_by_email("throttled@example.com") is None, "a throttled request changes nothing"

    time.sleep(1.05)
    assert upsert({"email": "throttled@example.com"}).results[0].new is True


def test_daily_limit_answers_429_daily(hub: HubSpotEmulator, client: HubSpot) -> None:
    hub.daily_limit = 2
    basic_api = client.crm.contacts.basic_api
    basic_api.get_page()
    basic_api.get_page()
    with pytest.raises(ApiException) as caught:
        basic_api.get_page()
    assert caught.value.status == 429
    assert error_body(caught.value)["policyName"] == "DAILY"
    assert caught.value.headers["X-HubSpot-RateLimit-Daily-Remaining"] == "0"


def test_fail_next_answers_503_twice_then_recovers(hub: HubSpotEmulator, upsert: Callable[..., Any]) -> None:
    hub.fail_next(2, 503)
    for _ in range(2):
        with pytest.raises(ServiceException) as caught:
            upsert({"email": "flaky@example.com"})
        assert caught.value.status == 503
        assert error_body(caught.value)["status"] == "error"
    assert hub.contacts == {}
    assert upsert({"email": "flaky@example.com"}).results[0].new is True
    assert hub.count("/batch/upsert", status=503) == 2
    assert hub.count("/batch/upsert") == 3


def test_fail_for_a_while(hub: HubSpotEmulator, client: HubSpot) -> None:
    hub.fail_for(0.2, status=502)
    basic_api = client.crm.contacts.basic_api
    with pytest.raises(ServiceException):
        basic_api.get_page(_request_timeout=1)
    time.sleep(0.25)
    assert basic_api.get_page().results == []


def test_delay_next_makes_the_client_time_out_but_the_write_still_lands(
    hub: HubSpotEmulator, upsert: Callable[..., Any]
) -> None:
    hub.delay_next(1, 0.4)
    with pytest.raises(ReadTimeoutError):
        upsert({"email": "slow@example.com"}, _request_timeout=0.1)
    deadline = time.monotonic() + 2
    while hub.contact_by_email("slow@example.com") is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert hub.contact_by_email("slow@example.com") is not None, "HubSpot may apply a write the client gave up on"


def test_property_and_group_creation_conflict_the_second_time(hub: HubSpotEmulator, client: HubSpot) -> None:
    properties = client.crm.properties
    groups_api, core_api = properties.groups_api, properties.core_api
    group = PropertyGroupCreate(name="leadsync", label="Leadsync", display_order=5)
    assert groups_api.create("contacts", group).name == "leadsync"
    with pytest.raises(PropertiesApiException) as caught:
        groups_api.create("contacts", group)
    assert caught.value.status == 409
    assert error_body(caught.value)["category"] == "OBJECT_ALREADY_EXISTS"
    assert "leadsync" in {g.name for g in groups_api.get_all("contacts").results}

    prop = PropertyCreate(
        name="leadsync_score", label="Score", type="number", field_type="number", group_name="leadsync"
    )
    assert core_api.create("contacts", prop).group_name == "leadsync"
    with pytest.raises(PropertiesApiException) as caught:
        core_api.create("contacts", prop)
    assert caught.value.status == 409
    assert error_body(caught.value)["category"] == "OBJECT_ALREADY_EXISTS"
    assert core_api.get_by_name("contacts", "leadsync_score").type == "number"


def test_standard_properties_are_seeded(hub: HubSpotEmulator, client: HubSpot) -> None:
    core_api = client.crm.properties.core_api
    names = {p.name for p in core_api.get_all("contacts").results}
    assert {"email", "firstname", "lastname", "phone", "lifecyclestage", "hs_object_id", "company"} <= names
    stage = core_api.get_by_name("contacts", "lifecyclestage")
    assert stage.type == "enumeration"
    assert [o.value for o in stage.options][:2] == ["subscriber", "lead"]
    with pytest.raises(PropertiesApiException) as caught:
        core_api.get_by_name("contacts", "nope")
    assert caught.value.status == 404


def test_gdpr_delete_removes_the_contact_and_remembers_the_email(hub: HubSpotEmulator, client: HubSpot) -> None:
    hub.add_contact({"email": "forget.me@example.com", "firstname": "Fay"})
    basic_api = client.crm.contacts.basic_api
    basic_api.purge(PublicGdprDeleteInput(object_id="Forget.Me@example.com", id_property="email"))
    assert hub.contact_by_email("forget.me@example.com") is None
    assert hub.contacts == {}
    assert "forget.me@example.com" in hub.erased_emails
    with pytest.raises(NotFoundException):
        basic_api.get_by_id("forget.me@example.com", id_property="email")
    assert hub.count("/gdpr-delete", status=204) == 1


def test_lifecyclestage_never_moves_backwards(hub: HubSpotEmulator, upsert: Callable[..., Any]) -> None:
    def write_stage(stage: str) -> str:
        return upsert({"email": "c@example.com", "lifecyclestage": stage}).results[0].properties["lifecyclestage"]

    assert write_stage("customer") == "customer"
    assert write_stage("lead") == "customer", "a backward move is ignored"
    write_stage("")  # clearing is allowed...
    assert "lifecyclestage" not in hub.contact_by_email("c@example.com")["properties"]  # type: ignore[index]
    assert write_stage("lead") == "lead"  # ...and then any stage can be set
    assert write_stage("opportunity") == "opportunity"


def test_single_record_endpoints_and_paging(hub: HubSpotEmulator, client: HubSpot) -> None:
    basic_api = client.crm.contacts.basic_api
    ids = [hub.add_contact({"email": f"u{i}@example.com"})["id"] for i in range(3)]
    updated = basic_api.update(
        "U1@example.com", SimplePublicObjectInput(properties={"phone": "+1 555"}), id_property="email"
    )
    assert updated.id == ids[1]
    assert basic_api.get_by_id(ids[1], properties=["phone"]).properties["phone"] == "+1 555"
    with pytest.raises(NotFoundException):
        basic_api.get_by_id("999999")

    first = basic_api.get_page(limit=2)
    assert [r.id for r in first.results] == ids[:2]
    rest = basic_api.get_page(limit=2, after=first.paging.next.after)
    assert [r.id for r in rest.results] == ids[2:]
    assert rest.paging is None

    basic_api.archive(ids[0])
    assert [r.id for r in basic_api.get_page().results] == ids[1:]
    assert [r.id for r in basic_api.get_page(archived=True).results] == ids[:1]


def test_batch_read_reports_missing_ids_in_a_207(hub: HubSpotEmulator, client: HubSpot) -> None:
    hub.add_contact({"email": "here@example.com", "firstname": "Here"})
    batch_api = client.crm.contacts.batch_api
    result = batch_api.read(
        BatchReadInputSimplePublicObjectId(
            id_property="email",
            inputs=[SimplePublicObjectId(id="HERE@example.com"), SimplePublicObjectId(id="gone@example.com")],
            properties=["firstname"],
            properties_with_history=[],
        )
    )
    assert [r.properties["firstname"] for r in result.results] == ["Here"]
    assert result.errors[0].category == "OBJECT_NOT_FOUND"
    assert result.errors[0].context["ids"] == ["gone@example.com"]

    batch_api.archive(BatchInputSimplePublicObjectId(inputs=[SimplePublicObjectId(id=result.results[0].id)]))
    assert hub.contact_by_email("here@example.com") is None


def test_raw_http_errors_keep_hubspot_shapes(hub: HubSpotEmulator) -> None:
    headers = {"Authorization": f"Bearer {hub.token}", "Content-Type": "application/json"}
    with httpx.Client(base_url=hub.url, headers=headers) as http:
        malformed = http.post("/crm/v3/objects/contacts/batch/upsert", content=b"{not json")
        unknown = http.get("/crm/v3/objects/contacts/1/associations/deals/extra")
    assert malformed.status_code == 400
    assert malformed.json()["category"] == "VALIDATION_ERROR"
    assert unknown.status_code == 404
    assert unknown.json()["status"] == "error"
    assert unknown.headers["X-HubSpot-RateLimit-Max"] == "10000"


# ---------------------------------------------------------------------- strict modes and write counts


def test_created_and_writes_count_every_write_per_email_not_the_final_set(
    hub: HubSpotEmulator, upsert: Callable[..., Any], client: HubSpot
) -> None:
    first = upsert({"email": "once@example.com", "firstname": "A"}).results[0]
    upsert({"email": "ONCE@example.com", "firstname": "B"})  # the same record, a second write
    client.crm.contacts.basic_api.update(first.id, SimplePublicObjectInput(properties={"lastname": "C"}))
    hub.add_contact({"email": "seeded@example.com"})  # seeding is not an API write
    assert len(hub.contacts) == 2  # what a check on the final set would see: no sign of the repeats
    assert hub.created == {"once@example.com": 1}
    assert hub.writes == {"once@example.com": 3}


def test_strict_no_partial_upserts_refuses_a_traced_batch_whole(
    hub: HubSpotEmulator, upsert: Callable[..., Any]
) -> None:
    hub.strict = Strict(no_partial_upserts=True)
    with pytest.raises(ApiException) as caught:
        upsert({"email": "good@example.com"}, {"email": "not-an-email"}, trace=True)
    assert caught.value.status == 400
    assert error_body(caught.value)["errors"][0]["code"] == "INVALID_EMAIL"
    assert hub.contacts == {} and not hub.writes


def test_an_internationalized_address_is_invalid_email(hub: HubSpotEmulator, upsert: Callable[..., Any]) -> None:
    result = upsert({"email": "jörg@example.de"}, {"email": "ok@example.de"}, trace=True)
    assert [e.errors[0].code for e in result.errors] == ["INVALID_EMAIL"]
    assert set(hub.created) == {"ok@example.de"}


def test_strict_updates_do_not_echo_trace_ids(hub: HubSpotEmulator, client: HubSpot) -> None:
    from hubspot.crm.contacts import BatchInputSimplePublicObjectBatchInput, SimplePublicObjectBatchInput

    record = hub.add_contact({"email": "echo@example.com"})
    batch_api = client.crm.contacts.batch_api
    batch = BatchInputSimplePublicObjectBatchInput(
        inputs=[SimplePublicObjectBatchInput(id=record["id"], object_write_trace_id="7", properties={"firstname": "E"})]
    )
    assert batch_api.update(batch).results[0].object_write_trace_id == "7"
    hub.strict = Strict(no_update_trace_echo=True)
    assert batch_api.update(batch).results[0].object_write_trace_id is None


def test_strict_retry_after_and_no_daily_headers_on_429(
    hub: HubSpotEmulator, client: HubSpot, upsert: Callable[..., Any]
) -> None:
    hub.strict = Strict(retry_after=3, daily_headers=False)
    hub.fail_next(1, status=429)
    # A POST: on a GET, urllib3 itself honours Retry-After on a 429 and retries before the client sees it.
    with pytest.raises(ApiException) as caught:
        upsert({"email": "later@example.com"})
    assert caught.value.headers["Retry-After"] == "3"
    basic_api = client.crm.contacts.basic_api
    _, _, headers = basic_api.get_page_with_http_info()
    assert "X-HubSpot-RateLimit-Daily" not in headers and "X-HubSpot-RateLimit-Daily-Remaining" not in headers
    assert headers["X-HubSpot-RateLimit-Max"] == "10000"


@pytest.mark.parametrize("body", ["html", "empty"])
def test_strict_5xx_bodies_are_html_or_empty(hub: HubSpotEmulator, body: str) -> None:
    hub.strict = Strict(error_body=body)  # type: ignore[arg-type]
    hub.fail_next(1, status=502)
    with httpx.Client(base_url=hub.url, headers={"Authorization": f"Bearer {hub.token}"}) as http:
        answer = http.get("/crm/v3/objects/contacts")
    assert answer.status_code == 502
    if body == "html":
        assert answer.headers["content-type"].startswith("text/html") and answer.text.startswith("<html>")
    else:
        assert answer.content == b""


# ---------------------------------------------------------------------- communication preferences (v3)


def preference(email: str, subscription_id: str) -> PublicUpdateSubscriptionStatusRequest:
    return PublicUpdateSubscriptionStatusRequest(
        email_address=email,
        subscription_id=subscription_id,
        legal_basis="CONSENT_WITH_NOTICE",
        legal_basis_explanation="Confirmed by double opt-in",
    )


def test_subscribe_then_unsubscribe_one_subscription_type(hub: HubSpotEmulator, client: HubSpot) -> None:
    newsletter = hub.add_subscription("Newsletter", "Monthly news")
    status_api = client.communication_preferences.status_api
    definitions = client.communication_preferences.definition_api.get_page().subscription_definitions
    assert {d.name for d in definitions} == {"Marketing Information", "One to One", "Newsletter"}

    subscribed = status_api.subscribe(preference("Nia@Example.org", newsletter))
    assert (subscribed.id, subscribed.status, subscribed.source_of_status) == (
        newsletter,
        "SUBSCRIBED",
        "SUBSCRIPTION_STATUS",
    )
    assert subscribed.legal_basis == "CONSENT_WITH_NOTICE"
    assert hub.subscription_status("nia@example.org", newsletter) == "SUBSCRIBED"

    statuses = status_api.get_email_status("nia@example.org")
    assert statuses.recipient == "nia@example.org"
    by_name = {s.name: s.status for s in statuses.subscription_statuses}
    assert by_name == {
        "Marketing Information": "NOT_SUBSCRIBED",
        "One to One": "NOT_SUBSCRIBED",
        "Newsletter": "SUBSCRIBED",
    }

    assert status_api.unsubscribe(preference("nia@example.org", newsletter)).status == "NOT_SUBSCRIBED"
    assert hub.subscription_status("nia@example.org", newsletter) == "NOT_SUBSCRIBED"
    assert status_api.subscribe(preference("nia@example.org", newsletter)).status == "SUBSCRIBED"  # re-subscribed
    assert hub.count("/communication-preferences/v3/", status=200) == 5


def test_asking_for_the_current_state_is_a_400_already(hub: HubSpotEmulator, client: HubSpot) -> None:
    newsletter = hub.add_subscription("Newsletter")
    status_api = client.communication_preferences.status_api
    status_api.subscribe(preference("ann@example.org", newsletter))
    with pytest.raises(PreferencesApiException) as caught:
        status_api.subscribe(preference("ann@example.org", newsletter))
    assert caught.value.status == 400
    assert "is already subscribed" in error_body(caught.value)["message"]
    assert error_body(caught.value)["category"] == "VALIDATION_ERROR"

    status_api.unsubscribe(preference("ann@example.org", newsletter))
    with pytest.raises(PreferencesApiException) as caught:
        status_api.unsubscribe(preference("ann@example.org", newsletter))
    assert caught.value.status == 400 and "is already unsubscribed" in error_body(caught.value)["message"]
    # An address never subscribed may be unsubscribed (an explicit opt-out), once.
    assert status_api.unsubscribe(preference("bo@example.org", newsletter)).status == "NOT_SUBSCRIBED"


def test_preference_errors_keep_hubspot_shapes(hub: HubSpotEmulator, client: HubSpot) -> None:
    newsletter = hub.add_subscription("Newsletter")
    status_api = client.communication_preferences.status_api
    with pytest.raises(PreferencesApiException) as caught:
        status_api.subscribe(preference("ann@example.org", "999"))  # no such subscription type
    assert caught.value.status == 400 and "999" in error_body(caught.value)["message"]
    with pytest.raises(PreferencesApiException) as caught:
        status_api.subscribe(preference("not-an-address", newsletter))
    assert caught.value.status == 400
    hub.opt_out_of_all("out@example.org")
    with pytest.raises(PreferencesApiException) as caught:
        status_api.subscribe(preference("out@example.org", newsletter))
    assert caught.value.status == 400 and "opted out of all" in error_body(caught.value)["message"]
    [status] = [s for s in status_api.get_email_status("out@example.org").subscription_statuses if s.id == newsletter]
    assert (status.status, status.source_of_status) == ("NOT_SUBSCRIBED", "PORTAL_WIDE_STATUS")

    headers = {"Authorization": f"Bearer {hub.token}", "Content-Type": "application/json"}
    with httpx.Client(base_url=hub.url, headers=headers) as http:
        empty = http.post("/communication-preferences/v3/subscribe", json={})
        bad_basis = http.post(
            "/communication-preferences/v3/subscribe",
            json={"emailAddress": "ann@example.org", "subscriptionId": newsletter, "legalBasis": "BECAUSE"},
        )
    assert empty.status_code == 400 and "[emailAddress, subscriptionId]" in empty.json()["message"]
    assert bad_basis.status_code == 400 and "LegalBasis" in bad_basis.json()["message"]
    assert hub.subscription_status("ann@example.org", newsletter) is None  # nothing was changed


def test_preferences_need_the_token_and_share_the_rate_limit(hub: HubSpotEmulator, client: HubSpot) -> None:
    newsletter = hub.add_subscription("Newsletter")
    stranger = HubSpot(access_token="wrong-token", host=hub.url).communication_preferences.status_api
    with pytest.raises(PreferencesApiException) as caught:
        stranger.subscribe(preference("ann@example.org", newsletter))
    assert caught.value.status == 401
    assert hub.subscription_status("ann@example.org", newsletter) is None

    hub.rate_limit = 2
    client.crm.contacts.basic_api.get_page()  # one contacts call and one preferences call fill the window
    status_api = client.communication_preferences.status_api
    status_api.subscribe(preference("ann@example.org", newsletter))
    with pytest.raises(PreferencesApiException) as caught:
        status_api.unsubscribe(preference("ann@example.org", newsletter))
    assert caught.value.status == 429 and error_body(caught.value)["policyName"] == "TEN_SECONDLY_ROLLING"
    assert hub.subscription_status("ann@example.org", newsletter) == "SUBSCRIBED"  # the refused call changed nothing


def test_command_line_entry_point_serves_in_the_foreground() -> None:
    command = [
        sys.executable,
        "-m",
        "tests.support.hubspot_emulator",
        "--port",
        "0",
        "--token",
        "cli-token",
        "--rate-limit",
        "7",
    ]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        url = banner.split(" listening on ")[1].split()[0]
        _, status, headers = HubSpot(
            access_token="cli-token", host=url
        ).crm.contacts.basic_api.get_page_with_http_info()
        assert status == 200
        assert headers["X-HubSpot-RateLimit-Max"] == "7"
    finally:
        process.terminate()
        process.wait(timeout=10)

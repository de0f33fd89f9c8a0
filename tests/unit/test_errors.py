"""Mail's and the CRM's failure classes share one answer (leadsync/errors.py): temporary or permanent.
Checked on the classes and on what the two classifiers make of real replies (SMTP codes, HubSpot statuses)."""

from __future__ import annotations

import pytest
from hubspot.crm.contacts.exceptions import ApiException

from leadsync.errors import DeliveryError, PermanentError, TemporaryError
from leadsync.worker.crm.hubspot_wire import classify
from leadsync.worker.crm.port import CrmAuthError, CrmError, CrmRateLimited, CrmRejected, CrmTemporaryError
from leadsync.worker.mail.errors import MailError, PermanentMailError, TemporaryMailError, UnsendableMessage
from leadsync.worker.mail.transport import _classify


@pytest.mark.parametrize("error_class", [TemporaryMailError, CrmTemporaryError, CrmRateLimited, CrmAuthError])
def test_temporary_classes_are_temporary_errors(error_class: type[Exception]) -> None:
    assert issubclass(error_class, TemporaryError)
    assert not issubclass(error_class, PermanentError)


@pytest.mark.parametrize("error_class", [PermanentMailError, UnsendableMessage, CrmRejected])
def test_permanent_classes_are_permanent_errors(error_class: type[Exception]) -> None:
    assert issubclass(error_class, PermanentError)
    assert not issubclass(error_class, TemporaryError)


def test_both_bases_are_delivery_errors_and_the_old_names_still_catch() -> None:
    assert issubclass(MailError, DeliveryError) and issubclass(CrmError, DeliveryError)
    with pytest.raises(MailError):  # callers that catch the tree's own base keep working
        raise TemporaryMailError("SMTP 451: try again later", 451)
    with pytest.raises(CrmError):
        raise CrmRejected("HubSpot 400: invalid", [{"code": "VALIDATION_ERROR"}])


@pytest.mark.parametrize(("code", "expected"), [(421, TemporaryError), (451, TemporaryError), (550, PermanentError)])
def test_smtp_replies_classify_into_the_shared_hierarchy(code: int, expected: type[Exception]) -> None:
    error = _classify(code, "reply")
    assert isinstance(error, expected) and error.code == code


@pytest.mark.parametrize(
    ("status", "expected"),
    [(500, TemporaryError), (503, TemporaryError), (429, TemporaryError), (401, TemporaryError), (400, PermanentError)],
)
def test_hubspot_statuses_classify_into_the_shared_hierarchy(status: int, expected: type[Exception]) -> None:
    error = classify(ApiException(status=status, reason="reason"))
    assert isinstance(error, expected) and error.status == status

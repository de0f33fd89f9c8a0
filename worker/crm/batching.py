"""One batch write to the CRM with every failure of an input settled: a whole-batch 400 narrowed down
(named duplicates held back, otherwise split in halves until the bad input stands alone, within a call
budget), missing properties created and their inputs sent once more.

Example:
    >>> outcome = write_batch(crm, mapping, crm.upsert_by_email, inputs)
    >>> outcome.ids, outcome.errors  # trace id -> record id; trace id -> why the CRM refused that input
    ({'1': '151', '3': '152'}, {'2': InputError(code='INVALID_EMAIL', message='...')})
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence

from leadsync.worker.crm.mapping import Mapping
from leadsync.worker.crm.port import Crm, CrmRejected, InputError, WriteInput, WriteOutcome

log = logging.getLogger(__name__)

NOT_FOUND = "OBJECT_NOT_FOUND"
MISSING_PROPERTY = "PROPERTY_DOESNT_EXIST"
DUPLICATE = "DUPLICATE_ID"


def write_batch(
    crm: Crm, mapping: Mapping, send: Callable[[Sequence[WriteInput]], WriteOutcome], inputs: list[WriteInput]
) -> WriteOutcome:
    """One batch call (`send` is the client's upsert or update), every failure of an input settled:
    bad inputs isolated, missing properties created and those inputs sent once more."""
    outcome = _isolating(send, inputs, budget=[_split_budget(len(inputs))])
    missing = [item for item in inputs if getattr(outcome.errors.get(item.trace_id), "code", None) == MISSING_PROPERTY]
    if missing:
        try:
            created = crm.bootstrap(mapping)
        except CrmRejected as error:  # the mapping asks for a property HubSpot will not create: say so, once
            log.error("HubSpot refused to create the mapped properties: %s", error)
            reason = InputError(MISSING_PROPERTY, f"{outcome.errors[missing[0].trace_id].message}; bootstrap: {error}")
            outcome.errors.update({item.trace_id: reason for item in missing})
            return outcome
        log.warning("created missing HubSpot properties: %s", ", ".join(created) or "none (already there)")
        outcome.merge(_isolating(send, missing, budget=[_split_budget(len(missing))]))
    return outcome


def _split_budget(size: int) -> int:
    """Calls allowed to isolate bad inputs: enough to find two among 100 by halving, not a storm."""
    return 2 * math.ceil(math.log2(max(size, 2))) + 2


def _isolating(
    send: Callable[[Sequence[WriteInput]], WriteOutcome], inputs: Sequence[WriteInput], budget: list[int]
) -> WriteOutcome:
    """Send; when HubSpot refuses the whole batch, hold back named duplicates or split until the bad input
    stands alone, so one bad input never holds back the others."""
    budget[0] -= 1
    try:
        return send(inputs)
    except CrmRejected as error:
        if len(inputs) == 1 or budget[0] <= 0:
            reason = InputError(error.code, str(error))
            return WriteOutcome(errors={item.trace_id: reason for item in inputs})
        duplicates = _named_duplicates(error, inputs)
        if duplicates:  # they wait for the next flush (no error recorded: nothing is wrong with them)
            log.warning("HubSpot saw two inputs for one record (%s); holding one back", ", ".join(sorted(duplicates)))
            rest = [item for item in inputs if item.trace_id not in duplicates]
            return _isolating(send, rest, budget) if rest else WriteOutcome()
        half = len(inputs) // 2
        outcome = _isolating(send, inputs[:half], budget)
        outcome.merge(_isolating(send, inputs[half:], budget))
        return outcome


def _named_duplicates(error: CrmRejected, inputs: Sequence[WriteInput]) -> set[str]:
    """Trace ids of the later inputs whose key HubSpot names as a duplicate."""
    if error.code != DUPLICATE and "Duplicate" not in str(error):
        return set()
    match = re.search(r"\[([^\]]*)\]", str(error))
    named = {part.strip().lower() for part in (match.group(1) if match else "").split(",") if part.strip()}
    seen: set[str] = set()
    held: set[str] = set()
    for item in inputs:
        key = item.key.lower()
        if key in named and key in seen:
            held.add(item.trace_id)
        seen.add(key)
    return held

"""The process's CRM client and field mapping, built once from the settings: what the tasks, the CLI
(`leadsync hubspot ...`, `leadsync forget`) and bench/crm_sync.py use, without importing worker/tasks.py
(every task and signal) to get them.

Example:
    >>> crm = crm_client()  # None while HUBSPOT_ACCESS_TOKEN is unset
    >>> crm.upsert_by_email(inputs) if crm is not None else None
"""

from __future__ import annotations

from functools import lru_cache

from leadsync.config import get_settings
from leadsync.worker.crm.hubspot import HubSpotCrm
from leadsync.worker.crm.mapping import Mapping, load_mapping
from leadsync.worker.crm.ratelimit import limiter_from_settings


@lru_cache(maxsize=1)
def crm_client() -> HubSpotCrm | None:
    """One HubSpot client per worker process; None while no token is set."""
    settings = get_settings()
    if not settings.hubspot_enabled:
        return None
    assert settings.hubspot_access_token is not None
    token = settings.hubspot_access_token.get_secret_value()
    # Every process takes its slots from one shared window (Redis, or a file on the embedded default).
    limiter = limiter_from_settings(settings, token)
    return HubSpotCrm(token, settings.hubspot_base_url, settings.hubspot_timeout, limiter=limiter)


@lru_cache(maxsize=1)
def crm_mapping() -> Mapping:
    return load_mapping(get_settings().hubspot_mapping_path)

"""Configuration: settings from the environment, the HubSpot field mapping, email templates."""

from leadsync.config.settings import Settings, get_settings

__all__ = ["Settings", "get_settings"]

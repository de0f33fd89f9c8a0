"""leadsync: website form intake, person dedupe, one info-packet email, HubSpot sync."""

__version__ = "0.1.0"

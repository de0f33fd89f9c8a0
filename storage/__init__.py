"""Storage shared by the HTTP edge and the worker: models, sessions, migrations.

Dependency arrows point here: forms -> storage <- worker.
"""

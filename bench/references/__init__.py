"""Reference servers for bench/intake.py: the ceiling of the server stack and the usual tutorial stack."""

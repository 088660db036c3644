"""danescan's Alembic scripts, installed as the package ``danescan_migrations``.

The repository keeps them in the top-level ``migrations/`` (``cd migrations && alembic upgrade
head`` works there); pyproject.toml maps that directory onto this package so that
scanner.store.db finds them through importlib.resources in a wheel as in a checkout.
"""

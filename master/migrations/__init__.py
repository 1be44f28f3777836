"""Alembic migrations of the metadata schema (master/schema.py); run through master/migrate.py."""

"""Backups of Kiln's PostgreSQL databases and its bucket, and restores of them
(`python -m services.backup create DEST` / `restore SRC`)."""

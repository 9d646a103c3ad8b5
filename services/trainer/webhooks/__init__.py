"""Webhooks of the trainer service: endpoints a tenant registers, the outbox written in the
transactions of the events it tells of, and the dispatcher that delivers it (Standard Webhooks)."""

"""`kiln webhooks` as a subprocess against a real gateway relaying the trainer's WebhookService, a
real receiver on loopback: an endpoint made, tested, listed with its deliveries, rotated, disabled
and deleted, the delivery verified with the secret the command showed."""

from __future__ import annotations

from kiln.webhooks import verify
from tests.webhooks import conftest as webhook_fixtures

# The webhook tests' quick retries with loopback allowed, and their receiver.
trainer_overrides = webhook_fixtures.trainer_overrides
receiver = webhook_fixtures.receiver


def test_webhook_endpoints_are_managed_from_the_command_line(cli, receiver):
    created = cli.json("webhooks", "create", receiver.url("/hooks"), "--event", "training.succeeded",
                       "--description", "ci")
    name, secret = created["name"], created["secret"]
    assert name.startswith("webhookEndpoints/") and secret.startswith("whsec_")
    assert created["eventTypes"] == ["training.succeeded"]
    assert [e["name"] for e in cli.json("webhooks", "list")["webhookEndpoints"]] == [name]
    assert "secret" not in cli.json("webhooks", "get", name)

    sent = cli.json("webhooks", "test", name)
    (delivered,) = receiver.wait_for("/hooks", 1)
    payload = verify(delivered.body, delivered.headers, secret)
    assert payload["type"] == "webhook.test"
    deliveries = cli.json("webhooks", "deliveries", name)["deliveries"]
    assert sent["name"] in [d["name"] for d in deliveries]
    shown = cli("webhooks", "deliveries", name)
    assert shown.returncode == 0 and "webhook.test" in shown.stdout

    rotated = cli.json("webhooks", "rotate", name, "--overlap", "60")
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != secret
    disabled = cli.json("webhooks", "update", name, "--disable")
    assert disabled.get("enabled", False) is False
    nothing = cli("webhooks", "update", name)
    assert nothing.returncode == 1 and "nothing to change" in nothing.stderr
    assert cli.json("webhooks", "delete", name) == {"deleted": name}
    gone = cli("webhooks", "get", name)
    assert gone.returncode == 1 and "NOT_FOUND" in gone.stderr and "Traceback" not in gone.stderr

    refused = cli("webhooks", "create", "ftp://example.com/hook")
    assert refused.returncode == 1 and "INVALID_ARGUMENT" in refused.stderr and "url" in refused.stderr

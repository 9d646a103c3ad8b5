"""`kiln webhooks create|list|get|update|delete|rotate|deliveries|replay|test`: endpoints told of your
jobs and models as things happen."""

from __future__ import annotations

import argparse

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.field_mask_pb2 import FieldMask

from kiln.cli.context import Context
from kiln.client import resource
from kiln.errors import KilnError
from kiln.v1 import webhooks_pb2 as pb

EVENT_TYPES = ("training.queued", "training.started", "training.epoch_saved", "training.succeeded",
               "training.failed", "training.cancelled", "model.published")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    group = commands.add_parser("webhooks", help="endpoints told of your jobs and models").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    create = group.add_parser("create", parents=[common], help="register an endpoint (its secret is shown once)")
    create.add_argument("endpoint_url", metavar="URL", help="http(s)://… on a public address")
    create.add_argument("--event", dest="event_types", action="append", choices=EVENT_TYPES, default=[],
                        help="an event type to send (repeatable; default: all)")
    create.add_argument("--description", default="")
    create.set_defaults(run=create_endpoint)
    group.add_parser("list", parents=[common], help="your endpoints").set_defaults(run=list_endpoints)
    for action, run, text in (("get", get_endpoint, "one endpoint"),
                              ("delete", delete_endpoint, "an endpoint with its deliveries"),
                              ("deliveries", list_deliveries, "an endpoint's last deliveries, newest first"),
                              ("test", send_test, "send a webhook.test event now")):
        parser = group.add_parser(action, parents=[common], help=text)
        parser.add_argument("endpoint", help="webhookEndpoints/ID or ID")
        parser.set_defaults(run=run)
    update = group.add_parser("update", parents=[common], help="change an endpoint, or enable it again")
    update.add_argument("endpoint", help="webhookEndpoints/ID or ID")
    update.add_argument("--endpoint-url", dest="endpoint_url", help="a new http(s)://… address")
    update.add_argument("--event", dest="event_types", action="append", choices=EVENT_TYPES)
    update.add_argument("--description")
    state = update.add_mutually_exclusive_group()
    state.add_argument("--enable", dest="enabled", action="store_const", const=True)
    state.add_argument("--disable", dest="enabled", action="store_const", const=False)
    update.set_defaults(run=update_endpoint)
    rotate = group.add_parser("rotate", parents=[common], help="a new signing secret (shown once)")
    rotate.add_argument("endpoint", help="webhookEndpoints/ID or ID")
    rotate.add_argument("--overlap", type=float, help="seconds the old secret keeps signing too (default: a day)")
    rotate.set_defaults(run=rotate_secret)
    replay = group.add_parser("replay", parents=[common], help="send a delivery again now")
    replay.add_argument("delivery", help="webhookEndpoints/ID/deliveries/ID")
    replay.set_defaults(run=replay_delivery)


def _name(ctx: Context) -> str:
    return resource("webhookEndpoints", ctx.args.endpoint)


def describe_endpoint(endpoint: pb.WebhookEndpoint) -> str:
    state = "enabled" if endpoint.enabled else f"disabled ({endpoint.disabled_reason or 'by you'})"
    return f"{endpoint.name}  {endpoint.url}  {state}  {', '.join(endpoint.event_types)}"


def describe_delivery(delivery: pb.WebhookDelivery) -> str:
    state = pb.WebhookDelivery.State.Name(delivery.state).removeprefix("STATE_").lower()
    answer = f"HTTP {delivery.status_code}" if delivery.status_code else (delivery.error or "no answer yet")
    latency = delivery.latency.ToMilliseconds()
    return (f"{delivery.name}  {delivery.event_type}  {state}  {answer}  {latency} ms  "
            f"{delivery.attempt_count} attempt(s)")


def create_endpoint(ctx: Context) -> int:
    args = ctx.args
    endpoint = ctx.client.webhooks.CreateWebhookEndpoint(pb.CreateWebhookEndpointRequest(
        webhook_endpoint=pb.WebhookEndpoint(url=args.endpoint_url, event_types=args.event_types or EVENT_TYPES,
                                            description=args.description)))
    ctx.out.result(endpoint, [f"created {describe_endpoint(endpoint)}",
                              f"its signing secret, shown only now: {endpoint.secret}"])
    return 0


def list_endpoints(ctx: Context) -> int:
    found: list[pb.WebhookEndpoint] = []
    token = ""
    while True:
        page = ctx.client.webhooks.ListWebhookEndpoints(pb.ListWebhookEndpointsRequest(page_size=100,
                                                                                       page_token=token))
        found += page.webhook_endpoints
        token = page.next_page_token
        if not token:
            break
    ctx.out.result({"webhookEndpoints": found}, [describe_endpoint(e) for e in found] or ["no webhook endpoints"])
    return 0


def get_endpoint(ctx: Context) -> int:
    endpoint = ctx.client.webhooks.GetWebhookEndpoint(pb.GetWebhookEndpointRequest(name=_name(ctx)))
    ctx.out.result(endpoint, describe_endpoint(endpoint))
    return 0


def update_endpoint(ctx: Context) -> int:
    args = ctx.args
    endpoint, paths = pb.WebhookEndpoint(name=_name(ctx)), []
    for field, value in (("url", args.endpoint_url), ("description", args.description), ("enabled", args.enabled)):
        if value is not None:
            setattr(endpoint, field, value)
            paths.append(field)
    if args.event_types:
        endpoint.event_types.extend(args.event_types)
        paths.append("event_types")
    if not paths:
        raise KilnError(grpc.StatusCode.INVALID_ARGUMENT, "nothing to change",
                        [("--endpoint-url/--event/--description/--enable/--disable", "give at least one")])
    updated = ctx.client.webhooks.UpdateWebhookEndpoint(pb.UpdateWebhookEndpointRequest(
        webhook_endpoint=endpoint, update_mask=FieldMask(paths=paths)))
    ctx.out.result(updated, describe_endpoint(updated))
    return 0


def delete_endpoint(ctx: Context) -> int:
    name = _name(ctx)
    ctx.client.webhooks.DeleteWebhookEndpoint(pb.DeleteWebhookEndpointRequest(name=name))
    ctx.out.result({"deleted": name}, f"deleted {name}")
    return 0


def rotate_secret(ctx: Context) -> int:
    request = pb.RotateWebhookSecretRequest(name=_name(ctx))
    if ctx.args.overlap is not None:
        overlap = Duration()
        overlap.FromMilliseconds(round(ctx.args.overlap * 1000))
        request.overlap.CopyFrom(overlap)
    endpoint = ctx.client.webhooks.RotateWebhookSecret(request)
    ctx.out.result(endpoint, [f"rotated {endpoint.name}; the new secret, shown only now: {endpoint.secret}"])
    return 0


def list_deliveries(ctx: Context) -> int:
    page = ctx.client.webhooks.ListWebhookDeliveries(pb.ListWebhookDeliveriesRequest(parent=_name(ctx),
                                                                                             page_size=100))
    ctx.out.result(page, [describe_delivery(d) for d in page.deliveries] or ["no deliveries yet"])
    return 0


def replay_delivery(ctx: Context) -> int:
    delivery = ctx.client.webhooks.ReplayWebhookDelivery(pb.ReplayWebhookDeliveryRequest(
        name=ctx.args.delivery))
    ctx.out.result(delivery, describe_delivery(delivery))
    return 0


def send_test(ctx: Context) -> int:
    delivery = ctx.client.webhooks.SendTestWebhook(pb.SendTestWebhookRequest(name=_name(ctx)))
    ctx.out.result(delivery, describe_delivery(delivery))
    return 0

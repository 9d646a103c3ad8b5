import { Webhook } from "standardwebhooks";

export { WebhookVerificationError } from "standardwebhooks";

/** What Kiln sends: the event's type, when it happened, and the names of the resources it is about. */
export interface WebhookEvent {
  /** e.g. "training.succeeded", "model.published", "webhook.test". */
  type: string;
  timestamp: string;
  data: Record<string, unknown>;
}

/** Header values as fetch's Headers, a plain object, or Node's IncomingMessage.headers give them. */
export type WebhookHeaders = Headers | Record<string, string | string[] | undefined>;

/**
 * Checks a delivery's Standard Webhooks signature (`webhook-signature`, HMAC-SHA256 with the
 * endpoint's `whsec_…` secret) and its timestamp (within 5 minutes), and returns its event.
 * Throws WebhookVerificationError for a delivery that is forged, altered or replayed late.
 *
 * Pass the body exactly as received (the raw bytes or text, not re-serialized JSON). While a
 * secret rotation overlaps, a delivery is signed with both secrets and either one verifies it.
 */
export function verifyWebhook(body: string | Uint8Array, headers: WebhookHeaders, secret: string): WebhookEvent {
  return new Webhook(secret).verify(body, plainHeaders(headers)) as WebhookEvent;
}

function plainHeaders(headers: WebhookHeaders): Record<string, string> {
  if (headers instanceof Headers) {
    return Object.fromEntries(headers.entries());
  }
  const plain: Record<string, string> = {};
  for (const [name, value] of Object.entries(headers)) {
    const first = Array.isArray(value) ? value[0] : value;
    if (first !== undefined) {
      plain[name.toLowerCase()] = first;
    }
  }
  return plain;
}

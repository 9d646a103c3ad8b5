/**
 * What the API said when it refused something, shaped for a form: one message for the page and
 * each BadRequest violation under the field it names, so a page shows it beside that field.
 */
import { toKilnError } from "@kiln/sdk";

export interface Refusal {
  /** The API's message (or, for a network failure, what happened). */
  message: string;
  /** The status name ("invalid_argument", "not_found", …). */
  code: string;
  /** Field path (as the API names it, e.g. "config.epochs") → its descriptions. */
  fields: Record<string, string[]>;
}

export function refusal(error: unknown): Refusal {
  const kiln = toKilnError(error);
  const fields: Record<string, string[]> = {};
  for (const violation of kiln.violations) {
    (fields[violation.field] ??= []).push(violation.description);
  }
  const quota = kiln.quotaViolations.map((v) => v.description);
  const message = [kiln.rawMessage, ...quota].filter(Boolean).join(" — ");
  return { message: message || kiln.message, code: codeName(kiln.code), fields };
}

function codeName(code: number): string {
  const names = ["ok", "canceled", "unknown", "invalid_argument", "deadline_exceeded", "not_found",
    "already_exists", "permission_denied", "resource_exhausted", "failed_precondition", "aborted",
    "out_of_range", "unimplemented", "internal", "unavailable", "data_loss", "unauthenticated"];
  return names[code] ?? "unknown";
}

/** The violations on `field` and on anything below it (`config` takes `config.epochs` too). */
export function fieldErrors(refused: Refusal | null, field: string): string[] {
  if (!refused) return [];
  return Object.entries(refused.fields)
    .filter(([path]) => path === field || path.startsWith(`${field}.`) || path.startsWith(`${field}[`))
    .flatMap(([, descriptions]) => descriptions);
}

/** A request id for one user action, so a retried click is applied once. */
export function requestId(): string {
  return crypto.randomUUID();
}

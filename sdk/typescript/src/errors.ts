import { Code, ConnectError } from "@connectrpc/connect";
import type { Interceptor } from "@connectrpc/connect";
import {
  BadRequestSchema,
  ErrorInfoSchema,
  QuotaFailureSchema,
  RetryInfoSchema,
} from "./gen/google/rpc/error_details_pb.js";

/** A request field the server refused, and what to change. */
export interface FieldViolation {
  readonly field: string;
  readonly description: string;
  readonly reason: string;
}

/** A limit the call ran into (RESOURCE_EXHAUSTED). */
export interface QuotaViolation {
  readonly subject: string;
  readonly description: string;
}

/**
 * An error from Kiln: a ConnectError whose details are already decoded.
 *
 * It still passes `instanceof ConnectError` (and keeps its `code`, `metadata`,
 * `rawMessage` and `findDetails`), so code written against Connect keeps working.
 * Its message lists the violations, so logging it says what to fix.
 */
export class KilnError extends ConnectError {
  /** BadRequest field violations (INVALID_ARGUMENT). */
  readonly violations: readonly FieldViolation[];
  /** QuotaFailure violations (RESOURCE_EXHAUSTED). */
  readonly quotaViolations: readonly QuotaViolation[];
  /** RetryInfo: milliseconds after which the same call may succeed. */
  readonly retryDelayMs: number | undefined;
  /** ErrorInfo: the machine-readable reason, e.g. "FILE_TOO_LARGE". */
  readonly reason: string;
  readonly errorMetadata: Readonly<Record<string, string>>;

  constructor(error: ConnectError) {
    super(error.rawMessage, error.code, error.metadata, undefined, error.cause ?? error);
    this.details = error.details;
    this.violations = this.findDetails(BadRequestSchema).flatMap((bad) =>
      bad.fieldViolations.map(({ field, description, reason }) => ({ field, description, reason })),
    );
    this.quotaViolations = this.findDetails(QuotaFailureSchema).flatMap((failure) =>
      failure.violations.map(({ subject, description }) => ({ subject, description })),
    );
    const delay = this.findDetails(RetryInfoSchema)[0]?.retryDelay;
    this.retryDelayMs = delay === undefined ? undefined : Number(delay.seconds) * 1000 + delay.nanos / 1e6;
    const info = this.findDetails(ErrorInfoSchema)[0];
    this.reason = info?.reason ?? "";
    this.errorMetadata = { ...(info?.metadata ?? {}) };
    this.message = readableMessage(this);
  }

  /** Connect recognises its errors by shape; a KilnError is only what this class made. */
  static override [Symbol.hasInstance](value: unknown): boolean {
    return typeof value === "object" && value !== null && KilnError.prototype.isPrototypeOf(value);
  }
}

function readableMessage(error: KilnError): string {
  // The server's message often says the first problem already; say each one once.
  const problems = [
    ...error.violations.map((v) => (v.field ? `${v.field}: ${v.description}` : v.description)),
    ...error.quotaViolations.map((q) => `${q.subject}: ${q.description}`),
  ].filter((problem) => !error.rawMessage.includes(problem));
  if (error.retryDelayMs !== undefined) {
    problems.push(`retry in ${(error.retryDelayMs / 1000).toFixed(1)} s`);
  }
  const head = error.message; // "[code] message", as ConnectError writes it
  return problems.length ? `${head} (${problems.join("; ")})` : head;
}

/** `reason` as a KilnError (an error of any other kind becomes one with code UNKNOWN). */
export function toKilnError(reason: unknown): KilnError {
  return reason instanceof KilnError ? reason : new KilnError(ConnectError.from(reason));
}

async function* rethrowingKilnErrors<T>(messages: AsyncIterable<T>): AsyncIterable<T> {
  try {
    yield* messages;
  } catch (reason) {
    throw toKilnError(reason);
  }
}

/** Turns every error of a call (unary, or while reading a stream) into a KilnError. */
export const kilnErrors: Interceptor = (next) => async (request) => {
  try {
    const response = await next(request);
    return response.stream ? { ...response, message: rethrowingKilnErrors(response.message) } : response;
  } catch (reason) {
    throw toKilnError(reason);
  }
};

/**
 * Codes after which the same request may succeed on a new connection: the
 * connection or the server went away (UNAVAILABLE), or the response was cut
 * off mid-way (INTERNAL, UNKNOWN, as a broken body reads). DEADLINE_EXCEEDED
 * is not among them: it is the caller's own timeout running out, which a retry
 * would only ignore. The Python SDK's watch resumes after the same codes (and
 * after CANCELLED the caller did not ask for, which only a watch can tell).
 */
export function isTransient(error: ConnectError): boolean {
  return error.code === Code.Unavailable || error.code === Code.Internal || error.code === Code.Unknown;
}

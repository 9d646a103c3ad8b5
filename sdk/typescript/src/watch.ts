import { Code, ConnectError } from "@connectrpc/connect";
import type { Client } from "@connectrpc/connect";
import { TrainerService, TrainingJob_State } from "./gen/kiln/v1/trainer_pb.js";
import type { TrainingEvent, TrainingJob } from "./gen/kiln/v1/trainer_pb.js";
import { KilnError, isTransient, toKilnError } from "./errors.js";

export interface WatchJobOptions {
  /** The last seq already seen: events after it are delivered (0, the default: from the oldest kept). */
  afterSeq?: bigint | number;
  signal?: AbortSignal;
  /** Connection attempts in a row without a new event before giving up (default 5). */
  maxAttempts?: number;
  /** The first pause before reconnecting, doubled each further attempt (default 500 ms, at most 8 s). */
  retryDelayMs?: number;
}

/** States after which a job has no further events. */
const FINAL_STATES: ReadonlySet<TrainingJob_State> = new Set([
  TrainingJob_State.SUCCEEDED,
  TrainingJob_State.FAILED,
  TrainingJob_State.CANCELLED,
]);

/**
 * A job's events, in order, to the final one (`finished`), without gaps or repeats.
 *
 * A connection that drops is opened again with the last seq seen, so the
 * stream resumes exactly where it broke. A stream that ends normally before
 * `finished` (a gateway replica draining on shutdown ends its watches cleanly)
 * is resumed too, unless the job is over and has no event after the last seq
 * seen (a watch started after its final event). Errors that no retry can fix
 * (NOT_FOUND, OUT_OF_RANGE, …) end it at once.
 */
export async function* watchJob(
  trainer: Client<typeof TrainerService>,
  name: string,
  options: WatchJobOptions = {},
): AsyncGenerator<TrainingEvent, void, undefined> {
  let afterSeq = BigInt(options.afterSeq ?? 0);
  const maxAttempts = options.maxAttempts ?? 5;
  const firstDelay = options.retryDelayMs ?? 500;
  let failures = 0;
  for (;;) {
    let failure: KilnError;
    try {
      for await (const event of trainer.watchTrainingJob({ name, afterSeq }, { signal: options.signal })) {
        if (event.seq <= afterSeq) {
          continue; // a replica that replays from an older seq: already delivered
        }
        failures = 0;
        afterSeq = event.seq;
        yield event;
        if (event.kind.case === "finished") {
          return;
        }
      }
      const job = await trainer.getTrainingJob({ name }, { signal: options.signal });
      if (FINAL_STATES.has(job.state) && job.lastEventSeq <= afterSeq) {
        return;
      }
      failure = new KilnError(
        new ConnectError(`the watch of ${name} keeps ending before the job's final event`, Code.Unavailable),
      );
    } catch (reason) {
      failure = toKilnError(reason);
      if (!isResumable(failure, options.signal)) {
        throw failure;
      }
    }
    failures += 1;
    if (failures >= maxAttempts) {
      throw failure;
    }
    await pause(Math.min(firstDelay * 2 ** (failures - 1), 8000), options.signal);
  }
}

/**
 * Whether a watch that failed with `error` may resume on a new stream: the
 * same codes as the Python SDK's watch. UNAVAILABLE, INTERNAL and UNKNOWN are
 * what a connection that went away or a cut body reads as. CANCELLED is
 * resumable only when the caller's signal did not ask for it: then it was the
 * server (a replica stopping cancels its open streams) or a proxy between.
 * DEADLINE_EXCEEDED is not: a watch sets no deadline of its own, so one comes
 * from a timeout the caller configured on the transport, and retrying would
 * override that choice.
 */
function isResumable(error: KilnError, signal: AbortSignal | undefined): boolean {
  if (signal?.aborted) {
    return false;
  }
  return isTransient(error) || error.code === Code.Canceled;
}

/**
 * Follows a job to its end, handing each event to `onEvent`, and returns the
 * job as it finished (state SUCCEEDED, FAILED or CANCELLED, with its epochs).
 */
export async function waitForJob(
  trainer: Client<typeof TrainerService>,
  name: string,
  onEvent?: (event: TrainingEvent) => void,
  options: WatchJobOptions = {},
): Promise<TrainingJob> {
  for await (const event of watchJob(trainer, name, options)) {
    onEvent?.(event);
  }
  return trainer.getTrainingJob({ name }, { signal: options.signal });
}

function pause(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    const aborted = () => {
      clearTimeout(timer);
      reject(new ConnectError("the watch was aborted", Code.Canceled));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", aborted);
      resolve();
    }, ms);
    signal?.addEventListener("abort", aborted, { once: true });
  });
}

import { Code, ConnectError } from "@connectrpc/connect";
import type { Client } from "@connectrpc/connect";
import { TrainerService } from "./gen/kiln/v1/trainer_pb.js";
import type { TrainingEvent, TrainingJob } from "./gen/kiln/v1/trainer_pb.js";
import { isTransient, toKilnError } from "./errors.js";

export interface WatchJobOptions {
  /** The last seq already seen: events after it are delivered (0, the default: from the oldest kept). */
  afterSeq?: bigint | number;
  signal?: AbortSignal;
  /** Connection attempts in a row without a new event before giving up (default 5). */
  maxAttempts?: number;
  /** The first pause before reconnecting, doubled each further attempt (default 500 ms, at most 8 s). */
  retryDelayMs?: number;
}

/**
 * A job's events, in order, to the final one (`finished`), without gaps or repeats.
 *
 * A connection that drops is opened again with the last seq seen, so the
 * stream resumes exactly where it broke. The stream ending normally means the
 * job has no further events: it finished, or had finished before `afterSeq`.
 * Errors that no retry can fix (NOT_FOUND, OUT_OF_RANGE, …) end it at once.
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
    try {
      for await (const event of trainer.watchTrainingJob({ name, afterSeq }, { signal: options.signal })) {
        failures = 0;
        afterSeq = event.seq;
        yield event;
        if (event.kind.case === "finished") {
          return;
        }
      }
      return;
    } catch (reason) {
      const error = toKilnError(reason);
      failures += 1;
      if (options.signal?.aborted || !isTransient(error) || failures >= maxAttempts) {
        throw error;
      }
      await pause(Math.min(firstDelay * 2 ** (failures - 1), 8000), options.signal);
    }
  }
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

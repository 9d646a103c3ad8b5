/**
 * The files a user dropped or picked, each with its stage and progress, sent a few at a time.
 * Files added while others are still travelling join the same queue. One queue per dataset for
 * the page's life, so that uploads keep going, and are shown again, when the user moves to
 * another step and back.
 */
import type { Image, ImageRole } from "@kiln/sdk";
import { refusal } from "./errors";
import { uploadOne } from "./upload";
import type { UploadStage } from "./upload";

/** How many files travel at once: enough to hide each one's round trips, few enough to keep progress readable. */
export const UPLOAD_CONCURRENCY = 3;

export interface UploadEntry {
  readonly key: number;
  readonly file: File;
  readonly role: ImageRole;
  stage: UploadStage;
  /** Of the bytes sent to the store, 0..1. */
  fraction: number;
  /** The API's (or the store's) reason, once refused. */
  reason: string;
}

/** What the page showing a queue wants to hear; the queue outlives the page (see uploadQueueFor). */
export interface UploadListener {
  /** Each image as it is filed. */
  onFiled: (image: Image) => void;
  /** The last file in flight has finished (filed or refused). */
  onIdle: () => void;
}

export class UploadQueue {
  entries = $state<UploadEntry[]>([]);
  #active = 0;
  #nextKey = 0;
  #listener: UploadListener | null = null;

  /** @param dataset `datasets/{id}` */
  constructor(private readonly dataset: string) {}

  /** Tells `listener` what happens from now on, until the returned function is called. */
  listen(listener: UploadListener): () => void {
    this.#listener = listener;
    return () => {
      if (this.#listener === listener) this.#listener = null;
    };
  }

  add(files: readonly File[], role: ImageRole): void {
    for (const file of files) {
      this.entries.push({ key: this.#nextKey++, file, role, stage: "queued", fraction: 0, reason: "" });
    }
    this.#pump();
  }

  /** Forgets the files that are done or refused. */
  clearFinished(): void {
    this.entries = this.entries.filter((entry) => entry.stage !== "done" && entry.stage !== "refused");
  }

  get busy(): boolean {
    return this.entries.some((entry) => entry.stage !== "done" && entry.stage !== "refused");
  }

  count(stage: UploadStage): number {
    return this.entries.filter((entry) => entry.stage === stage).length;
  }

  #pump(): void {
    while (this.#active < UPLOAD_CONCURRENCY) {
      // The proxy from $state, so that changes to it are seen by the page.
      const entry = this.entries.find((e) => e.stage === "queued");
      if (!entry) return;
      entry.stage = "sending";
      this.#active++;
      void this.#send(entry);
    }
  }

  async #send(entry: UploadEntry): Promise<void> {
    try {
      const image = await uploadOne(this.dataset, entry.role, entry.file, (stage, fraction) => {
        entry.stage = stage;
        entry.fraction = fraction;
      });
      entry.stage = "done";
      entry.fraction = 1;
      this.#listener?.onFiled(image);
    } catch (error) {
      entry.stage = "refused";
      entry.reason = refusal(error).message;
    } finally {
      this.#active--;
      this.#pump();
      if (this.#active === 0) this.#listener?.onIdle();
    }
  }
}

// Not reactive: a page looks its queue up once.
const queues: Record<string, UploadQueue> = {};

/** The upload queue of `dataset` (`datasets/{id}`), made on first use. */
export function uploadQueueFor(dataset: string): UploadQueue {
  return (queues[dataset] ??= new UploadQueue(dataset));
}

/** Drops the queue of a deleted dataset, so its files (and their memory) go with it. */
export function forgetUploadQueue(dataset: string): void {
  delete queues[dataset];
}

/** Drops every queue: after signing out, the next user must not see the last one's files. */
export function forgetUploadQueues(): void {
  for (const dataset of Object.keys(queues)) delete queues[dataset];
}

import { createClient } from "@connectrpc/connect";
import type { Client, Interceptor, Transport } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { kilnErrors } from "./errors.js";
import { DatasetService } from "./gen/kiln/v1/dataset_pb.js";
import type { Image } from "./gen/kiln/v1/dataset_pb.js";
import { TrainerService } from "./gen/kiln/v1/trainer_pb.js";
import type { TrainingEvent, TrainingJob } from "./gen/kiln/v1/trainer_pb.js";
import { WebhookService } from "./gen/kiln/v1/webhooks_pb.js";
import { uploadImage } from "./upload.js";
import type { UploadImageOptions } from "./upload.js";
import { waitForJob, watchJob } from "./watch.js";
import type { WatchJobOptions } from "./watch.js";

/** What a transport factory gets: connect-web's and connect-node's `createConnectTransport` both take it. */
export interface KilnTransportOptions {
  baseUrl: string;
  useBinaryFormat: boolean;
  interceptors: Interceptor[];
}

export interface KilnClientOptions {
  /** The gateway's HTTP address, e.g. "http://localhost:8080". */
  baseUrl: string;
  /** A `kiln_…` API key, sent as `Authorization: Bearer …` on every call. */
  apiKey?: string;
  /** Protobuf binary instead of JSON on the wire (default false: JSON, readable in dev tools). */
  useBinaryFormat?: boolean;
  /**
   * Builds the transport; the default is connect-web's over `fetch`, which runs in
   * browsers and in Node. For connect-node:
   * `transport: (options) => createConnectTransport({ ...options, httpVersion: "1.1" })`.
   */
  transport?: (options: KilnTransportOptions) => Transport;
  /** Interceptors of your own, run inside the client's (after the key is set). */
  interceptors?: Interceptor[];
  /** The fetch for the default transport and for the uploads' POSTs to the object store (default `globalThis.fetch`). */
  fetch?: typeof globalThis.fetch;
}

export interface KilnClient {
  /** Datasets, images, captions, crops, tags and snapshots. */
  readonly datasets: Client<typeof DatasetService>;
  /** Base models, presets, training jobs, their events and artifacts, and published models. */
  readonly trainer: Client<typeof TrainerService>;
  /** Webhook endpoints (their secrets, rotation), deliveries, replays and test events: see verifyWebhook. */
  readonly webhooks: Client<typeof WebhookService>;
  /** Uploads one image to a dataset (`datasets/{id}`) through a signed upload form; returns it once filed. */
  uploadImage(dataset: string, data: Uint8Array | Blob, filename: string, options?: UploadImageOptions): Promise<Image>;
  /** A job's events to the final one, reconnecting with the last seq when a connection drops. */
  watchJob(name: string, options?: WatchJobOptions): AsyncGenerator<TrainingEvent, void, undefined>;
  /** Follows a job to its end, passing each event to `onEvent`; returns the finished job. */
  waitForJob(name: string, onEvent?: (event: TrainingEvent) => void, options?: WatchJobOptions): Promise<TrainingJob>;
}

/** An interceptor that sends `key` as a bearer token. */
export function bearerAuth(key: string): Interceptor {
  return (next) => (request) => {
    request.header.set("Authorization", `Bearer ${key}`);
    return next(request);
  };
}

/**
 * A client for the Kiln gateway over the Connect protocol.
 *
 *     const kiln = createKilnClient({ baseUrl: "http://localhost:8080", apiKey: "kiln_…" });
 *     const dataset = await kiln.datasets.createDataset({ dataset: { displayName: "cats" } });
 *
 * Every error is a KilnError (a ConnectError with its details decoded).
 */
export function createKilnClient(options: KilnClientOptions): KilnClient {
  const fetchFn = options.fetch ?? ((input, init) => globalThis.fetch(input, init));
  const interceptors = [
    kilnErrors,
    ...(options.apiKey ? [bearerAuth(options.apiKey)] : []),
    ...(options.interceptors ?? []),
  ];
  const transportOptions: KilnTransportOptions = {
    baseUrl: options.baseUrl,
    useBinaryFormat: options.useBinaryFormat ?? false,
    interceptors,
  };
  const transport = options.transport
    ? options.transport(transportOptions)
    : createConnectTransport({ ...transportOptions, fetch: fetchFn });
  const datasets = createClient(DatasetService, transport);
  const trainer = createClient(TrainerService, transport);
  return {
    datasets,
    trainer,
    webhooks: createClient(WebhookService, transport),
    uploadImage: (dataset, data, filename, uploadOptions) =>
      uploadImage(datasets, fetchFn, dataset, data, filename, uploadOptions),
    watchJob: (name, watchOptions) => watchJob(trainer, name, watchOptions),
    waitForJob: (name, onEvent, watchOptions) => waitForJob(trainer, name, onEvent, watchOptions),
  };
}

// The SDK against a live gateway: run by tests/sdk_typescript/test_node_client.py, which
// starts the services and passes their address, a key and sample images in the environment.
// Each case also writes what it saw as JSON lines to KILN_TEST_REPORT, for the Python side
// to check against the services.
import assert from "node:assert/strict";
import { appendFileSync, readFileSync, readdirSync } from "node:fs";
import { createServer } from "node:http";
import type { IncomingHttpHeaders } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { test } from "node:test";
import { createConnectTransport } from "@connectrpc/connect-node";
import {
  Code,
  ConnectError,
  ImageRole,
  KilnError,
  ModelFamily,
  TrainingJob_State,
  WebhookVerificationError,
  createKilnClient,
  uploadError,
  uploadForm,
  verifyWebhook,
} from "@kiln/sdk";
import type { KilnClient, TrainingEvent, TrainingJob } from "@kiln/sdk";

function setting(name: string): string {
  const value = process.env[name];
  assert.ok(value, `${name} is not set`);
  return value;
}

const baseUrl = setting("KILN_HTTP_URL");
const apiKey = setting("KILN_API_KEY");
const imagesDir = setting("KILN_TEST_IMAGES");
const reportPath = setting("KILN_TEST_REPORT");

function report(record: Record<string, unknown>): void {
  appendFileSync(reportPath, JSON.stringify(record, (_, v: unknown) => (typeof v === "bigint" ? Number(v) : v)) + "\n");
}

function summary(event: TrainingEvent): Record<string, unknown> {
  const kind = event.kind;
  const line: Record<string, unknown> = { seq: event.seq, kind: kind.case };
  if (kind.case === "epochSaved") {
    line.epoch = kind.value.epoch;
  } else if (kind.case === "progress") {
    line.phase = kind.value.phase;
    line.step = kind.value.step;
  } else if (kind.case === "finished") {
    line.state = TrainingJob_State[kind.value.state];
  }
  return line;
}

const kiln: KilnClient = createKilnClient({ baseUrl, apiKey });
let trained: { job: TrainingJob; events: TrainingEvent[] } | undefined;

test("a dataset uploaded through signed upload forms trains, its progress streamed to the end", async () => {
  const dataset = await kiln.datasets.createDataset({
    dataset: { displayName: "cats", family: ModelFamily.SD15, defaultRepeat: 1 },
  });
  const files = readdirSync(imagesDir).sort();
  assert.ok(files.length >= 2);
  for (const [index, file] of files.entries()) {
    const bytes = readFileSync(join(imagesDir, file));
    // Bytes from Node and a Blob, as a browser's file input gives.
    const data = index % 2 === 0 ? new Uint8Array(bytes) : new Blob([bytes]);
    const image = await kiln.uploadImage(dataset.name, data, file, {
      tags: ["mytrigger", `pose${index}`],
      role: ImageRole.TRAINING,
    });
    report({ case: "uploaded", dataset: dataset.name, image: image.name, filename: image.filename });
  }

  const created = await kiln.trainer.createTrainingJob({
    trainingJob: {
      displayName: "cat lora",
      dataset: dataset.name,
      preset: "presets/demo-tiny-sd15",
      basic: { epochs: 2, repeat: 1, previewPrompt: "mytrigger, pose0" },
      config: { seed: 5n, preview: { count: 1, steps: 2 } },
    },
  });
  report({ case: "created", job: created.name, state: TrainingJob_State[created.state] });

  const events: TrainingEvent[] = [];
  const job = await kiln.waitForJob(created.name, (event) => {
    events.push(event);
    report({ case: "event", ...summary(event) });
  });
  report({
    case: "finished",
    job: job.name,
    state: TrainingJob_State[job.state],
    epochs: job.epochs.map((e) => e.epoch),
    lastEventSeq: job.lastEventSeq,
  });
  assert.equal(job.state, TrainingJob_State.SUCCEEDED);
  trained = { job, events };
});

test("a watch resumes after the last seq it was given", async () => {
  assert.ok(trained, "the training case ran first");
  const resumed: TrainingEvent[] = [];
  for await (const event of kiln.watchJob(trained.job.name, { afterSeq: 3 })) {
    resumed.push(event);
  }
  report({ case: "resumed", afterSeq: 3, seqs: resumed.map((e) => e.seq) });
  assert.deepEqual(resumed.map((e) => e.seq), trained.events.slice(3).map((e) => e.seq));
});

test("a watch whose connection breaks reconnects with its last seq, losing and repeating nothing", async () => {
  assert.ok(trained, "the training case ran first");
  let watches = 0;
  const breakingFirstWatch: typeof fetch = async (input, init) => {
    const response = await fetch(input, init);
    const url = input instanceof Request ? input.url : String(input);
    if (!url.endsWith("/WatchTrainingJob") || watches++ > 0 || !response.body) {
      return response;
    }
    return new Response(brokenAfterFirstMessage(response.body), {
      status: response.status,
      headers: response.headers,
    });
  };
  const flaky = createKilnClient({ baseUrl, apiKey, fetch: breakingFirstWatch });
  const seqs: bigint[] = [];
  for await (const event of flaky.watchJob(trained.job.name, { retryDelayMs: 50 })) {
    seqs.push(event.seq);
  }
  report({ case: "reconnected", connections: watches, seqs });
  assert.equal(watches, 2);
  assert.deepEqual(seqs, trained.events.map((e) => e.seq));
});

/** The body up to the first Connect envelope and a few bytes into the next, then a reset. */
function brokenAfterFirstMessage(body: ReadableStream<Uint8Array>): ReadableStream<Uint8Array> {
  const reader = body.getReader();
  let received = new Uint8Array(0);
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      const { done, value } = await reader.read();
      if (done) {
        controller.close();
        return;
      }
      const before = received.length;
      received = new Uint8Array([...received, ...value]);
      if (received.length < 5) {
        controller.enqueue(value);
        return;
      }
      const cut = 5 + new DataView(received.buffer).getUint32(1) + 3;
      if (received.length < cut) {
        controller.enqueue(value);
        return;
      }
      controller.enqueue(value.subarray(0, cut - before));
      await reader.cancel();
      controller.error(new TypeError("connection reset (injected by the test)"));
    },
  });
}

test("a watch the server ends early but cleanly reconnects from its last seq and reaches the final event", async () => {
  assert.ok(trained, "the training case ran first");
  const requests: unknown[] = [];
  const endingFirstWatchEarly: typeof fetch = async (input, init) => {
    const response = await fetch(input, init);
    const url = input instanceof Request ? input.url : String(input);
    if (!url.endsWith("/WatchTrainingJob")) {
      return response;
    }
    requests.push(watchRequest(init?.body));
    if (requests.length > 1 || !response.body) {
      return response;
    }
    return new Response(endedCleanlyAfter(response.body, 2), { status: response.status, headers: response.headers });
  };
  const draining = createKilnClient({ baseUrl, apiKey, fetch: endingFirstWatchEarly });
  const events: TrainingEvent[] = [];
  const job = await draining.waitForJob(trained.job.name, (event) => events.push(event), { retryDelayMs: 50 });
  const seqs = events.map((e) => e.seq);
  const lastKind = events.at(-1)?.kind.case;
  report({ case: "ended_early", connections: requests.length, requests, seqs, lastKind,
    state: TrainingJob_State[job.state] });
  assert.equal(requests.length, 2);
  assert.deepEqual(seqs, trained.events.map((e) => e.seq));
  assert.equal(lastKind, "finished");
  assert.equal(job.state, TrainingJob_State.SUCCEEDED);
});

test("a watch from the final seq of a finished job ends at once, without reconnecting", async () => {
  assert.ok(trained, "the training case ran first");
  let watches = 0;
  const counting: typeof fetch = (input, init) => {
    const url = input instanceof Request ? input.url : String(input);
    watches += url.endsWith("/WatchTrainingJob") ? 1 : 0;
    return fetch(input, init);
  };
  const client = createKilnClient({ baseUrl, apiKey, fetch: counting });
  const after: TrainingEvent[] = [];
  for await (const event of client.watchJob(trained.job.name, { afterSeq: trained.job.lastEventSeq })) {
    after.push(event);
  }
  report({ case: "after_final", connections: watches, events: after.length });
  assert.equal(watches, 1);
  assert.equal(after.length, 0);
});

/** The JSON of a Connect streaming request's one enveloped message. */
function watchRequest(body: BodyInit | null | undefined): unknown {
  assert.ok(body instanceof Uint8Array, "connect-web sends a streaming request as bytes");
  return JSON.parse(new TextDecoder().decode(body.subarray(5)));
}

/**
 * The body's first `count` Connect envelopes, then an EndStreamResponse with no error and the end: a
 * server stopping the stream in good order (a replica draining) before the job's final event.
 */
function endedCleanlyAfter(body: ReadableStream<Uint8Array>, count: number): ReadableStream<Uint8Array> {
  const reader = body.getReader();
  let received = new Uint8Array(0);
  const endStream = new Uint8Array([0x02, 0, 0, 0, 2, ...new TextEncoder().encode("{}")]); // flag, length, "{}"
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      for (;;) {
        const end = envelopesEnd(received, count);
        if (end !== undefined) {
          controller.enqueue(received.subarray(0, end));
          controller.enqueue(endStream);
          controller.close();
          await reader.cancel();
          return;
        }
        const { done, value } = await reader.read();
        if (done) {
          controller.error(new Error(`the stream ended before ${count} messages`));
          return;
        }
        received = new Uint8Array([...received, ...value]);
      }
    },
  });
}

/** Where the first `count` Connect envelopes in `bytes` end, or undefined while they are incomplete. */
function envelopesEnd(bytes: Uint8Array, count: number): number | undefined {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let offset = 0;
  for (let index = 0; index < count; index++) {
    if (offset + 5 > bytes.length) {
      return undefined;
    }
    offset += 5 + view.getUint32(offset + 1);
  }
  return offset <= bytes.length ? offset : undefined;
}

test("binary Protobuf over connect-node reads the same job", async () => {
  assert.ok(trained, "the training case ran first");
  const binary = createKilnClient({
    baseUrl,
    apiKey,
    useBinaryFormat: true,
    transport: (options) => createConnectTransport({ ...options, httpVersion: "1.1" }),
  });
  const job = await binary.trainer.getTrainingJob({ name: trained.job.name });
  report({ case: "binary", job: job.name, state: TrainingJob_State[job.state] });
  assert.equal(job.lastEventSeq, trained.job.lastEventSeq);
});

test("an invalid request is a KilnError carrying its field violations", async () => {
  const error = await kiln.datasets
    .createDataset({ dataset: { displayName: "", family: ModelFamily.SD15, defaultRepeat: 1 } })
    .then(() => assert.fail("an empty display name was accepted"), (reason: unknown) => reason);
  assert.ok(error instanceof KilnError);
  assert.ok(error instanceof ConnectError);
  report({
    case: "invalid",
    code: Code[error.code],
    violations: error.violations,
    reason: error.reason,
    message: error.message,
  });
});

test("a training configuration with several mistakes names each of them", async () => {
  assert.ok(trained, "the training case ran first");
  const error = await kiln.trainer
    .createTrainingJob({
      trainingJob: {
        dataset: trained.job.dataset,
        preset: "presets/demo-tiny-sd15",
        config: { networkDim: 0, unetLr: -1 },
      },
    })
    .then(() => assert.fail("a zero network dim was accepted"), (reason: unknown) => reason);
  assert.ok(error instanceof KilnError);
  report({ case: "invalid_config", code: Code[error.code], violations: error.violations, message: error.message });
});

test("an upload the object store refuses is a KilnError saying why", async () => {
  assert.ok(trained, "the training case ran first");
  // The form's signature altered on its way to the object store.
  const tampering: typeof fetch = (input, init) => {
    if (init?.method !== "POST" || !(init.body instanceof FormData)) {
      return fetch(input, init);
    }
    const altered = new FormData();
    for (const [name, value] of init.body.entries()) {
      altered.append(name, name === "x-amz-signature" ? "0".repeat(64) : value);
    }
    return fetch(input, { ...init, body: altered });
  };
  const client = createKilnClient({ baseUrl, apiKey, fetch: tampering });
  const bytes = readFileSync(join(imagesDir, readdirSync(imagesDir).sort()[0] ?? ""));
  const error = await client
    .uploadImage(trained.job.dataset, bytes, "tampered.png")
    .then(() => assert.fail("a POST with a forged signature was stored"), (reason: unknown) => reason);
  assert.ok(error instanceof KilnError);
  report({ case: "refused_upload", dataset: trained.job.dataset, code: Code[error.code], reason: error.reason,
    message: error.message });
});

test("a page sends the upload form itself: the store holds it to the declared size", async () => {
  const dataset = await kiln.datasets.createDataset({ dataset: { displayName: "by hand", family: ModelFamily.SD15 } });
  const bytes = readFileSync(join(imagesDir, readdirSync(imagesDir).sort()[0] ?? ""));
  const file = new Blob([bytes], { type: "image/png" });
  const upload = await kiln.datasets.createImageUpload({
    parent: dataset.name,
    role: ImageRole.TRAINING,
    filename: "by-hand.png",
    sizeBytes: BigInt(file.size),
  });
  // What a page does with XMLHttpRequest, for its progress events; fetch here, as Node has no XHR.
  const send = async (blob: Blob): Promise<KilnError | undefined> => {
    const response = await fetch(upload.uploadUrl, { method: "POST", body: uploadForm(upload, blob, "by-hand.png") });
    return response.status === 204 ? undefined : uploadError(response.status, await response.text());
  };
  const tooLarge = await send(new Blob([bytes, new Uint8Array(1024)]));
  assert.ok(tooLarge instanceof KilnError);
  const accepted = await send(file);
  assert.equal(accepted, undefined);
  const image = await kiln.datasets.finalizeImageUpload({ name: upload.name });
  report({ case: "upload_form", dataset: dataset.name, image: image.name, filename: image.filename,
    fields: Object.keys(upload.uploadFields).sort(), tooLarge: { code: Code[tooLarge.code], reason: tooLarge.reason,
      message: tooLarge.message } });
});

test("a webhook delivery verifies with its endpoint's secret, and an altered one does not", async (t) => {
  const received: { body: Buffer; headers: IncomingHttpHeaders }[] = [];
  let delivered: () => void = () => undefined;
  const arrival = new Promise<void>((resolve) => (delivered = resolve));
  const receiver = createServer((request, response) => {
    const chunks: Buffer[] = [];
    request.on("data", (chunk: Buffer) => chunks.push(chunk));
    request.on("end", () => {
      received.push({ body: Buffer.concat(chunks), headers: request.headers });
      response.writeHead(204).end();
      delivered();
    });
  });
  await new Promise<void>((resolve) => receiver.listen(0, "127.0.0.1", resolve));
  t.after(() => receiver.close());
  const { port } = receiver.address() as AddressInfo;

  const endpoint = await kiln.webhooks.createWebhookEndpoint({
    webhookEndpoint: { url: `http://127.0.0.1:${port}/kiln`, eventTypes: ["training.succeeded"] },
  });
  const sent = await kiln.webhooks.sendTestWebhook({ name: endpoint.name });
  const timeout = AbortSignal.timeout(60_000);
  await Promise.race([arrival, new Promise((_, reject) => timeout.addEventListener("abort", () =>
    reject(new Error("no delivery within 60 s"))))]);
  const [{ body, headers }] = received as [{ body: Buffer; headers: IncomingHttpHeaders }];
  const event = verifyWebhook(body, headers, endpoint.secret);
  const altered = Buffer.from(body.toString().replace(endpoint.name, "webhookEndpoints/0000000000000000"));
  assert.throws(() => verifyWebhook(altered, headers, endpoint.secret), WebhookVerificationError);
  assert.throws(() => verifyWebhook(body, headers, "whsec_" + Buffer.alloc(24).toString("base64")),
    WebhookVerificationError);
  report({
    case: "webhook",
    endpoint: endpoint.name,
    secretPrefix: endpoint.secret.slice(0, 6),
    delivery: sent.name,
    eventId: sent.eventId,
    webhookId: headers["webhook-id"],
    event,
  });
});

test("a wrong key is refused as unauthenticated", async () => {
  const stranger = createKilnClient({ baseUrl, apiKey: "kiln_000000000000_not-a-key" });
  const error = await stranger.datasets
    .listDatasets({})
    .then(() => assert.fail("a made-up key was accepted"), (reason: unknown) => reason);
  assert.ok(error instanceof KilnError);
  report({ case: "unauthenticated", code: Code[error.code], message: error.message });
});

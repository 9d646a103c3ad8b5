export { bearerAuth, createKilnClient } from "./client.js";
export type { KilnClient, KilnClientOptions, KilnTransportOptions } from "./client.js";
export { KilnError, isTransient, kilnErrors, toKilnError } from "./errors.js";
export type { FieldViolation, QuotaViolation } from "./errors.js";
export { uploadError, uploadForm } from "./upload.js";
export type { UploadImageOptions } from "./upload.js";
export type { WatchJobOptions } from "./watch.js";
export { Code, ConnectError } from "@connectrpc/connect";
// The API's messages, enums and service descriptors.
export * from "./gen/kiln/v1/dataset_pb.js";
export * from "./gen/kiln/v1/tagging_types_pb.js";
export * from "./gen/kiln/v1/trainer_pb.js";
export * from "./gen/kiln/v1/webhooks_pb.js";
export { WebhookVerificationError, verifyWebhook } from "./webhooks.js";
export type { WebhookEvent, WebhookHeaders } from "./webhooks.js";

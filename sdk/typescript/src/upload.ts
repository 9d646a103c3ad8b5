import { Code, ConnectError } from "@connectrpc/connect";
import type { Client } from "@connectrpc/connect";
import { create } from "@bufbuild/protobuf";
import { ErrorInfoSchema } from "./gen/google/rpc/error_details_pb.js";
import { DatasetService, ImageRole } from "./gen/kiln/v1/dataset_pb.js";
import type { Image, ImageUpload } from "./gen/kiln/v1/dataset_pb.js";
import { KilnError } from "./errors.js";

export interface UploadImageOptions {
  /** TRAINING (the default) or REGULARIZATION. */
  role?: ImageRole;
  tags?: string[];
  /** How often the image counts per epoch (0: the dataset's default). */
  repeat?: number;
  /** Makes the two calls idempotent: a retry with the same id answers as the first call did. */
  requestId?: string;
  signal?: AbortSignal;
}

/**
 * Uploads one image without a client stream, which browsers can't send:
 * CreateImageUpload declares it and returns a signed form, the bytes go straight
 * to the object store with a multipart POST of that form, and FinalizeImageUpload
 * checks and files them.
 */
export async function uploadImage(
  datasets: Client<typeof DatasetService>,
  fetchFn: typeof globalThis.fetch,
  dataset: string,
  data: Uint8Array | Blob,
  filename: string,
  options: UploadImageOptions = {},
): Promise<Image> {
  const requestId = options.requestId ?? newRequestId();
  const file = data instanceof Blob ? data : new Blob([bytesOf(data)]);
  const upload = await datasets.createImageUpload(
    {
      parent: dataset,
      role: options.role ?? ImageRole.TRAINING,
      filename,
      sizeBytes: BigInt(file.size),
      tags: options.tags ?? [],
      repeat: options.repeat ?? 0,
      requestId: `${requestId}/create`,
    },
    { signal: options.signal },
  );
  const response = await fetchFn(upload.uploadUrl, {
    method: "POST",
    body: uploadForm(upload, file, filename),
    signal: options.signal ?? null,
  });
  if (!response.ok) {
    throw uploadError(response.status, await response.text());
  }
  return datasets.finalizeImageUpload(
    { name: upload.name, requestId: `${requestId}/finalize` },
    { signal: options.signal },
  );
}

/**
 * The body to POST to `upload.uploadUrl`: the upload's form fields, then the file, last (the
 * object store ignores fields after it). A page that wants upload progress sends it itself:
 *
 *     const upload = await kiln.datasets.createImageUpload({ parent, role, filename: file.name,
 *                                                            sizeBytes: BigInt(file.size) });
 *     const xhr = new XMLHttpRequest();
 *     xhr.upload.onprogress = (e) => showProgress(e.loaded / e.total);
 *     xhr.onload = () => xhr.status === 204 ? finalize() : fail(uploadError(xhr.status, xhr.responseText));
 *     xhr.open("POST", upload.uploadUrl);
 *     xhr.send(uploadForm(upload, file, file.name));
 *
 * then `kiln.datasets.finalizeImageUpload({ name: upload.name })`. The store takes exactly the
 * declared size, at this upload's key, until `upload.expireTime`.
 */
export function uploadForm(upload: ImageUpload, file: Blob, filename: string): FormData {
  const form = new FormData();
  for (const [name, value] of Object.entries(upload.uploadFields)) {
    form.append(name, value);
  }
  form.append("file", file, filename);
  return form;
}

/**
 * The object store's refusal of an upload form's POST as a KilnError: its S3 error code becomes
 * the `reason` ("EntityTooLarge": the file is bigger than declared, "EntityTooSmall": smaller,
 * "AccessDenied": the form expired or was altered) and its message the error's text.
 */
export function uploadError(status: number, body: string): KilnError {
  const s3Code = xmlElement(body, "Code");
  const s3Message = xmlElement(body, "Message") ?? body.slice(0, 300).trim();
  const code = status === 403 ? Code.PermissionDenied
    : status >= 400 && status < 500 ? Code.InvalidArgument : Code.Unavailable;
  const explained = [s3Code, s3Message].filter(Boolean).join(": ");
  const details = [{
    desc: ErrorInfoSchema,
    value: create(ErrorInfoSchema, {
      reason: s3Code ?? `HTTP_${status}`,
      domain: "s3",
      metadata: { httpStatus: String(status) },
    }),
  }];
  return new KilnError(new ConnectError(
    `the object store refused the upload with HTTP ${status}${explained ? `: ${explained}` : ""}`,
    code, undefined, details));
}

function xmlElement(body: string, name: string): string | undefined {
  const found = new RegExp(`<${name}>([^<]*)</${name}>`).exec(body)?.[1]?.trim();
  return found ? found : undefined;
}

/** 32 random hex digits (crypto.randomUUID is missing from pages served over plain http). */
function newRequestId(): string {
  const bytes = globalThis.crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Blob takes bytes in an ArrayBuffer only; a view of shared memory is copied out. */
function bytesOf(data: Uint8Array): Uint8Array<ArrayBuffer> {
  return data.buffer instanceof ArrayBuffer ? (data as Uint8Array<ArrayBuffer>) : data.slice();
}

import { Code, ConnectError } from "@connectrpc/connect";
import type { Client } from "@connectrpc/connect";
import { DatasetService, ImageRole } from "./gen/kiln/v1/dataset_pb.js";
import type { Image } from "./gen/kiln/v1/dataset_pb.js";
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
 * CreateImageUpload declares it and returns a presigned URL, the bytes go there
 * with a plain PUT, and FinalizeImageUpload checks and files them.
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
  const size = data instanceof Uint8Array ? data.byteLength : data.size;
  const upload = await datasets.createImageUpload(
    {
      parent: dataset,
      role: options.role ?? ImageRole.TRAINING,
      filename,
      sizeBytes: BigInt(size),
      tags: options.tags ?? [],
      repeat: options.repeat ?? 0,
      requestId: `${requestId}/create`,
    },
    { signal: options.signal },
  );
  const response = await fetchFn(upload.uploadUrl, {
    method: "PUT",
    body: bodyOf(data),
    signal: options.signal ?? null,
  });
  if (!response.ok) {
    throw await putFailed(response);
  }
  return datasets.finalizeImageUpload(
    { name: upload.name, requestId: `${requestId}/finalize` },
    { signal: options.signal },
  );
}

/** 32 random hex digits (crypto.randomUUID is missing from pages served over plain http). */
function newRequestId(): string {
  const bytes = globalThis.crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** fetch takes bytes in an ArrayBuffer only; a view of shared memory is copied out. */
function bodyOf(data: Uint8Array | Blob): Blob | Uint8Array<ArrayBuffer> {
  if (data instanceof Uint8Array) {
    return data.buffer instanceof ArrayBuffer ? (data as Uint8Array<ArrayBuffer>) : data.slice();
  }
  return data;
}

/** The object store's answer as a KilnError: 403 is an expired or altered URL, 4xx the bytes themselves. */
async function putFailed(response: Response): Promise<KilnError> {
  const body = (await response.text()).slice(0, 500);
  const s3Message = /<Message>([^<]*)<\/Message>/.exec(body)?.[1] ?? body;
  const code = response.status === 403 ? Code.PermissionDenied
    : response.status >= 400 && response.status < 500 ? Code.InvalidArgument : Code.Unavailable;
  return new KilnError(new ConnectError(
    `uploading to the presigned URL failed with HTTP ${response.status}: ${s3Message.trim()}`, code));
}

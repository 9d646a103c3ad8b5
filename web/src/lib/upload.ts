/**
 * Browser uploads: the bytes go from the page straight to the object store with the signed form
 * that CreateImageUpload handed out (browsers can't send the client stream UploadImage takes),
 * then FinalizeImageUpload files them. XMLHttpRequest rather than fetch, because only it reports how
 * much of a request body has been sent.
 */
import { Code, ConnectError, KilnError, uploadError, uploadForm } from "@kiln/sdk";
import type { Image, ImageRole, ImageUpload } from "@kiln/sdk";
import { requestId } from "./errors";
import { t } from "./i18n.svelte";
import { kiln } from "./session.svelte";

/**
 * Sends `file` to the store with the upload's signed form, calling `onProgress` with the fraction
 * sent (0..1). The one place that knows how the store takes the bytes: a multipart POST of the
 * form's fields and then the file, which the store holds to the declared size and key.
 */
export function sendToStore(upload: ImageUpload, file: File, onProgress: (fraction: number) => void,
  signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const request = new XMLHttpRequest();
    request.open("POST", upload.uploadUrl);
    request.upload.onprogress = (event) => {
      if (event.lengthComputable && event.total > 0) onProgress(event.loaded / event.total);
    };
    request.onload = () => {
      if (request.status >= 200 && request.status < 300) {
        onProgress(1);
        resolve();
      } else {
        reject(uploadError(request.status, request.responseText));
      }
    };
    request.onerror = () => reject(new KilnError(new ConnectError(t("images.storeUnreachable"), Code.Unavailable)));
    request.onabort = () => reject(new KilnError(new ConnectError(t("images.uploadCancelled"), Code.Canceled)));
    signal?.addEventListener("abort", () => request.abort(), { once: true });
    request.send(uploadForm(upload, file, file.name));
  });
}

export type UploadStage = "queued" | "sending" | "filing" | "done" | "refused";

/**
 * One file on its way: declared, sent, filed. Nothing is retried here: a file that fails is shown
 * as refused and the user adds it again, which is a new upload with new request ids.
 */
export async function uploadOne(dataset: string, role: ImageRole, file: File,
  onStage: (stage: UploadStage, fraction: number) => void): Promise<Image> {
  const id = requestId();
  const upload = await kiln().datasets.createImageUpload({
    parent: dataset, role, filename: file.name, sizeBytes: BigInt(file.size), requestId: `${id}/create`,
  });
  onStage("sending", 0);
  await sendToStore(upload, file, (fraction) => onStage("sending", fraction));
  onStage("filing", 1);
  return kiln().datasets.finalizeImageUpload({ name: upload.name, requestId: `${id}/finalize` });
}

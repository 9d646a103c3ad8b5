/**
 * Pictures and files a job left: thumbnails come inline with its events (bytes, shown as data:
 * URLs so they can be kept in session storage), full-size pictures and LoRA files through the
 * presigned URLs the API hands out, cached until shortly before they expire.
 */
import type { Preview } from "@kiln/sdk";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { kiln } from "./session.svelte";

/** A preview as the pages show it: plain data, so it can be stored as JSON. */
export interface PreviewView {
  /** The artifact's name (`trainingJobs/{job}/epochs/{n}/previews/{k}`). */
  image: string;
  seed: string;
  /** The small WebP inline with the event, as a data: URL ("" when the event carried none). */
  thumbnail: string;
}

export function thumbnailUrl(bytes: Uint8Array, type = "image/webp"): string {
  if (bytes.length === 0) return "";
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return `data:${type};base64,${btoa(binary)}`;
}

export function previewView(preview: Preview): PreviewView {
  return { image: preview.image?.name ?? "", seed: String(preview.seed), thumbnail: thumbnailUrl(preview.thumbnail) };
}

// A URL is reused until a minute before it expires, so a page of pictures asks once per picture.
const EXPIRY_MARGIN_MS = 60_000;
const urls = new Map<string, { url: string; expires: number }>();

/** A presigned URL for the artifact `name` (a picture or a LoRA file). */
export async function artifactUrl(name: string): Promise<string> {
  const cached = urls.get(name);
  if (cached && cached.expires - EXPIRY_MARGIN_MS > Date.now()) return cached.url;
  const answer = await kiln().trainer.getArtifactUrl({ name });
  const expires = answer.expireTime ? timestampDate(answer.expireTime).getTime() : Date.now() + 5 * 60_000;
  urls.set(name, { url: answer.url, expires });
  return answer.url;
}

/** How long until a URL fetched now for `name` should be fetched again, in ms. */
export function urlLifetimeMs(name: string): number {
  const cached = urls.get(name);
  return cached ? Math.max(cached.expires - EXPIRY_MARGIN_MS - Date.now(), 10_000) : 10_000;
}

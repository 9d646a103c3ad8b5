/**
 * Pictures and files a job left: thumbnails come inline with its events (bytes, shown as data:
 * URLs so they can be kept in session storage), full-size pictures and LoRA files through the
 * presigned URLs the API hands out, cached until shortly before they expire.
 */
import type { Preview } from "@kiln/sdk";
import { presignedCache } from "./presignedCache";
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

const urls = presignedCache((name) => kiln().trainer.getArtifactUrl({ name }));

/** A presigned URL for the artifact `name` (a picture or a LoRA file). */
export function artifactUrl(name: string): Promise<string> {
  return urls.url(name);
}

/** How long until a URL fetched now for `name` should be fetched again, in ms. */
export function urlLifetimeMs(name: string): number {
  return urls.lifetimeMs(name);
}

/**
 * Presigned links to an image's stored variants (GetImageUrl), kept while they are valid so that
 * the images and crop pages, and every re-render, ask once per image.
 */
import { ImageVariant } from "@kiln/sdk";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { kiln } from "./session.svelte";

// Asked again this long before the link expires, so an <img> never gets a dead one.
const MARGIN_MS = 60_000;
const cache = new Map<string, { url: string; expires: number; pending?: Promise<string> }>();

export function imageUrl(name: string, variant: ImageVariant = ImageVariant.THUMBNAIL): Promise<string> {
  const key = `${name}#${variant}`;
  const held = cache.get(key);
  if (held?.pending) return held.pending;
  if (held && held.expires - MARGIN_MS > Date.now()) return Promise.resolve(held.url);
  const pending = kiln().datasets.getImageUrl({ name, variant }).then(
    (answer) => {
      const expires = answer.expireTime ? timestampDate(answer.expireTime).getTime() : Date.now() + MARGIN_MS * 2;
      cache.set(key, { url: answer.url, expires });
      return answer.url;
    },
    (error: unknown) => {
      cache.delete(key);
      throw error;
    },
  );
  cache.set(key, { url: "", expires: 0, pending });
  return pending;
}

/** Forgets an image's links (it was deleted, or its crop changed). */
export function forgetImage(name: string): void {
  for (const key of cache.keys()) {
    if (key.startsWith(`${name}#`)) cache.delete(key);
  }
}

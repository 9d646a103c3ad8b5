/**
 * Presigned thumbnail addresses, asked for once per image and kept until shortly before they
 * expire: lists re-render often (live tags, edits), and each render must not ask again.
 */
import { ImageVariant } from "@kiln/sdk";
import { kiln } from "./session.svelte";

const TTL_SECONDS = 3600;
const cache = new Map<string, { url: Promise<string>; until: number }>();

export function thumbnailUrl(image: string): Promise<string> {
  const now = Date.now();
  const kept = cache.get(image);
  if (kept && kept.until > now) return kept.url;
  const url = kiln().datasets.getImageUrl({ name: image, variant: ImageVariant.THUMBNAIL, ttlSeconds: TTL_SECONDS })
    .then((answer) => answer.url);
  // Forgotten on failure, so the next render asks again.
  url.catch(() => cache.delete(image));
  cache.set(image, { url, until: now + (TTL_SECONDS - 300) * 1000 });
  return url;
}

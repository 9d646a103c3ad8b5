/**
 * Presigned links to an image's stored variants (GetImageUrl), kept while they are valid so that
 * the images, crop and parameters pages, and every re-render, ask once per image and variant.
 */
import { ImageVariant } from "@kiln/sdk";
import { presignedCache } from "./presignedCache";
import { kiln } from "./session.svelte";

const cache = presignedCache((key) => {
  const [name = "", variant] = key.split("#");
  return kiln().datasets.getImageUrl({ name, variant: Number(variant) as ImageVariant});
});

export function imageUrl(name: string, variant: ImageVariant = ImageVariant.THUMBNAIL): Promise<string> {
  return cache.url(`${name}#${variant}`);
}

/** Forgets an image's links (it was deleted, or its crop changed). */
export function forgetImage(name: string): void {
  cache.forget((key) => key.startsWith(`${name}#`));
}

/**
 * Presigned URLs kept until shortly before they expire, so lists that re-render often (live tags,
 * edits, a page of pictures) ask once per object, and a link shown is never already dead.
 */
import { timestampDate } from "@bufbuild/protobuf/wkt";
import type { Timestamp } from "@bufbuild/protobuf/wkt";

// Asked again this long before the URL expires.
const MARGIN_MS = 60_000;
// An answer without an expiry is trusted this long.
const UNDATED_LIFETIME_MS = 5 * 60_000;
// A caller that re-asks when the URL goes stale waits at least this long.
const SHORTEST_LIFETIME_MS = 10_000;

/** What the API answers for a presigned URL (GetImageUrl, GetArtifactUrl). */
export interface PresignedAnswer {
  url: string;
  expireTime?: Timestamp;
}

export interface PresignedCache {
  /** A live URL for `key`; one request at a time per key, none while a kept URL is fresh. */
  url(key: string): Promise<string>;
  /** How long until the URL for `key` should be asked for again, in ms. */
  lifetimeMs(key: string): number;
  /** Forgets the URLs whose key `matches` (the object changed or is gone). */
  forget(matches: (key: string) => boolean): void;
}

export function presignedCache(fetch: (key: string) => Promise<PresignedAnswer>): PresignedCache {
  const kept = new Map<string, { url: string; renewAt: number }>();
  const asking = new Map<string, Promise<string>>();
  return {
    url(key) {
      const pending = asking.get(key);
      if (pending) return pending;
      const held = kept.get(key);
      if (held && held.renewAt > Date.now()) return Promise.resolve(held.url);
      const asked: Promise<string> = fetch(key).then((answer) => {
        // Kept only if nothing forgot the key meanwhile: the answer may name the old object.
        if (asking.get(key) === asked) {
          asking.delete(key);
          const expires = answer.expireTime ? timestampDate(answer.expireTime).getTime() : Date.now() + UNDATED_LIFETIME_MS;
          kept.set(key, { url: answer.url, renewAt: expires - MARGIN_MS });
        }
        return answer.url;
      }, (error: unknown) => {
        // Forgotten on failure, so the next caller asks again.
        if (asking.get(key) === asked) asking.delete(key);
        throw error;
      });
      asking.set(key, asked);
      return asked;
    },
    lifetimeMs(key) {
      const held = kept.get(key);
      return held ? Math.max(held.renewAt - Date.now(), SHORTEST_LIFETIME_MS) : SHORTEST_LIFETIME_MS;
    },
    forget(matches) {
      for (const key of [...kept.keys()]) if (matches(key)) kept.delete(key);
      for (const key of [...asking.keys()]) if (matches(key)) asking.delete(key);
    },
  };
}

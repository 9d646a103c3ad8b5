/**
 * Who is signed in: an API key, kept in this browser's local storage. `kiln up` prints a link
 * with the key in the fragment (`/#key=kiln_…`), which never reaches a server; it is taken into
 * storage and removed from the address bar at once.
 */
import { createKilnClient } from "@kiln/sdk";
import type { KilnClient } from "@kiln/sdk";

const STORAGE_KEY = "kiln.apiKey";
const KEY_IN_FRAGMENT = /(?:^#|&)key=(kiln_[A-Za-z0-9_-]+)/;

function fromFragment(): string | null {
  const found = KEY_IN_FRAGMENT.exec(location.hash);
  if (!found?.[1]) return null;
  const rest = location.hash.replace(found[0], "").replace(/^#&?/, "#");
  history.replaceState(null, "", location.pathname + location.search + (rest === "#" ? "#/datasets" : rest));
  return found[1];
}

function initial(): string {
  const key = fromFragment();
  if (key) localStorage.setItem(STORAGE_KEY, key);
  return key ?? localStorage.getItem(STORAGE_KEY) ?? "";
}

let apiKey = $state(initial());
let client: KilnClient | null = null;
let clientKey = "";

export function signedIn(): boolean {
  return apiKey !== "";
}

export function signIn(key: string): void {
  apiKey = key.trim();
  localStorage.setItem(STORAGE_KEY, apiKey);
}

export function signOut(): void {
  apiKey = "";
  localStorage.removeItem(STORAGE_KEY);
}

/** The client for the signed-in key, talking to the gateway that served this page. */
export function kiln(): KilnClient {
  if (client === null || clientKey !== apiKey) {
    client = createKilnClient({ baseUrl: location.origin, apiKey });
    clientKey = apiKey;
  }
  return client;
}

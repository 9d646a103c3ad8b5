/** Every image of a dataset, read page by page: the workbench shows whole datasets (at most a few thousand images). */
import type { Image, ImageRole } from "@kiln/sdk";
import { kiln } from "./session.svelte";

// The largest page the API serves, so a whole dataset is one or two round trips.
const PAGE_SIZE = 1000;

/** The images of `parent` (`datasets/{id}`), of one role or (without `role`) of both. */
export async function listAllImages(parent: string, role?: ImageRole): Promise<Image[]> {
  const all: Image[] = [];
  let pageToken = "";
  do {
    const page = await kiln().datasets.listImages({ parent, role, pageSize: PAGE_SIZE, pageToken });
    all.push(...page.images);
    pageToken = page.nextPageToken;
  } while (pageToken);
  return all;
}

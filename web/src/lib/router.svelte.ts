/**
 * Routes after `#`, so the gateway serves one page for every address and a reload keeps the place:
 *   #/datasets                          the datasets
 *   #/datasets/{id}/{images|crop|tags|train}
 *   #/jobs/{id}/{progress|test|publish}
 */
export const DATASET_TABS = ["images", "crop", "tags", "train"] as const;
export const JOB_TABS = ["progress", "test", "publish"] as const;
export type DatasetTab = (typeof DATASET_TABS)[number];
export type JobTab = (typeof JOB_TABS)[number];

export type Route =
  | { page: "datasets" }
  | { page: "dataset"; id: string; tab: DatasetTab; query: Query }
  | { page: "job"; id: string; tab: JobTab; query: Query };

/** What follows `?` in the hash (`#/datasets/x/train?from=trainingJobs/y`), read only. */
export type Query = Readonly<Record<string, string>>;

/** `decodeURIComponent`, or null for a malformed escape (`%E0`), which would otherwise throw. */
function decoded(text: string): string | null {
  try {
    return decodeURIComponent(text);
  } catch {
    return null;
  }
}

/** Reads an address; one that cannot be decoded (a mistyped or cut-off link) goes to the datasets, not to a blank page. */
export function parse(hash: string): Route {
  const [path = "", search = ""] = hash.replace(/^#/, "").split("?");
  const parts = path.split("/").filter(Boolean).map(decoded);
  const pairs = search.split("&").filter(Boolean).map((pair) => pair.split("=").map(decoded));
  if (parts.some((part) => part === null) || pairs.some((pair) => pair.some((part) => part === null))) {
    return { page: "datasets" };
  }
  const query: Query = Object.fromEntries(pairs as [string, string][]);
  if (parts[0] === "datasets" && parts[1]) {
    const tab = DATASET_TABS.find((t) => t === parts[2]) ?? "images";
    return { page: "dataset", id: parts[1], tab, query };
  }
  if (parts[0] === "jobs" && parts[1]) {
    const tab = JOB_TABS.find((t) => t === parts[2]) ?? "progress";
    return { page: "job", id: parts[1], tab, query };
  }
  return { page: "datasets" };
}

type Target = { page: "datasets" } | { page: "dataset"; id: string; tab: DatasetTab } | { page: "job"; id: string; tab: JobTab };

export function href(route: Target, query?: Query): string {
  const pairs = Object.entries(query ?? {}).map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`);
  const search = pairs.length ? `?${pairs.join("&")}` : "";
  switch (route.page) {
    case "datasets":
      return "#/datasets";
    case "dataset":
      return `#/datasets/${encodeURIComponent(route.id)}/${route.tab}${search}`;
    case "job":
      return `#/jobs/${encodeURIComponent(route.id)}/${route.tab}${search}`;
  }
}

let current = $state<Route>(parse(location.hash));
addEventListener("hashchange", () => {
  current = parse(location.hash);
});

export function route(): Route {
  return current;
}

export function navigate(target: string): void {
  location.hash = target.replace(/^#/, "");
}

/** `datasets/{id}` → `id`, and back. */
export const names = {
  dataset: (id: string) => `datasets/${id}`,
  job: (id: string) => `trainingJobs/${id}`,
  id: (name: string) => name.slice(name.lastIndexOf("/") + 1),
};

import type { tags as en } from "../en/tags";

export const tags: Record<keyof typeof en, string> = {
};

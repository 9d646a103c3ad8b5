import type { publish as en } from "../en/publish";

export const publish: Record<keyof typeof en, string> = {
};

import type { test as en } from "../en/test";

export const test: Record<keyof typeof en, string> = {
};

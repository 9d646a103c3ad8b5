import type { parameters as en } from "../en/parameters";

export const parameters: Record<keyof typeof en, string> = {
};

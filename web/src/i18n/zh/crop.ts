import type { crop as en } from "../en/crop";

export const crop: Record<keyof typeof en, string> = {
};

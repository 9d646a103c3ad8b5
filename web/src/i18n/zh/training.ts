import type { training as en } from "../en/training";

export const training: Record<keyof typeof en, string> = {
};

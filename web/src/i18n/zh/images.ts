import type { images as en } from "../en/images";

export const images: Record<keyof typeof en, string> = {
};

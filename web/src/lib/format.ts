import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { t } from "./i18n.svelte";

/** A timestamp as a local date and time, or "" when unset. */
export function dateTime(value: Timestamp | undefined, locale: string): string {
  if (!value) return "";
  return timestampDate(value).toLocaleString(locale === "zh" ? "zh-CN" : "en", { dateStyle: "medium", timeStyle: "short" });
}

/** Bytes as KB/MB. */
export function bytes(size: number | bigint): string {
  const value = Number(size);
  if (value < 1024) return `${value} B`;
  if (value < 1024 * 1024) return `${(value / 1024).toFixed(0)} KB`;
  return `${(value / 1024 / 1024).toFixed(1)} MB`;
}

/** Seconds as "1 h 02 min", "3 min 05 s" or "42 s" (in the page's language). */
export function duration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  const [h, m, sec] = [Math.floor(s / 3600), Math.floor((s % 3600) / 60), s % 60];
  if (s >= 3600) return t("units.hoursMinutes", { h, m: String(m).padStart(2, "0") });
  if (s >= 60) return t("units.minutesSeconds", { m, s: String(sec).padStart(2, "0") });
  return t("units.seconds", { s });
}

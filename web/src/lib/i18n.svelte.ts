/**
 * The page's language: English or Simplified Chinese, switchable at any time. Messages live in
 * one file per page under i18n/en and i18n/zh; the Chinese dictionary must name every English key
 * (the type checker refuses a missing one), so no label is left untranslated.
 */
import { en } from "../i18n/en";
import { zh } from "../i18n/zh";

export type Locale = "en" | "zh";
export type MessageKey = keyof typeof en;
export type Params = Record<string, string | number | bigint>;

const STORAGE_KEY = "kiln.locale";
const dictionaries: Record<Locale, Record<MessageKey, string>> = { en, zh };
export const LOCALES: readonly { id: Locale; label: string; lang: string }[] = [
  { id: "en", label: "English", lang: "en" },
  { id: "zh", label: "简体中文", lang: "zh-CN" },
];

function initial(): Locale {
  const saved = globalThis.localStorage?.getItem(STORAGE_KEY);
  if (saved === "en" || saved === "zh") return saved;
  return globalThis.navigator?.language?.toLowerCase().startsWith("zh") ? "zh" : "en";
}

const first = initial();
let current = $state<Locale>(first);

function apply(locale: Locale): void {
  document.documentElement.lang = LOCALES.find((l) => l.id === locale)?.lang ?? "en";
}

export function getLocale(): Locale {
  return current;
}

export function setLocale(locale: Locale): void {
  current = locale;
  globalThis.localStorage?.setItem(STORAGE_KEY, locale);
  apply(locale);
}

/** The message `key` in the current language, with `{name}` placeholders filled from `params`. */
export function t(key: MessageKey, params?: Params): string {
  const text = dictionaries[current][key];
  if (!params) return text;
  return text.replace(/\{(\w+)\}/g, (whole, name: string) => (name in params ? String(params[name]) : whole));
}

/** Numbers as the current language writes them. */
export function formatNumber(value: number | bigint, digits = 0): string {
  return new Intl.NumberFormat(LOCALES.find((l) => l.id === current)?.lang, {
    maximumFractionDigits: digits,
  }).format(value);
}

apply(first);

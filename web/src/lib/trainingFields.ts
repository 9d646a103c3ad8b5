/**
 * Every parameter of a training configuration (the parameters page's pro mode), as the form shows it: the
 * API's field name (kohya's, snake case, as violations name it: `training_job.config.unet_lr`),
 * what kind of input it takes and the group it sits in. Labels and help texts live in the
 * parameters dictionaries under `parameters.field.<name>` and `parameters.help.<name>`.
 */
import type { JsonObject } from "@bufbuild/protobuf";
import type { TrainingConfig } from "@kiln/sdk";

export type FieldKind = "int" | "float" | "bool" | "text" | "choice" | "resolution" | "json";

export interface TrainingField {
  /** The API's name: `unet_lr`, or `preview.steps` inside the preview settings. */
  name: FieldName;
  kind: FieldKind;
  group: FieldGroup;
  /** For "choice": the values the engine accepts. */
  choices?: readonly string[];
  /** Empty means unset (the engine decides), as opposed to a value the user must give. */
  optional?: boolean;
  min?: number;
  step?: string;
}

export const FIELD_GROUPS = ["basics", "learning", "network", "captions", "noise", "buckets", "performance",
  "output", "preview"] as const;
export type FieldGroup = (typeof FIELD_GROUPS)[number];

export const SCHEDULERS = ["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts",
  "polynomial"] as const;
export const OPTIMIZERS = ["AdamW", "AdamW8bit", "Lion", "Prodigy", "Adafactor", "DAdaptAdam", "SGDNesterov"] as const;
export const SAMPLERS = ["euler_a", "euler", "ddim", "pndm", "heun", "lms", "dpm2", "dpm2_a", "dpm++ 2m",
  "dpm++ 2m karras", "dpm++ 2m sde karras", "dpm++ sde karras", "unipc"] as const;

// In the order users know from the original page within each group: repeat, epoch, seed, the two
// learning rates, scheduler, optimizer, dim, alpha, shuffle, keep tokens, noise offset, multires, conv.
export const TRAINING_FIELDS = [
  { name: "repeat", kind: "int", group: "basics", min: 1 },
  { name: "epochs", kind: "int", group: "basics", min: 1 },
  { name: "seed", kind: "int", group: "basics", optional: true, min: 0 },
  { name: "batch_size", kind: "int", group: "basics", min: 1 },
  { name: "gradient_accumulation_steps", kind: "int", group: "basics", min: 1 },
  { name: "resolution", kind: "resolution", group: "basics", optional: true },
  { name: "text_encoder_lr", kind: "float", group: "learning", min: 0, step: "any" },
  { name: "unet_lr", kind: "float", group: "learning", min: 0, step: "any" },
  { name: "text_encoder_2_lr", kind: "float", group: "learning", optional: true, min: 0, step: "any" },
  { name: "lr_scheduler", kind: "choice", group: "learning", choices: SCHEDULERS },
  { name: "lr_warmup_steps", kind: "int", group: "learning", min: 0 },
  { name: "lr_warmup_ratio", kind: "float", group: "learning", optional: true, min: 0, step: "any" },
  { name: "lr_scheduler_num_cycles", kind: "int", group: "learning", min: 1 },
  { name: "lr_scheduler_power", kind: "float", group: "learning", step: "any" },
  { name: "optimizer", kind: "choice", group: "learning", choices: OPTIMIZERS },
  { name: "optimizer_args", kind: "json", group: "learning", optional: true },
  { name: "max_grad_norm", kind: "float", group: "learning", min: 0, step: "any" },
  { name: "network_dim", kind: "int", group: "network", min: 1 },
  { name: "network_alpha", kind: "float", group: "network", min: 0, step: "any" },
  { name: "conv_dim", kind: "int", group: "network", optional: true, min: 1 },
  { name: "conv_alpha", kind: "float", group: "network", optional: true, min: 0, step: "any" },
  { name: "shuffle_caption", kind: "bool", group: "captions" },
  { name: "keep_tokens", kind: "int", group: "captions", min: 0 },
  { name: "caption_dropout_rate", kind: "float", group: "captions", min: 0, step: "any" },
  { name: "caption_dropout_every_n_epochs", kind: "int", group: "captions", min: 0 },
  { name: "caption_tag_dropout_rate", kind: "float", group: "captions", min: 0, step: "any" },
  { name: "clip_skip", kind: "int", group: "captions", min: 1 },
  { name: "noise_offset", kind: "float", group: "noise", min: 0, step: "any" },
  { name: "multires_noise_discount", kind: "float", group: "noise", min: 0, step: "any" },
  { name: "multires_noise_iterations", kind: "int", group: "noise", min: 0 },
  { name: "min_snr_gamma", kind: "float", group: "noise", optional: true, min: 0, step: "any" },
  { name: "prior_loss_weight", kind: "float", group: "noise", min: 0, step: "any" },
  { name: "enable_bucket", kind: "bool", group: "buckets" },
  { name: "min_bucket_reso", kind: "int", group: "buckets", optional: true, min: 8 },
  { name: "max_bucket_reso", kind: "int", group: "buckets", optional: true, min: 8 },
  { name: "bucket_reso_steps", kind: "int", group: "buckets", min: 8 },
  { name: "bucket_no_upscale", kind: "bool", group: "buckets" },
  { name: "flip_aug", kind: "bool", group: "buckets" },
  { name: "mixed_precision", kind: "choice", group: "performance", choices: ["no", "fp16", "bf16"] },
  { name: "gradient_checkpointing", kind: "bool", group: "performance" },
  { name: "cache_latents", kind: "bool", group: "performance" },
  { name: "attention", kind: "choice", group: "performance", choices: ["sdpa", "eager"] },
  { name: "output_name", kind: "text", group: "output" },
  { name: "save_every_n_epochs", kind: "int", group: "output", min: 1 },
  { name: "save_precision", kind: "choice", group: "output", choices: ["fp16", "bf16", "float"] },
  { name: "preview.prompt", kind: "text", group: "preview" },
  { name: "preview.negative_prompt", kind: "text", group: "preview" },
  { name: "preview.sampler", kind: "choice", group: "preview", choices: SAMPLERS },
  { name: "preview.steps", kind: "int", group: "preview", min: 1 },
  { name: "preview.cfg_scale", kind: "float", group: "preview", min: 0, step: "any" },
  { name: "preview.width", kind: "int", group: "preview", optional: true, min: 8, step: "8" },
  { name: "preview.height", kind: "int", group: "preview", optional: true, min: 8, step: "8" },
  { name: "preview.seed", kind: "int", group: "preview" },
  { name: "preview.count", kind: "int", group: "preview", min: 0 },
] as const satisfies readonly (Omit<TrainingField, "name"> & { name: string })[];

export type FieldName = (typeof TRAINING_FIELDS)[number]["name"];
export const FIELDS: readonly TrainingField[] = TRAINING_FIELDS;

/** What the form holds per field: text for numbers (as typed, "" when unset), booleans as such. */
export type FieldValue = string | boolean;
export type FormValues = Record<FieldName, FieldValue>;

/** The field `name`, looked up. */
export function field(name: FieldName): TrainingField {
  const found = FIELDS.find((f) => f.name === name);
  if (!found) throw new Error(`no training field ${name}`);
  return found;
}

function camel(name: string): string {
  return name.replace(/_(\w)/g, (_, letter: string) => letter.toUpperCase());
}

// The generated message keys the fields by camelCase; these read and write them by the API's name.
type Loose = Record<string, unknown>;

function read(config: TrainingConfig, name: FieldName): unknown {
  const [head, sub] = name.split(".") as [string, string | undefined];
  const top = (config as unknown as Loose)[camel(head)];
  if (sub === undefined) return top;
  return top === undefined ? undefined : (top as Loose)[camel(sub)];
}

/** A resolved configuration (a preset's, a job's) as the form's values. */
export function valuesFromConfig(config: TrainingConfig | undefined): FormValues {
  const values = {} as FormValues;
  for (const f of FIELDS) {
    const raw = config ? read(config, f.name) : undefined;
    values[f.name] = asFormValue(f, raw);
  }
  return values;
}

function asFormValue(f: TrainingField, raw: unknown): FieldValue {
  if (f.kind === "bool") return raw === true;
  if (raw === undefined || raw === null) return "";
  if (f.kind === "resolution") {
    const { width, height } = raw as { width: number; height: number };
    if (!width && !height) return "";
    return width === height ? String(width) : `${width}x${height}`;
  }
  if (f.kind === "json") return Object.keys(raw as object).length ? JSON.stringify(raw) : "";
  return String(raw);
}

/** A value typed in the form that can't become what the field takes ("" is fine: unset). */
export function unparseable(f: TrainingField, value: FieldValue): boolean {
  if (typeof value === "boolean" || value.trim() === "") return false;
  try {
    parse(f, value);
    return false;
  } catch {
    return true;
  }
}

function parse(f: TrainingField, value: string): unknown {
  const text = value.trim();
  switch (f.kind) {
    case "int": {
      if (!/^-?\d+$/.test(text)) throw new Error("not an integer");
      return f.name === "seed" || f.name === "preview.seed" ? BigInt(text) : Number(text);
    }
    case "float": {
      const number = Number(text);
      if (!Number.isFinite(number)) throw new Error("not a number");
      return number;
    }
    case "resolution": {
      const match = /^(\d+)(?:\s*[x×]\s*(\d+))?$/.exec(text);
      if (!match) throw new Error("not a size");
      const width = Number(match[1]);
      return { width, height: match[2] ? Number(match[2]) : width };
    }
    case "json": {
      const parsed: unknown = JSON.parse(text);
      if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) throw new Error("not an object");
      return parsed as JsonObject;
    }
    default:
      return text;
  }
}

/**
 * The configuration message holding `names`' values from the form (the rest left unset, so the
 * preset's value applies). Empty and unparseable values are left out: the caller shows those.
 */
export function configFromValues(values: FormValues, names: Iterable<FieldName>): Partial<TrainingConfig> {
  const config: Loose = {};
  for (const name of names) {
    const f = field(name);
    const value = values[name];
    let parsed: unknown;
    if (typeof value === "boolean") {
      parsed = value;
    } else {
      if (value.trim() === "" || unparseable(f, value)) continue;
      parsed = parse(f, value);
    }
    const [head, sub] = name.split(".") as [string, string | undefined];
    if (sub === undefined) {
      config[camel(head)] = parsed;
    } else {
      ((config[camel(head)] ??= {}) as Loose)[camel(sub)] = parsed;
    }
  }
  return config as Partial<TrainingConfig>;
}

/** The fields whose values differ between `a` and `b`, in the form's order. */
export function changedFields(a: FormValues, b: FormValues): FieldName[] {
  return FIELDS.filter((f) => normalized(a[f.name]) !== normalized(b[f.name])).map((f) => f.name);
}

function normalized(value: FieldValue): string {
  if (typeof value === "boolean") return String(value);
  const text = value.trim();
  const number = Number(text);
  return text !== "" && Number.isFinite(number) ? String(number) : text;
}

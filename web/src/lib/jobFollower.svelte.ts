/**
 * Follows one training job's event stream for the training page, resuming from the last event
 * seen when the connection drops, the browser goes offline, or the page is reloaded.
 *
 * What the page shows is rebuilt from two kinds of source. The job itself (its epochs and
 * previews) and its per-step metrics (the loss chart) are read from the API when the page opens;
 * what only the event log holds (log lines, previews rendered on request) is kept in session
 * storage beside the seq of the last event applied, written as one record, so a reload carries on
 * with `afterSeq` = that seq and every event is applied exactly once.
 */
import { Code, LogEvent_Level, TrainingJob_State, toKilnError } from "@kiln/sdk";
import type { EpochResult, TrainingEvent, TrainingJob, TrainingProgress } from "@kiln/sdk";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { previewView } from "./artifacts";
import type { PreviewView } from "./artifacts";
import { refusal } from "./errors";
import type { Refusal } from "./errors";
import { kiln } from "./session.svelte";

export interface LogLine {
  seq: number;
  time: string;
  level: "info" | "warning" | "error";
  message: string;
}

/** A saved LoRA: each epoch's, and those saved on request between epochs. */
export interface SavedEpoch {
  lora: string;
  epoch: number;
  step: number;
  loss: number;
  onRequest: boolean;
  sizeBytes: number;
  previews: PreviewView[];
}

/** Previews rendered on request at a step ("sample now"). */
export interface SampleRow {
  seq: number;
  step: number;
  epoch: number;
  previews: PreviewView[];
}

export type Connection = "connecting" | "live" | "offline" | "reconnecting" | "ended";

/** What the page says out loud when something changes (the caller translates it). */
export type Change =
  | { kind: "queued"; position: number }
  | { kind: "started"; attempt: number; resumedFrom: number }
  | { kind: "phase"; phase: string }
  | { kind: "saved"; epoch: number; onRequest: boolean; step: number }
  | { kind: "sampled"; step: number }
  | { kind: "requeued"; reason: string }
  | { kind: "finished"; state: TrainingJob_State; message: string }
  | { kind: "offline" }
  | { kind: "reconnecting" }
  | { kind: "live" };

interface Stored {
  lastSeq: number;
  seen: number;
  log: LogLine[];
  samples: SampleRow[];
}

// A long run logs a lot; the page keeps the newest lines (the API keeps them all).
const MAX_LOG_LINES = 2000;
const METRICS_PAGE = 10_000;
// At most this many points are read back for the chart; a longer history is read with a stride.
const MAX_HISTORY_POINTS = 20_000;
const RETRY_MS = 2000;
const FINAL = new Set([TrainingJob_State.SUCCEEDED, TrainingJob_State.FAILED, TrainingJob_State.CANCELLED]);

function storageKey(job: string): string {
  return `kiln.watch.${job}`;
}

function load(job: string): Stored {
  try {
    const raw = sessionStorage.getItem(storageKey(job));
    if (raw) return JSON.parse(raw) as Stored;
  } catch {
    // A damaged record is as good as none: the stream is then read from its start.
  }
  return { lastSeq: 0, seen: 0, log: [], samples: [] };
}

function savedEpoch(result: EpochResult): SavedEpoch {
  return {
    lora: result.lora?.name ?? `${result.epoch}-${result.step}`,
    epoch: result.epoch,
    step: Number(result.step),
    loss: result.loss,
    onRequest: result.onRequest,
    sizeBytes: Number(result.lora?.sizeBytes ?? 0),
    previews: result.previews.map(previewView),
  };
}

function level(value: LogEvent_Level): LogLine["level"] {
  if (value === LogEvent_Level.ERROR) return "error";
  if (value === LogEvent_Level.WARNING) return "warning";
  return "info";
}

export class JobFollower {
  readonly name: string;
  state = $state(TrainingJob_State.UNSPECIFIED);
  queuePosition = $state(0);
  queueEtaSeconds = $state(0);
  progress = $state.raw<TrainingProgress | null>(null);
  errorMessage = $state("");
  epochs = $state.raw<SavedEpoch[]>([]);
  log = $state.raw<LogLine[]>([]);
  samples = $state.raw<SampleRow[]>([]);
  /** Events applied (across reloads of this tab) and the seq of the last one. */
  seen = $state(0);
  lastSeq = $state(0);
  connection = $state<Connection>("connecting");
  refused = $state.raw<Refusal | null>(null);
  /** The loss chart's points, appended in step order; `chartVersion` changes when they do. */
  readonly steps: number[] = [];
  readonly losses: number[] = [];
  chartVersion = $state(0);

  private controller: AbortController | null = null;
  private following = false;
  // Events up to this seq had happened when the page opened: replaying them rebuilds the page
  // without announcing each old change again.
  private readonly historyUntil: number;
  private stopped = false;
  private lastPhase = "";
  private persistTimer: ReturnType<typeof setTimeout> | null = null;
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  private readonly onChange: (change: Change) => void;
  private readonly onConnectionChange: (change: Change) => void;
  private readonly onFinished: () => void;

  constructor(job: TrainingJob, onChange: (change: Change) => void, onFinished: () => void) {
    this.name = job.name;
    this.historyUntil = Number(job.lastEventSeq);
    this.onConnectionChange = onChange;
    this.onChange = (change) => {
      if (this.replaying) return;
      onChange(change);
    };
    this.onFinished = onFinished;
    this.state = job.state;
    this.queuePosition = job.queuePosition;
    this.queueEtaSeconds = job.etaSeconds;
    this.progress = job.progress ?? null;
    this.errorMessage = job.error?.message ?? "";
    this.lastPhase = job.progress?.phase ?? "";
    for (const result of job.epochs) this.addEpoch(savedEpoch(result));
    const stored = load(job.name);
    this.lastSeq = stored.lastSeq;
    this.seen = stored.seen;
    this.log = stored.log;
    this.samples = stored.samples;
  }

  /** Reads the chart's history, then follows the stream; ends with `stop()`. */
  async start(): Promise<void> {
    addEventListener("offline", this.wentOffline);
    addEventListener("online", this.cameBack);
    addEventListener("pagehide", this.persistNow);
    await this.loadHistory();
    if (!this.stopped) void this.follow();
  }

  stop(): void {
    this.stopped = true;
    this.controller?.abort();
    removeEventListener("offline", this.wentOffline);
    removeEventListener("online", this.cameBack);
    removeEventListener("pagehide", this.persistNow);
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.persistNow();
  }

  /** Every recorded step's loss, page by page (with a stride for a very long run). */
  private async loadHistory(): Promise<void> {
    this.steps.length = 0;
    this.losses.length = 0;
    const total = Number(this.progress?.totalSteps ?? 0);
    const stride = Math.max(1, Math.ceil(total / MAX_HISTORY_POINTS));
    let startStep = 1n;
    try {
      for (;;) {
        const page = await kiln().trainer.listTrainingMetrics({ name: this.name, startStep, stride, pageSize: METRICS_PAGE });
        for (const metric of page.metrics) this.addPoint(Number(metric.step), metric.loss);
        if (page.nextStartStep === 0n || page.metrics.length === 0 || this.stopped) break;
        startStep = page.nextStartStep;
      }
    } catch (error) {
      this.refused = refusal(error);
    }
    this.chartVersion += 1;
  }

  private addPoint(step: number, loss: number): boolean {
    const last = this.steps.at(-1) ?? 0;
    if (step <= last) return false; // already charted (read from the history)
    this.steps.push(step);
    this.losses.push(loss);
    return true;
  }

  private addEpoch(saved: SavedEpoch): void {
    if (this.epochs.some((e) => e.lora === saved.lora)) return;
    this.epochs = [...this.epochs, saved].sort((a, b) => a.step - b.step || a.epoch - b.epoch);
  }

  private replaying = false;

  /** One loop at a time: `online` may fire while a failed stream waits to be opened again. */
  private async follow(): Promise<void> {
    if (this.following) return;
    this.following = true;
    try {
      await this.followLoop();
    } finally {
      this.following = false;
    }
  }

  private async followLoop(): Promise<void> {
    while (!this.stopped && this.connection !== "ended") {
      if (!navigator.onLine) {
        this.setConnection("offline");
        return; // `online` starts it again
      }
      const controller = new AbortController();
      this.controller = controller;
      try {
        this.setConnection(this.connection === "reconnecting" ? "reconnecting" : "connecting");
        const events = kiln().watchJob(this.name, { afterSeq: BigInt(this.lastSeq), signal: controller.signal, maxAttempts: 3 });
        for await (const event of events) {
          if (this.connection !== "live") this.setConnection("live");
          this.apply(event);
        }
        this.setConnection("ended");
        this.persistNow();
        return;
      } catch (error) {
        if (controller.signal.aborted || this.stopped) return; // gone offline, or the page closed
        const failure = toKilnError(error);
        if (failure.code === Code.OutOfRange) {
          // The events after the stored seq were pruned from the log: start over from the oldest kept.
          this.forget();
          continue;
        }
        if (failure.code === Code.NotFound || failure.code === Code.PermissionDenied || failure.code === Code.Unauthenticated) {
          this.refused = refusal(error);
          this.setConnection("ended");
          return;
        }
        this.setConnection("reconnecting");
        await new Promise<void>((resolve) => {
          this.retryTimer = setTimeout(resolve, RETRY_MS);
        });
      }
    }
  }

  private readonly wentOffline = (): void => {
    if (this.connection === "ended") return;
    this.controller?.abort();
    this.setConnection("offline");
  };

  private readonly cameBack = (): void => {
    if (this.connection !== "offline" || this.stopped) return;
    this.setConnection("reconnecting");
    void this.follow();
  };

  private setConnection(connection: Connection): void {
    if (this.connection === connection) return;
    const was = this.connection;
    this.connection = connection;
    if (connection === "offline") this.onConnectionChange({ kind: "offline" });
    else if (connection === "reconnecting" && was !== "offline") this.onConnectionChange({ kind: "reconnecting" });
    else if (connection === "live" && (was === "offline" || was === "reconnecting")) this.onConnectionChange({ kind: "live" });
  }

  /** One event, applied once: the stream never repeats a seq, and the stored seq resumes after it. */
  private apply(event: TrainingEvent): void {
    const seq = Number(event.seq);
    if (seq <= this.lastSeq) return;
    this.replaying = seq <= this.historyUntil;
    const time = event.time ? timestampDate(event.time).toISOString() : "";
    const kind = event.kind;
    switch (kind.case) {
      case "queued":
        this.state = TrainingJob_State.QUEUED;
        if (kind.value.position !== this.queuePosition || seq === 1) this.onChange({ kind: "queued", position: kind.value.position });
        this.queuePosition = kind.value.position;
        this.queueEtaSeconds = kind.value.etaSeconds;
        break;
      case "started":
        this.state = TrainingJob_State.RUNNING;
        this.queuePosition = 0;
        this.onChange({ kind: "started", attempt: kind.value.attempt, resumedFrom: kind.value.resumedFromEpoch });
        break;
      case "progress":
        this.state = TrainingJob_State.RUNNING;
        this.progress = kind.value;
        if (kind.value.phase !== this.lastPhase) {
          this.lastPhase = kind.value.phase;
          this.onChange({ kind: "phase", phase: kind.value.phase });
        }
        if (kind.value.phase === "training" && this.addPoint(Number(kind.value.step), kind.value.loss)) this.chartVersion += 1;
        break;
      case "epochSaved":
        this.addEpoch(savedEpoch(kind.value));
        this.onChange({ kind: "saved", epoch: kind.value.epoch, onRequest: kind.value.onRequest, step: Number(kind.value.step) });
        break;
      case "previewsRendered":
        this.samples = [...this.samples, {
          seq, step: Number(kind.value.step), epoch: kind.value.epoch, previews: kind.value.previews.map(previewView),
        }];
        this.onChange({ kind: "sampled", step: Number(kind.value.step) });
        break;
      case "log":
        this.log = [...this.log, { seq, time, level: level(kind.value.level), message: kind.value.message }].slice(-MAX_LOG_LINES);
        break;
      case "requeued":
        this.state = TrainingJob_State.QUEUED;
        this.onChange({ kind: "requeued", reason: kind.value.reason });
        break;
      case "finished":
        this.state = kind.value.state;
        this.errorMessage = kind.value.error?.message ?? "";
        this.queuePosition = 0;
        this.onChange({ kind: "finished", state: kind.value.state, message: this.errorMessage });
        break;
    }
    this.lastSeq = seq;
    this.seen += 1;
    this.schedulePersist();
    if (FINAL.has(this.state) && kind.case === "finished") {
      // The chart drawn live may have missed steps recorded between the history read at a reload
      // and the first event after it: once the job is over, draw it from the whole record.
      void this.loadHistory();
      this.onFinished();
    }
  }

  private forget(): void {
    this.lastSeq = 0;
    this.seen = 0;
    this.log = [];
    this.samples = [];
    this.persistNow();
  }

  // Written at most twice a second: a reload in between resumes from the older record, which is
  // consistent with itself, and the events after it are simply applied again from there.
  private schedulePersist(): void {
    if (this.persistTimer) return;
    this.persistTimer = setTimeout(this.persistNow, 500);
  }

  private readonly persistNow = (): void => {
    if (this.persistTimer) clearTimeout(this.persistTimer);
    this.persistTimer = null;
    const record: Stored = { lastSeq: this.lastSeq, seen: this.seen, log: this.log, samples: this.samples };
    try {
      sessionStorage.setItem(storageKey(this.name), JSON.stringify(record));
    } catch {
      // Storage full or refused: a reload then reads the stream from its start instead.
    }
  };
}

/**
 * Where a job submitted now would stand: validate_only answers the job's own cost but not the
 * queue, so the queue is read as it is (this tenant's waiting and running jobs). The order is
 * first in, first out within a tenant, so a new job goes behind every waiting one of ours.
 */
import { TrainingJob_State } from "@kiln/sdk";
import type { KilnClient } from "@kiln/sdk";

export interface QueueOutlook {
  /** 1 is next. */
  position: number;
  /** Jobs waiting or running ahead of it. */
  ahead: number;
  /** Seconds until the last of them is expected to finish. */
  waitSeconds: number;
}

export async function queueOutlook(client: KilnClient): Promise<QueueOutlook> {
  const { trainingJobs } = await client.trainer.listTrainingJobs({
    states: [TrainingJob_State.QUEUED, TrainingJob_State.RUNNING],
    pageSize: 100,
  });
  const queued = trainingJobs.filter((job) => job.state === TrainingJob_State.QUEUED).length;
  return {
    position: queued + 1,
    ahead: trainingJobs.length,
    waitSeconds: Math.max(0, ...trainingJobs.map((job) => job.etaSeconds)),
  };
}

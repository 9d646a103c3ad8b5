// Trains a LoRA on a folder of images through the gateway, printing the progress:
//   KILN_HTTP_URL=http://localhost:8080 KILN_API_KEY=kiln_… node dist-test/examples/train.js ./photos mytrigger
import { readFileSync, readdirSync } from "node:fs";
import { extname, join } from "node:path";
import { KilnError, ModelFamily, TrainingJob_State, createKilnClient } from "@kiln/sdk";

const [folder, trigger = "mytrigger"] = process.argv.slice(2);
if (!folder) {
  console.error("usage: train.js FOLDER [TRIGGER_WORD]");
  process.exit(2);
}
const kiln = createKilnClient({
  baseUrl: process.env.KILN_HTTP_URL ?? "http://localhost:8080",
  apiKey: process.env.KILN_API_KEY,
});

try {
  const dataset = await kiln.datasets.createDataset({
    dataset: { displayName: trigger, family: ModelFamily.SD15, defaultRepeat: 1 },
  });
  for (const file of readdirSync(folder).filter((f) => [".png", ".jpg", ".jpeg", ".webp"].includes(extname(f)))) {
    const image = await kiln.uploadImage(dataset.name, readFileSync(join(folder, file)), file, { tags: [trigger] });
    console.log(`uploaded ${file} as ${image.name}`);
  }
  const job = await kiln.trainer.createTrainingJob({
    trainingJob: {
      displayName: `${trigger} lora`,
      dataset: dataset.name,
      preset: "presets/demo-tiny-sd15",
      basic: { epochs: 2, previewPrompt: trigger },
    },
  });
  const done = await kiln.waitForJob(job.name, ({ seq, kind }) => {
    if (kind.case === "progress") {
      console.log(`#${seq} ${kind.value.phase} step ${kind.value.step}/${kind.value.totalSteps} loss ${kind.value.loss.toFixed(4)}`);
    } else if (kind.case === "epochSaved") {
      console.log(`#${seq} epoch ${kind.value.epoch} saved: ${kind.value.lora?.name ?? ""}`);
    } else {
      console.log(`#${seq} ${kind.case}`);
    }
  });
  console.log(`${job.name}: ${TrainingJob_State[done.state]}, ${done.epochs.length} epochs`);
} catch (error) {
  if (!(error instanceof KilnError)) {
    throw error;
  }
  console.error(error.message); // says what to fix, e.g. each field violation
  process.exit(1);
}

// One dictionary per page, merged; keys are prefixed by their page, so they never collide.
import { common } from "./en/common";
import { datasets } from "./en/datasets";
import { images } from "./en/images";
import { crop } from "./en/crop";
import { tags } from "./en/tags";
import { parameters } from "./en/parameters";
import { training } from "./en/training";
import { test } from "./en/test";
import { publish } from "./en/publish";

export const en = {
  ...common,
  ...datasets,
  ...images,
  ...crop,
  ...tags,
  ...parameters,
  ...training,
  ...test,
  ...publish,
};

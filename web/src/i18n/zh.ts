// One dictionary per page, merged; keys are prefixed by their page, so they never collide.
import { common } from "./zh/common";
import { datasets } from "./zh/datasets";
import { images } from "./zh/images";
import { crop } from "./zh/crop";
import { tags } from "./zh/tags";
import { parameters } from "./zh/parameters";
import { training } from "./zh/training";
import { test } from "./zh/test";
import { publish } from "./zh/publish";

export const zh = {
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

import type { datasets as en } from "../en/datasets";

export const datasets: Record<keyof typeof en, string> = {
  "datasets.title": "数据集",
  "datasets.empty": "还没有数据集。新建一个来上传图片。",
  "datasets.create": "新建数据集",
  "datasets.name": "名称",
  "datasets.description": "描述",
  "datasets.family": "底模类型",
  "datasets.familyHelp": "决定裁剪尺寸和可用于训练的底模;创建后不能更改。",
  "datasets.images": "训练集图片",
  "datasets.regularization": "正则化数据集图片",
  "datasets.created": "创建时间",
  "datasets.open": "打开 {name}",
  "datasets.delete": "删除 {name}",
  "datasets.confirmDelete": "删除数据集“{name}”及其全部图片?此操作无法撤销。",
  "datasets.deleted": "已删除“{name}”。",
  "datasets.more": "加载更多",
};

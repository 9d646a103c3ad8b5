/**
 * Crop-box geometry in pixels of the oriented original: moves and resizes that keep the box
 * inside the image and at the target's aspect (the crop is scaled to the target size, so any
 * other aspect would stretch it).
 */
export interface Box {
  left: number;
  top: number;
  width: number;
  height: number;
}

// The smallest box a resize goes down to, on its short side.
const MIN_SIDE = 32;

function clamp(value: number, low: number, high: number): number {
  return Math.min(Math.max(value, low), Math.max(low, high));
}

/** The box moved by (dx, dy), stopped at the image's edges. */
export function moved(box: Box, dx: number, dy: number, imageWidth: number, imageHeight: number): Box {
  return {
    ...box,
    left: Math.round(clamp(box.left + dx, 0, imageWidth - box.width)),
    top: Math.round(clamp(box.top + dy, 0, imageHeight - box.height)),
  };
}

/** The box scaled by `factor` around its centre at the target's aspect, inside the image. */
export function resized(box: Box, factor: number, aspect: number, imageWidth: number, imageHeight: number): Box {
  const largest = Math.min(imageWidth, imageHeight * aspect);
  const smallest = Math.min(largest, aspect >= 1 ? MIN_SIDE * aspect : MIN_SIDE);
  const width = Math.round(clamp(box.width * factor, smallest, largest));
  const height = Math.min(imageHeight, Math.round(width / aspect));
  const centreX = box.left + box.width / 2;
  const centreY = box.top + box.height / 2;
  return moved({ left: centreX - width / 2, top: centreY - height / 2, width, height }, 0, 0, imageWidth, imageHeight);
}

export function sameBox(a: Box, b: Box): boolean {
  return a.left === b.left && a.top === b.top && a.width === b.width && a.height === b.height;
}

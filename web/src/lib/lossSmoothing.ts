/**
 * Smoothing of a noisy loss curve: an exponential moving average whose start is debiased, so the
 * first points are not dragged towards zero (the curve TensorBoard draws). `weight` 0 gives the raw
 * values back; 0.99 follows only the long trend.
 */
export function smoothed(values: readonly number[], weight: number): number[] {
  const w = Math.min(Math.max(weight, 0), 0.999);
  const out: number[] = [];
  let average = 0;
  let seen = 0;
  for (const value of values) {
    if (!Number.isFinite(value)) {
      out.push(value);
      continue;
    }
    seen += 1;
    average = average * w + (1 - w) * value;
    out.push(average / (1 - w ** seen));
  }
  return out;
}

/**
 * Progress lines on stderr for long work of the commands.
 *
 * @module
 */

import type { PrefillProgress } from "../engine/backend.ts";

/**
 * A {@link PrefillProgress} that prints `prefill: 4096 / 131072 tokens (3%), 2048 tok/s` on stderr (after
 * `label`, default "prefill"), once a second at most and not before the prompt has run for a second (short
 * prompts print nothing).
 */
export function prefillReporter(label = "prefill"): PrefillProgress {
  const start = performance.now();
  let last = start;
  return (done, total) => {
    const now = performance.now();
    if (now - last < 1000) return;
    last = now;
    const rate = done / ((now - start) / 1000);
    console.error(
      `${label}: ${done} / ${total} tokens (${Math.floor((100 * done) / total)}%), ${rate.toFixed(0)} tok/s`,
    );
  };
}

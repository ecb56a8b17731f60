/**
 * Token sampling as a chain of small processors over a candidate list, in llama.cpp's default order:
 * repetition penalty → top-k → top-p → min-p → temperature → draw. Temperature 0 is greedy (argmax).
 * The WebGPU backend applies the same rules on the GPU (`src/gpu/ops/sample.ts`) with its own random
 * stream, so a seed gives the same text on each backend but not the same text on both.
 *
 * @module
 */

import { BadFlagError } from "../errors.ts";
import { Rng } from "./rng.ts";

/** Candidate tokens: `ids[0..n)` with their `logits`; `sorted` once ordered by logit, descending. */
export interface Candidates {
  /** Token ids. */
  ids: Uint32Array;
  /** Logit of each candidate (parallel to `ids`). */
  logits: Float32Array;
  /** Number of live candidates. */
  n: number;
  /** Whether `ids[0..n)` is ordered by descending logit. */
  sorted: boolean;
}

/** One rule of the chain: edits the candidates in place; `history` is every token so far. */
export type LogitsProcessor = (c: Candidates, history: readonly number[]) => void;

/** Sampling settings (flags follow llama.cpp: `--temp --top-k --top-p --min-p --repeat-penalty --seed`). */
export interface SamplingOptions {
  /** Softmax temperature; 0 means greedy. Default 0.8. */
  temperature?: number;
  /** Keep the k most likely tokens; 0 disables. Default 40. */
  topK?: number;
  /** Keep the smallest set with cumulative probability ≥ p; 1 disables. Default 0.95. */
  topP?: number;
  /** Drop tokens with probability < p · max probability; 0 disables. Default 0.05. */
  minP?: number;
  /** Divide positive (multiply negative) logits of recent tokens by this; 1 disables. Default 1. */
  repeatPenalty?: number;
  /** How many recent tokens the repetition penalty looks at. Default 64. */
  repeatLastN?: number;
  /** Seed of the random draw; same seed, same text (on one backend). Default: random. */
  seed?: number;
}

/** Penalises tokens seen in the last `lastN` tokens (CTRL-style, as llama.cpp's `repeat_penalty`). */
export function repetitionPenalty(penalty: number, lastN: number): LogitsProcessor {
  return (c, history) => {
    if (penalty === 1 || lastN === 0) return;
    const recent = new Set(history.slice(-lastN));
    for (let i = 0; i < c.n; i++) {
      if (!recent.has(c.ids[i])) continue;
      c.logits[i] = c.logits[i] > 0 ? c.logits[i] / penalty : c.logits[i] * penalty;
    }
    c.sorted = false;
  };
}

/** Keeps the `k` highest logits (sorted afterwards). */
export function topK(k: number): LogitsProcessor {
  return (c) => {
    if (k <= 0 || k >= c.n) {
      sortCandidates(c);
      return;
    }
    // Min-heap of the best k seen so far, by logit.
    const heap = new Uint32Array(k);
    let size = 0;
    const less = (a: number, b: number) =>
      c.logits[a] < c.logits[b] || (c.logits[a] === c.logits[b] && a > b);
    const siftDown = (i: number) => {
      for (;;) {
        const l = 2 * i + 1, r = l + 1;
        let m = i;
        if (l < size && less(heap[l], heap[m])) m = l;
        if (r < size && less(heap[r], heap[m])) m = r;
        if (m === i) return;
        [heap[i], heap[m]] = [heap[m], heap[i]];
        i = m;
      }
    };
    for (let i = 0; i < c.n; i++) {
      if (size < k) {
        heap[size] = i;
        let j = size++;
        while (j > 0) {
          const p = (j - 1) >> 1;
          if (!less(heap[j], heap[p])) break;
          [heap[j], heap[p]] = [heap[p], heap[j]];
          j = p;
        }
      } else if (less(heap[0], i)) {
        heap[0] = i;
        siftDown(0);
      }
    }
    const ids = new Uint32Array(k);
    const logits = new Float32Array(k);
    for (let i = 0; i < k; i++) {
      ids[i] = c.ids[heap[i]];
      logits[i] = c.logits[heap[i]];
    }
    c.ids = ids;
    c.logits = logits;
    c.n = k;
    c.sorted = false;
    sortCandidates(c);
  };
}

/** Nucleus sampling: keeps the smallest prefix whose probability mass reaches `p`. */
export function topP(p: number): LogitsProcessor {
  return (c) => {
    if (p >= 1) return;
    sortCandidates(c);
    const probs = probabilities(c);
    let cum = 0;
    for (let i = 0; i < c.n; i++) {
      cum += probs[i];
      if (cum >= p) {
        c.n = i + 1;
        return;
      }
    }
  };
}

/** Drops candidates whose probability is below `p` times the most likely one's. */
export function minP(p: number): LogitsProcessor {
  return (c) => {
    if (p <= 0) return;
    sortCandidates(c);
    const cutoff = c.logits[0] + Math.log(p);
    let n = 1;
    while (n < c.n && c.logits[n] >= cutoff) n++;
    c.n = n;
  };
}

/** Divides logits by `t` (t > 0). */
export function temperature(t: number): LogitsProcessor {
  return (c) => {
    for (let i = 0; i < c.n; i++) c.logits[i] /= t;
  };
}

/** Index of the largest value (lowest index on ties). */
export function argmax(values: Float32Array): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

/** A configured processor chain plus the seeded draw. */
export class Sampler {
  /** The settings in effect, defaults filled in. */
  readonly options: Required<SamplingOptions>;
  readonly #chain: LogitsProcessor[];
  readonly #rng: Rng;

  /** Validates `options` (a {@link BadFlagError} names the flag) and builds the chain. */
  constructor(options: SamplingOptions = {}) {
    const o: Required<SamplingOptions> = {
      temperature: options.temperature ?? 0.8,
      topK: options.topK ?? 40,
      topP: options.topP ?? 0.95,
      minP: options.minP ?? 0.05,
      repeatPenalty: options.repeatPenalty ?? 1,
      repeatLastN: options.repeatLastN ?? 64,
      seed: options.seed ?? Math.floor(Math.random() * 2 ** 31),
    };
    check(Number.isFinite(o.temperature) && o.temperature >= 0, "--temp", o.temperature, "a number ≥ 0");
    check(Number.isInteger(o.topK) && o.topK >= 0, "--top-k", o.topK, "an integer ≥ 0");
    check(o.topP > 0 && o.topP <= 1, "--top-p", o.topP, "in (0, 1]");
    check(o.minP >= 0 && o.minP < 1, "--min-p", o.minP, "in [0, 1)");
    check(o.repeatPenalty > 0, "--repeat-penalty", o.repeatPenalty, "a number > 0");
    check(Number.isInteger(o.repeatLastN) && o.repeatLastN >= 0, "--repeat-last-n", o.repeatLastN, "≥ 0");
    check(Number.isInteger(o.seed), "--seed", o.seed, "an integer");
    this.options = o;
    this.#rng = new Rng(o.seed);
    this.#chain = [
      repetitionPenalty(o.repeatPenalty, o.repeatLastN),
      topK(o.topK),
      topP(o.topP),
      minP(o.minP),
      temperature(o.temperature),
    ];
  }

  /** True when sampling is plain argmax (temperature 0, no penalty): the GPU can pick the token itself. */
  get isGreedy(): boolean {
    return this.options.temperature === 0 && this.options.repeatPenalty === 1;
  }

  /** Picks the next token from `logits` given the tokens so far. */
  sample(logits: Float32Array, history: readonly number[]): number {
    if (this.options.temperature === 0) {
      if (this.options.repeatPenalty === 1) return argmax(logits);
      const c = allCandidates(logits);
      this.#chain[0](c, history);
      return c.ids[argmax(c.logits.subarray(0, c.n))];
    }
    const c = allCandidates(logits);
    for (const p of this.#chain) p(c, history);
    const probs = probabilities(c);
    let u = this.#rng.next();
    for (let i = 0; i < c.n; i++) {
      u -= probs[i];
      if (u < 0) return c.ids[i];
    }
    return c.ids[c.n - 1];
  }
}

function allCandidates(logits: Float32Array): Candidates {
  const ids = new Uint32Array(logits.length);
  for (let i = 0; i < ids.length; i++) ids[i] = i;
  return { ids, logits: Float32Array.from(logits), n: logits.length, sorted: false };
}

function sortCandidates(c: Candidates): void {
  if (c.sorted) return;
  const order = Array.from({ length: c.n }, (_, i) => i);
  order.sort((a, b) => c.logits[b] - c.logits[a] || c.ids[a] - c.ids[b]);
  const ids = new Uint32Array(c.n);
  const logits = new Float32Array(c.n);
  for (let i = 0; i < c.n; i++) {
    ids[i] = c.ids[order[i]];
    logits[i] = c.logits[order[i]];
  }
  c.ids = ids;
  c.logits = logits;
  c.sorted = true;
}

function probabilities(c: Candidates): Float64Array {
  let max = -Infinity;
  for (let i = 0; i < c.n; i++) max = Math.max(max, c.logits[i]);
  const p = new Float64Array(c.n);
  let sum = 0;
  for (let i = 0; i < c.n; i++) sum += p[i] = Math.exp(c.logits[i] - max);
  for (let i = 0; i < c.n; i++) p[i] /= sum;
  return p;
}

function check(ok: boolean, flag: string, value: unknown, want: string): void {
  if (!ok) throw new BadFlagError(`${flag}: ${value} is not valid (want ${want})`);
}

/**
 * A conversation with a model: the tokens already in the KV cache, and `generate()`, an async iterator of
 * text pieces with per-token timing. A session keeps its cache between calls, so a chat turn only
 * prefills the new tokens.
 *
 * @module
 */

import type { Tokenizer } from "../tokenizer/tokenizer.ts";
import type { ModelBackend, PrefillProgress } from "./backend.ts";
import { OutOfMemoryError, PrefillAbortedError } from "../errors.ts";
import type { SampleStart } from "../model/gpu_model_options.ts";
import { Sampler, type SamplingOptions } from "./sampling.ts";

/** Options of one {@link Session.generate} call. */
export interface GenerateOptions extends SamplingOptions {
  /** Most tokens to generate. Default 256. */
  maxTokens?: number;
  /** Generation ends before the first occurrence of any of these strings (not emitted). */
  stop?: string[];
  /** Keep going past end-of-generation tokens. */
  ignoreEos?: boolean;
  /**
   * Aborts generation between tokens, and a long prompt between its prefill steps (then nothing is
   * generated, the stop reason is "abort" and the prompt is not part of the conversation).
   */
  signal?: AbortSignal;
  /**
   * Called as a long prompt runs: tokens done so far and the prompt's length, after each part of it but
   * the last (on the GPU a prefill step, on the CPU 64 tokens); not for a prompt that runs in one step.
   */
  onPrefill?: PrefillProgress;
}

/** One generated token and the text it completes (may be "" while a UTF-8 character is incomplete). */
export interface GeneratedPiece {
  /**
   * Token id; -1 for a last piece that carries no token, only text held back until the end (an incomplete
   * UTF-8 character, or the start of a stop string that did not follow).
   */
  token: number;
  /** Text newly available for output. */
  text: string;
  /** Milliseconds spent producing this token (for the first one: including the prompt's prefill). */
  ms: number;
}

/** Timing and counts of one {@link Session.generate} call. */
export interface GenerationStats {
  /** Tokens prefilled (new prompt tokens; of a prompt stopped during its prefill, those that ran). */
  promptTokens: number;
  /** Milliseconds of prefill (until the first token's logits). */
  prefillMs: number;
  /** Tokens generated. */
  generatedTokens: number;
  /** Milliseconds of decoding after the first token. */
  decodeMs: number;
  /** Why generation stopped. */
  stopReason: "length" | "eos" | "stop" | "abort" | "context";
}

/** Tokens in the cache plus generation; one sequence. */
export class Session {
  /** Every token whose keys and values are cached, in order. */
  readonly tokens: number[] = [];
  /** The last sampled token, not yet run through the model; it leads the next call's input. */
  #unfed: number[] = [];
  /** The cache cannot resume after {@link tokens} (e.g. a stopped prompt went too far): start again from 0. */
  #restart = false;
  /** Statistics of the last `generate` call. */
  lastStats: GenerationStats | undefined;

  /** Starts an empty session on `backend`, decoding text with `tokenizer`. */
  constructor(readonly backend: ModelBackend, readonly tokenizer: Tokenizer) {}

  /**
   * Keeps only the first `n` cached tokens (the rest of the cache is overwritten by the next call), e.g.
   * to resume a chat from the longest prefix its re-rendered transcript shares with the cache.
   */
  rewind(n: number): void {
    // A cache that dropped tokens (WG-KV) goes back only a few tokens: further, start over from position 0.
    if (this.#restart || (n < this.tokens.length && !this.#resumesAt(n, this.backend.rewindable !== false))) {
      n = 0;
    }
    this.#restart = false;
    if (n < this.tokens.length) this.tokens.length = Math.max(0, n);
    this.#unfed = [];
  }

  /**
   * Whether the backend's cache can take a call at `pos` holding exactly the first `pos` tokens of the
   * conversation; `otherwise` for a backend that does not say (no `canResumeAt`).
   */
  #resumesAt(pos: number, otherwise: boolean): boolean {
    return this.backend.canResumeAt ? this.backend.canResumeAt(pos) : otherwise;
  }

  /** Every token of the conversation, the last sampled one (not yet in the cache) included. */
  get transcript(): number[] {
    return [...this.tokens, ...this.#unfed];
  }

  /** The last `n` tokens of the transcript followed by `feed` (what the repetition penalty looks at). */
  #recent(feed: number[], n: number): number[] {
    const tail = n > feed.length
      ? this.tokens.slice(Math.max(0, this.tokens.length - (n - feed.length)))
      : [];
    return tail.concat(feed.slice(-n));
  }

  /** Forgets the conversation (the cache is overwritten from position 0 on the next call). */
  reset(): void {
    this.tokens.length = 0;
    this.#unfed = [];
    this.#restart = false;
  }

  /**
   * Puts the conversation back as it was before a call that stopped before its prompt had run: the cached
   * tokens of a restart (`before.tokens`) and the unfed token; `restart` says whether the next call must
   * run the conversation again from position 0.
   */
  #restore(before: { tokens?: number[]; unfed: number[] }, restart: boolean): void {
    for (const t of before.tokens ?? []) this.tokens.push(t);
    this.#unfed = before.unfed;
    this.#restart = restart;
  }

  /**
   * Appends `prompt` tokens to the conversation and yields generated pieces until a stop condition.
   * The generated tokens stay in the session (ready for the next turn). The generator's return value, also
   * kept in {@link Session.lastStats} (a `for await` loop drops it), is the call's {@link GenerationStats}.
   * A prompt that does not fit the context with the cached tokens is an `OutOfMemoryError`.
   */
  async *generate(
    prompt: number[],
    options: GenerateOptions = {},
  ): AsyncGenerator<GeneratedPiece, GenerationStats> {
    const sampler = new Sampler(options);
    const maxTokens = options.maxTokens ?? 256;
    const stops = (options.stop ?? []).filter((s) => s.length > 0);
    const ctx = this.backend.contextLength;
    // A cache that went on too far past the conversation to come back (a stopped prompt) runs it again.
    if (!this.#restart && !this.#resumesAt(this.tokens.length, true)) this.#restart = true;
    // What to restore should the prompt be stopped during its prefill.
    const before = { tokens: this.#restart ? this.tokens.slice() : undefined, unfed: this.#unfed };
    if (this.#restart) {
      // An earlier prompt stopped mid-way in a cache that cannot rewind: run the conversation again.
      prompt = this.tokens.concat(this.#unfed, prompt);
      this.tokens.length = 0;
      this.#restart = false;
    } else prompt = [...this.#unfed, ...prompt];
    this.#unfed = [];
    if (prompt.length === 0 && this.tokens.length === 0 && this.tokenizer.bos !== undefined) {
      prompt = [this.tokenizer.bos];
    }
    if (this.tokens.length + prompt.length > ctx) {
      throw new OutOfMemoryError(
        `context overflow: ${this.tokens.length} cached + ${prompt.length} prompt tokens exceed the context of ` +
          `${ctx} (raise -c/--ctx)`,
      );
    }
    const stats: GenerationStats = {
      promptTokens: prompt.length,
      prefillMs: 0,
      generatedTokens: 0,
      decodeMs: 0,
      stopReason: "length",
    };
    this.lastStats = stats;
    const decoder = this.tokenizer.streamDecoder({ previous: prompt.at(-1) });
    let pending = ""; // text held back because it may be the start of a stop string
    let feed = prompt;
    const t0 = performance.now();
    let tPrev = t0;
    // A backend that samples on the device (GPU) draws every token there, from its own random stream.
    const onDevice = !sampler.isGreedy && this.backend.forwardSample !== undefined;
    const sampling = (draw: number): SampleStart => ({
      settings: sampler.options,
      history: this.#recent(feed, sampler.options.repeatLastN),
      draw,
    });
    // Greedy or on-device sampled decoding on a backend that can chain steps: tokens computed ahead, and the
    // next chain length (short at first so the first tokens show quickly, then doubling).
    let ready: number[] = [];
    let chain = 2;
    let chainMs = 0;
    for (let i = 0; i < maxTokens; i++) {
      if (options.signal?.aborted) {
        stats.stopReason = "abort";
        if (i > 0) break;
        // Stopped before the prompt ran: the conversation is what it was before this call.
        this.#restore(before, before.tokens !== undefined);
        stats.promptTokens = 0;
        return stats;
      }
      if (this.tokens.length + feed.length > ctx) {
        stats.stopReason = "context";
        break;
      }
      const pos = this.tokens.length;
      let token: number;
      let ms: number;
      if (ready.length > 0) {
        // Already computed by a chained greedy decode (its position is in the cache).
        token = ready.shift()!;
        ms = chainMs;
      } else {
        const chainable = i > 0 && feed.length === 1;
        const greedyChain = sampler.isGreedy && chainable && this.backend.decodeGreedy !== undefined;
        const sampledChain = onDevice && chainable && this.backend.decodeSampled !== undefined;
        if (greedyChain || sampledChain) {
          const count = Math.max(1, Math.min(chain, maxTokens - i, ctx - pos, this.backend.maxChain ?? 1));
          chain = Math.min(2 * chain, this.backend.maxChain ?? 1);
          ready = greedyChain
            ? await this.backend.decodeGreedy!(feed[0], pos, count)
            : await this.backend.decodeSampled!(feed[0], pos, count, sampling(i));
          token = ready.shift()!;
        } else {
          if (i === 0) {
            this.backend.prefillProgress = options.onPrefill;
            this.backend.prefillSignal = options.signal;
          }
          try {
            if (sampler.isGreedy) {
              token = await this.backend.forwardArgmax(feed, pos);
            } else if (onDevice) {
              token = await this.backend.forwardSample!(feed, pos, sampling(i));
            } else {
              const logits = await this.backend.forward(feed, pos);
              token = sampler.sample(logits, this.#recent(feed, sampler.options.repeatLastN));
            }
          } catch (error) {
            if (!(error instanceof PrefillAbortedError)) throw error;
            // The conversation is what it was before this call; a cache that cannot go back to its end (the
            // prompt ran too far into it) runs it again.
            this.#restore(before, false);
            this.#restart = !this.#resumesAt(this.tokens.length, this.backend.rewindable !== false);
            stats.promptTokens = error.done;
            stats.prefillMs = performance.now() - t0;
            stats.stopReason = "abort";
            return stats;
          } finally {
            if (i === 0) {
              this.backend.prefillProgress = undefined;
              this.backend.prefillSignal = undefined;
            }
          }
        }
        const now = performance.now();
        if (i === 0) stats.prefillMs = now - t0;
        else stats.decodeMs += now - tPrev;
        ms = chainMs = (now - tPrev) / (ready.length + 1);
        tPrev = now;
      }
      for (const t of feed) this.tokens.push(t);
      feed = [token];
      stats.generatedTokens++;
      if (!options.ignoreEos && this.tokenizer.isEndOfGeneration(token)) {
        stats.stopReason = "eos";
        break;
      }
      pending += decoder.push(token);
      const hit = firstStop(pending, stops);
      if (hit >= 0) {
        stats.stopReason = "stop";
        if (hit > 0) yield { token, text: pending.slice(0, hit), ms };
        pending = "";
        break;
      }
      const safe = pending.length - heldBack(pending, stops);
      const text = pending.slice(0, safe);
      pending = pending.slice(safe);
      yield { token, text, ms };
    }
    // The last sampled token is not in the cache yet: it leads the next turn.
    this.#unfed = feed;
    if (stats.stopReason !== "stop") {
      const rest = pending + decoder.flush();
      if (rest) yield { token: -1, text: rest, ms: 0 };
    }
    return stats;
  }
}

function firstStop(text: string, stops: string[]): number {
  let best = -1;
  for (const s of stops) {
    const i = text.indexOf(s);
    if (i >= 0 && (best < 0 || i < best)) best = i;
  }
  return best;
}

/** Length of the longest suffix of `text` that is a proper prefix of some stop string. */
function heldBack(text: string, stops: string[]): number {
  let keep = 0;
  for (const s of stops) {
    for (let k = Math.min(s.length - 1, text.length); k > keep; k--) {
      if (text.endsWith(s.slice(0, k))) {
        keep = k;
        break;
      }
    }
  }
  return keep;
}

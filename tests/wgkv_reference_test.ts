import { deepEqual, equal, ok, throws } from "node:assert/strict";
import { BadFlagError } from "../src/errors.ts";
import {
  admittedFlags,
  attendedPositions,
  attends,
  type MaskPolicy,
  wgkvAttention,
  WgkvCacheModel,
} from "../src/kv/wgkv_reference.ts";
import { attendOne } from "../src/model/ops.ts";

/** `n` uniform values in (−1, 1), fresh each run, never zero. */
const random = (n: number) => Float32Array.from({ length: n }, () => (Math.random() * 2 - 1) || 0.5);
/** Random flags with admission probability `p`. */
const randomFlags = (n: number, p: number) =>
  Uint8Array.from({ length: n }, () => (Math.random() < p ? 1 : 0));

function close(what: string, got: Float32Array, want: Float32Array, rel: number) {
  equal(got.length, want.length, what);
  for (let i = 0; i < want.length; i++) {
    const err = Math.abs(got[i] - want[i]);
    if (!(err <= rel * Math.max(1, Math.abs(want[i])))) {
      throw new Error(`${what}: element ${i} is ${got[i]}, expected ${want[i]}`);
    }
  }
}

/** Attention of every query over explicit key positions with the f32 reference op of the CPU model. */
function attendOver(
  q: Float32Array,
  k: Float32Array,
  v: Float32Array,
  shape: { qHeads: number; kvHeads: number; D: number },
  row: number,
  positions: number[],
): Float32Array {
  const { qHeads, kvHeads, D } = shape;
  const out = new Float32Array(qHeads * D);
  for (let qh = 0; qh < qHeads; qh++) {
    const kh = Math.floor(qh / (qHeads / kvHeads));
    const keys = new Float32Array(positions.length * D), values = new Float32Array(positions.length * D);
    positions.forEach((p, j) => {
      keys.set(k.subarray((p * kvHeads + kh) * D, (p * kvHeads + kh + 1) * D), j * D);
      values.set(v.subarray((p * kvHeads + kh) * D, (p * kvHeads + kh + 1) * D), j * D);
    });
    attendOne(
      out,
      q,
      keys,
      values,
      positions.length,
      D,
      D,
      0,
      1 / Math.sqrt(D),
      (row * qHeads + qh) * D,
      qh * D,
    );
  }
  return out;
}

const SHAPE = { qHeads: 6, kvHeads: 3, D: 8 };

Deno.test("admitted flags use the strict rule g > τ", () => {
  const tau = Math.fround(0.1);
  deepEqual([...admittedFlags(Float32Array.of(0.05, tau, 0.1000001, 0.9, 1e-3), tau)], [0, 0, 1, 1, 0]);
});

Deno.test("mask: all-admitted ≡ full, none-admitted ≡ window, sinks ≡ flags on the first S", () => {
  const { qHeads, kvHeads, D } = SHAPE;
  for (const [N, W] of [[7, 16], [16, 16], [17, 16], [45, 16], [23, 5], [1, 4]]) {
    const q = random(N * qHeads * D), k = random(N * kvHeads * D), v = random(N * kvHeads * D);
    const base = { q, k, v, nTokens: N, qHeads, kvHeads, headDim: D };
    const all: MaskPolicy = {
      kind: "wgkv",
      window: W,
      flags: new Uint8Array(kvHeads * N).fill(1),
      length: N,
    };
    const none: MaskPolicy = { kind: "wgkv", window: W, flags: new Uint8Array(kvHeads * N), length: N };
    const full = wgkvAttention({ ...base, policy: { kind: "full" } });
    const window = wgkvAttention({ ...base, policy: { kind: "window", window: W } });
    deepEqual(wgkvAttention({ ...base, policy: all }), full, `N ${N} W ${W}: all admitted`);
    deepEqual(wgkvAttention({ ...base, policy: none }), window, `N ${N} W ${W}: none admitted`);
    const S = 3;
    const sinkFlags = new Uint8Array(kvHeads * N);
    for (let h = 0; h < kvHeads; h++) for (let t = 0; t < Math.min(S, N); t++) sinkFlags[h * N + t] = 1;
    deepEqual(
      wgkvAttention({ ...base, policy: { kind: "sink", window: W, sinks: S } }),
      wgkvAttention({ ...base, policy: { kind: "wgkv", window: W, flags: sinkFlags, length: N } }),
    );
    // Against the f32 op of the CPU model: full = all keys ≤ q, window = the last W keys including q.
    for (let r = 0; r < N; r++) {
      const row = (x: Float32Array) => x.subarray(r * qHeads * D, (r + 1) * qHeads * D);
      const upTo = Array.from({ length: r + 1 }, (_, j) => j);
      close(`full row ${r}`, row(full), attendOver(q, k, v, SHAPE, r, upTo), 1e-5);
      close(
        `window row ${r}`,
        row(window),
        attendOver(q, k, v, SHAPE, r, upTo.slice(Math.max(0, r - W + 1))),
        1e-5,
      );
    }
    // Every output element was written (no NaN) and the window really differs from full once N > W.
    ok(full.every(Number.isFinite) && window.every(Number.isFinite));
    if (N > W) ok(full.some((x, i) => x !== window[i]));
  }
});

Deno.test("mask: the training rule, GQA per KV head, queryStart rows", () => {
  const N = 29, W = 8, { qHeads, kvHeads, D } = SHAPE;
  const flags = randomFlags(kvHeads * N, 0.3);
  const policy: MaskPolicy = { kind: "wgkv", window: W, flags, length: N };
  for (let h = 0; h < kvHeads; h++) {
    for (let qp = 0; qp < N; qp++) {
      for (let kv = 0; kv < N; kv++) {
        const want = kv <= qp && (qp - kv < W || flags[h * N + kv] === 1);
        equal(attends(policy, h, qp, kv), want, `h ${h} q ${qp} kv ${kv}`);
      }
    }
  }
  const q = random(N * qHeads * D), k = random(N * kvHeads * D), v = random(N * kvHeads * D);
  const base = { q, k, v, nTokens: N, qHeads, kvHeads, headDim: D, policy };
  const all = wgkvAttention(base);
  const start = 20;
  const tail = wgkvAttention({ ...base, q: q.subarray(start * qHeads * D), queryStart: start });
  deepEqual(tail, all.subarray(start * qHeads * D));
  // Query heads of one group see the same keys: with equal queries they give equal outputs.
  const same = q.slice();
  for (let t = 0; t < N; t++) same.copyWithin((t * qHeads + 1) * D, t * qHeads * D, (t * qHeads + 1) * D);
  const out = wgkvAttention({ ...base, q: same });
  for (let t = 0; t < N; t++) {
    deepEqual(
      out.subarray(t * qHeads * D, (t * qHeads + 1) * D),
      out.subarray((t * qHeads + 1) * D, (t * qHeads + 2) * D),
    );
  }
  throws(() => attends(policy, 0, N + 20, N + 1), BadFlagError); // outside the window and past the flags
});

Deno.test("cache model: held tokens after prefill and each decode step equal the mask of the last query", () => {
  const layers = 2, { qHeads, kvHeads, D } = SHAPE;
  for (
    const [N, W, steps] of [[5, 16, 30], [16, 16, 20], [17, 16, 21], [45, 16, 19], [37, 7, 11], [1, 3, 9]]
  ) {
    const total = N + steps;
    // Flags of every (layer, head, position), decided up front so the whole sequence has one mask.
    const flags = Array.from({ length: layers }, () => randomFlags(kvHeads * total, 0.35));
    const prefillFlags = flags.map((f) => {
      const out = new Uint8Array(kvHeads * N);
      for (let h = 0; h < kvHeads; h++) out.set(f.subarray(h * total, h * total + N), h * N);
      return out;
    });
    const cache = new WgkvCacheModel({ layers, kvHeads, headDim: D, window: W });
    cache.prefill(prefillFlags, N);
    const sequential = new WgkvCacheModel({ layers, kvHeads, headDim: D, window: W });
    for (let t = 0; t < N; t++) {
      sequential.decode(
        flags.map((f) => Uint8Array.from({ length: kvHeads }, (_, h) => f[h * total + t])),
      );
    }
    const check = (cacheUnderTest: WgkvCacheModel, what: string) => {
      const p = cacheUnderTest.tokens - 1;
      for (let l = 0; l < layers; l++) {
        const policy: MaskPolicy = { kind: "wgkv", window: W, flags: flags[l], length: total };
        for (let h = 0; h < kvHeads; h++) {
          const want = attendedPositions(policy, h, p);
          deepEqual(cacheUnderTest.heldPositions(l, h), want, `${what} N ${N} W ${W} p ${p} l ${l} h ${h}`);
          equal(cacheUnderTest.heldTokens(l, h), want.length);
        }
      }
    };
    check(cache, "prefill");
    check(sequential, "sequential");
    // Prefill puts the oldest token in slot 0 and leaves localPtr at 0.
    equal(cache.localPtr, 0);
    equal(cache.localLength, Math.min(N, W));
    equal(cache.ring(1, 2)[0].position, N - Math.min(N, W));
    deepEqual(
      cache.globalPositions(0, 1),
      attendedPositions({ kind: "wgkv", window: W, flags: flags[0], length: total }, 1, N - 1).filter((x) =>
        x < N - W
      ),
    );

    const q = random(total * qHeads * D), k = random(total * kvHeads * D), v = random(total * kvHeads * D);
    for (let s = 0; s < steps; s++) {
      const p = N + s;
      const stepFlags = flags.map((f) => Uint8Array.from({ length: kvHeads }, (_, h) => f[h * total + p]));
      const promoted = cache.decode(stepFlags);
      // Exactly the flagged tokens leaving the window (position p − W) are promoted.
      const leaving = p - W;
      const want = [];
      if (leaving >= 0) {
        for (let l = 0; l < layers; l++) {
          for (let h = 0; h < kvHeads; h++) {
            if (flags[l][h * total + leaving]) want.push([l, h, leaving]);
          }
        }
      }
      deepEqual(promoted.map((x) => [x.layer, x.head, x.position]), want, `step ${s}`);
      check(cache, "decode");
      // Decode attention over the held tokens equals the dense masked reference for that query (layer 0).
      const dense = wgkvAttention({
        q: q.subarray(p * qHeads * D, (p + 1) * qHeads * D),
        k,
        v,
        nTokens: p + 1,
        qHeads,
        kvHeads,
        headDim: D,
        policy: { kind: "wgkv", window: W, flags: flags[0], length: total },
        queryStart: p,
      });
      const held = new Float32Array(qHeads * D);
      for (let kh = 0; kh < kvHeads; kh++) {
        const part = attendOver(q, k, v, SHAPE, p, cache.heldPositions(0, kh));
        const g = qHeads / kvHeads;
        held.set(part.subarray(kh * g * D, (kh + 1) * g * D), kh * g * D);
      }
      close(`decode attention p ${p}`, held, dense, 1e-5);
    }
  }
});

Deno.test("cache model: byte counts, and refused misuse", () => {
  const cache = new WgkvCacheModel({ layers: 3, kvHeads: 2, headDim: 8, window: 16 });
  const N = 53;
  const flags = [0, 1, 2].map(() => {
    const f = new Uint8Array(2 * N);
    for (let t = 0; t < N; t += 3) f[t] = 1; // head 0: every third token; head 1: none
    return f;
  });
  cache.prefill(flags, N);
  const s = cache.stats(2);
  const admittedOld = Math.ceil((N - 16) / 3); // positions 0, 3, … below N − W = 37
  equal(s.tokens, N);
  equal(s.fullTokens, N * 3 * 2);
  equal(s.heldTokens, 3 * (2 * 16 + admittedOld));
  equal(s.kvBytes, s.heldTokens * 2 * 8 * 2);
  equal(s.fullKvBytes, N * 6 * 32);
  equal(s.pagedKvBytes, 3 * (2 * 16 + 16 * Math.ceil(admittedOld / 16)) * 32);
  throws(() => cache.prefill(flags, N), BadFlagError);
  throws(() => cache.decode([new Uint8Array(2)]), BadFlagError);
  throws(() => new WgkvCacheModel({ layers: 1, kvHeads: 1, headDim: 8, window: 0 }), BadFlagError);
});

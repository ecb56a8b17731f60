import { deepEqual, equal, ok, throws } from "node:assert/strict";
import { BadFlagError, OutOfMemoryError } from "../src/errors.ts";
import { DualCache, ringTokensFor } from "../src/kv/dual_cache.ts";
import { pageBytes } from "../src/kv/page_pool.ts";
import { admissionHash, admitsByRule, mix32 } from "../src/kv/wgkv_policy.ts";
import { WgkvCacheModel } from "../src/kv/wgkv_reference.ts";

const base = { layers: 2, kvHeads: 3, headDim: 8, maxBatch: 8, maxGlobalTokens: 64 };

Deno.test("dual cache: ring size covers the window plus a step, in whole pages", () => {
  equal(ringTokensFor(16, 1), 16);
  equal(ringTokensFor(16, 2), 32);
  equal(ringTokensFor(256, 512), 768);
  equal(ringTokensFor(20, 8), 32);
});

Deno.test("dual cache: gate flags drive promotions, global lengths, pages and stats", () => {
  const kv = DualCache.cpuOnly({ ...base, policy: { kind: "wgkv", window: 9, threshold: 0.1, gate: null } });
  const C = kv.ringTokens; // ⌈(9 + 8 − 1)/16⌉·16 = 16
  equal(C, 16);
  const slot = kv.openSequence();
  equal(kv.pool.usedPages, 2 * 3 * 1);
  const L = 2, H = 3;
  const flags: number[][] = []; // [position][layer·H + head]
  let pos = 0;
  for (const n of [8, 8, 5, 1, 1, 8, 8, 8, 3]) {
    kv.beginStep(slot, n, pos);
    const f = Array.from({ length: n * L * H }, () => Math.random() < 0.5 ? 1 : 0);
    kv.endStep(slot, f);
    for (let t = 0; t < n; t++) flags.push(f.slice(t * L * H, (t + 1) * L * H));
    pos += n;
    // Tokens that left the ring (positions < pos − C) are global iff admitted.
    for (let r = 0; r < L * H; r++) {
      const promoted: number = flags.slice(0, Math.max(0, pos - C)).filter((x) => x[r] === 1).length;
      equal(kv.globalLength(slot, Math.floor(r / H), r % H), promoted, `row ${r} after ${pos}`);
    }
  }
  const s = kv.stats(slot);
  equal(s.tokens, pos);
  equal(s.ringPages, L * H);
  equal(s.usedBytes, kv.pool.usedPages * pageBytes(8));
  equal(s.fullBytes, L * H * Math.ceil(pos / 16) * pageBytes(8));
  for (let r = 0; r < L * H; r++) {
    const admitted = flags.filter((x) => x[r] === 1).length;
    ok(Math.abs(s.admittedFraction[r] - admitted / pos) < 1e-12);
  }
  kv.closeSequence(slot);
  equal(kv.pool.usedPages, 0);
});

Deno.test("dual cache: rewinding, gaps, oversized steps and unended steps are refused by name", () => {
  const kv = DualCache.cpuOnly({ ...base, policy: { kind: "window", window: 4 } });
  const slot = kv.openSequence();
  kv.beginStep(slot, 3, 0);
  throws(() => kv.beginStep(slot, 1, 3), /was not ended/);
  kv.endStep(slot);
  throws(() => kv.beginStep(slot, 1, 1), (e) => e instanceof BadFlagError && /rewind/.test(e.message));
  throws(() => kv.beginStep(slot, 1, 5), (e) => e instanceof BadFlagError && /gap/.test(e.message));
  throws(
    () => kv.beginStep(slot, 9, 3),
    (e) => e instanceof BadFlagError && /1 … 8 tokens, got 9/.test(e.message),
  );
  throws(() => kv.endStep(slot), /no step to end/);
  throws(
    () => kv.beginStep(1, 1, 0),
    (e) => e instanceof BadFlagError && /slot 1 is not open/.test(e.message),
  );
  throws(
    () => DualCache.cpuOnly({ ...base, policy: { kind: "sink", window: 0, sinks: 4 } }),
    (e) => e instanceof BadFlagError && /window/.test(e.message),
  );
  throws(
    () => DualCache.cpuOnly({ ...base, policy: { kind: "random", window: 4, rate: 1.5, seed: 0 } }),
    (e) => e instanceof BadFlagError && /rate/.test(e.message),
  );
  const gated = DualCache.cpuOnly({
    ...base,
    policy: { kind: "wgkv", window: 4, threshold: 0.1, gate: null },
  });
  const g = gated.openSequence();
  gated.beginStep(g, 2, 0);
  throws(
    () => gated.endStep(g, [1, 0]),
    (e) => e instanceof BadFlagError && /need 12 values/.test(e.message),
  );
});

Deno.test("dual cache: out of pages or over the global cap fails whole, naming the head", () => {
  // Pool: the rings of one sequence (6 pages) plus 2 spare pages; sinks admit the first 40 tokens.
  const kv = DualCache.cpuOnly({ ...base, pages: 8, policy: { kind: "sink", window: 8, sinks: 40 } });
  const slot = kv.openSequence();
  throws(() => kv.openSequence(), (e) => e instanceof OutOfMemoryError);
  let pos = 0;
  const step = () => {
    kv.beginStep(slot, 8, pos);
    kv.endStep(slot);
    pos += 8;
  };
  step();
  step(); // 16 tokens: the ring (16 slots) is full, nothing promoted yet
  equal(kv.pool.usedPages, 6);
  const before = kv.pool.usedPages;
  throws(step, (e) => e instanceof OutOfMemoryError && /promotions/.test(e.message));
  equal(kv.pool.usedPages, before, "nothing was taken");
  equal(kv.globalLength(slot, 0, 0), 0);

  const capped = DualCache.cpuOnly({
    ...base,
    maxGlobalTokens: 4,
    policy: { kind: "sink", window: 8, sinks: 40 },
  });
  const s = capped.openSequence();
  for (let p = 0; p < 16; p += 8) {
    capped.beginStep(s, 8, p);
    capped.endStep(s);
  }
  throws(
    () => capped.beginStep(s, 8, 16),
    (e) =>
      e instanceof OutOfMemoryError && /layer 0 head 0 .* 8 global tokens but the limit is 4/.test(e.message),
  );
});

Deno.test("dual cache: the random policy's hash is a fixed function (same on the GPU) and respects the rate", () => {
  equal(mix32(0), 0);
  ok(new Set([1, 2, 3, 4].map(mix32)).size === 4);
  equal(admissionHash(7, 1, 2, 3), admissionHash(7, 1, 2, 3));
  ok(admissionHash(7, 1, 2, 3) !== admissionHash(8, 1, 2, 3));
  const policy = { kind: "random", window: 4, rate: 0.25, seed: 42 } as const;
  let admitted = 0;
  for (let p = 0; p < 20000; p++) admitted += admitsByRule(policy, 0, 0, p) ? 1 : 0;
  ok(Math.abs(admitted / 20000 - 0.25) < 0.02, `admitted ${admitted / 20000}`);
  ok(admitsByRule({ ...policy, rate: 1 }, 3, 1, 123456));
  ok(!admitsByRule({ ...policy, rate: 0 }, 3, 1, 123456));
});

Deno.test("dual cache: interleaved sequences share the pool; every page has one owner; close frees all", () => {
  const kv = DualCache.cpuOnly({
    ...base,
    seqSlots: 3,
    policy: { kind: "random", window: 5, rate: 0.5, seed: 3 },
  });
  const slots = [kv.openSequence(), kv.openSequence(), kv.openSequence()];
  const pos = [0, 0, 0];
  for (let i = 0; i < 60; i++) {
    const j = (i * 7) % 3;
    const n = 1 + ((i * 5) % 8);
    kv.beginStep(slots[j], n, pos[j]);
    kv.endStep(slots[j]);
    pos[j] += n;
    const owners = new Set<number>();
    let held = 0;
    for (const s of slots) {
      for (let l = 0; l < base.layers; l++) {
        for (let h = 0; h < base.kvHeads; h++) {
          const row = kv.tables.rowOf(s, l, h);
          const pages = kv.tables.pagesOfRow(row, kv.ringPages + Math.ceil(kv.globalLength(s, l, h) / 16));
          for (const p of pages) {
            ok(!owners.has(p), `page ${p} has two owners`);
            ok(kv.pool.isUsed(p));
            owners.add(p);
            held++;
          }
        }
      }
    }
    equal(held, kv.pool.usedPages);
  }
  const ringOnly = kv.ringPages * base.layers * base.kvHeads;
  const others = kv.pool.usedPages - kv.stats(slots[0]).ringPages - kv.stats(slots[0]).globalPages;
  kv.resetSequence(slots[0]);
  equal(kv.tokens(slots[0]), 0);
  equal(kv.pool.usedPages, others + ringOnly);
  kv.beginStep(slots[0], 4, 0);
  kv.endStep(slots[0]);
  pos[0] = 4;
  const total = kv.stats();
  equal(total.tokens, pos[0] + pos[1] + pos[2]);
  kv.closeSequence(slots[1]);
  equal(kv.stats().tokens, pos[0] + pos[2]);
  kv.closeSequence(slots[0]);
  kv.closeSequence(slots[2]);
  equal(kv.pool.usedPages, 0);
});

Deno.test("dual cache: agrees with the reference dual-cache model (src/kv/wgkv_reference.ts) step by step", () => {
  const L = 2, H = 3, W = 12, N = 29;
  const kv = DualCache.cpuOnly({ ...base, policy: { kind: "wgkv", window: W, threshold: 0.1, gate: null } });
  const C = kv.ringTokens; // 32: the ring also covers a prefill chunk, so tokens leave it later
  const model = new WgkvCacheModel({ layers: L, kvHeads: H, headDim: 8, window: W });
  const slot = kv.openSequence();
  const history: Uint8Array[] = []; // [position][layer·H + head]
  const draw = () => Uint8Array.from({ length: L * H }, () => Math.random() < 0.4 ? 1 : 0);
  for (let t = 0; t < N; t++) history.push(draw());
  for (let pos = 0; pos < N; pos += 8) {
    const n = Math.min(8, N - pos);
    kv.beginStep(slot, n, pos);
    kv.endStep(slot, history.slice(pos, pos + n).flatMap((f) => Array.from(f)));
  }
  const byLayer = (from: number, to: number) =>
    Array.from({ length: L }, (_, l) => {
      const out = new Uint8Array(H * (to - from));
      for (let h = 0; h < H; h++) {
        for (let t = from; t < to; t++) out[h * (to - from) + t - from] = history[t][l * H + h];
      }
      return out;
    });
  model.prefill(byLayer(0, N), N);
  for (let T = N; T < N + 50; T++) {
    history.push(draw());
    kv.beginStep(slot, 1, T);
    kv.endStep(slot, history[T]);
    model.decode(byLayer(T, T + 1));
    for (let l = 0; l < L; l++) {
      for (let h = 0; h < H; h++) {
        // Our ring is longer than W: tokens the model already promoted may still sit in our ring.
        let inRingBeyondWindow = 0;
        for (let p = Math.max(0, T + 1 - C); p < T + 1 - W; p++) inRingBeyondWindow += history[p][l * H + h];
        equal(kv.globalLength(slot, l, h) + inRingBeyondWindow, model.globalPositions(l, h).length);
        // What the newest query attends: ours = the window plus admitted older tokens; the model's = held.
        const attended = [];
        for (let p = 0; p <= T; p++) if (T - p < W || history[p][l * H + h]) attended.push(p);
        deepEqual(attended, model.heldPositions(l, h));
      }
    }
  }
});

Deno.test("dual cache: a row takes its global pages in runs, consecutive on a fresh pool, and gives back the unused ones", () => {
  const L = 2, H = 2, maxBatch = 64;
  const policy = { kind: "wgkv" as const, window: 16, threshold: 0.1, gate: null };
  const kv = DualCache.cpuOnly({
    layers: L,
    kvHeads: H,
    headDim: 8,
    maxBatch,
    maxGlobalTokens: 4096,
    policy,
  });
  const slot = kv.openSequence();
  const ringPages = kv.ringPages, P = kv.maxPagesPerHead;
  let pos = 0;
  // Every token admitted in every row: the rows take pages side by side, as promotions interleave them.
  while (pos < 3000) {
    kv.beginStep(slot, maxBatch, pos);
    kv.endStep(slot, new Array(maxBatch * L * H).fill(1));
    pos += maxBatch;
    const s = kv.stats(slot);
    equal(s.ringPages + s.globalPages, kv.pool.usedPages, `held pages at ${pos}`);
    for (let r = 0; r < L * H; r++) {
      const filled = Math.ceil(kv.globalLength(slot, Math.floor(r / H), r % H) / 16);
      // At most a run beyond what the row fills: held / 16, and at most a step's pages beyond it.
      ok(s.globalPages - filled * L * H <= L * H * (Math.ceil(filled / 16) + Math.ceil(maxBatch / 16) + 1));
    }
  }
  // A row's global pages: runs of consecutive ids, longer as the row grows (the first ones a page at a time).
  for (let r = 0; r < L * H; r++) {
    const filled = Math.ceil(kv.globalLength(slot, Math.floor(r / H), r % H) / 16);
    ok(filled > 150, `row ${r} holds ${filled} pages`);
    const pages = kv.tables.table.subarray(r * P + ringPages, r * P + ringPages + filled);
    let breaks = 0;
    for (let j = 1; j < filled; j++) if (pages[j] !== pages[j - 1] + 1) breaks++;
    const tail = pages.subarray(filled - 64);
    let tailBreaks = 0;
    for (let j = 1; j < tail.length; j++) if (tail[j] !== tail[j - 1] + 1) tailBreaks++;
    ok(tailBreaks <= 8, `row ${r}: ${tailBreaks} breaks in its last 64 pages`);
    ok(breaks < filled / 2, `row ${r}: ${breaks} breaks in ${filled} pages`);
  }
  kv.resetSequence(slot);
  equal(kv.pool.usedPages, L * H * ringPages, "a reset keeps only the rings");
  kv.closeSequence(slot);
  equal(kv.pool.usedPages, 0);
});

Deno.test("dual cache: near a full pool, rows take only the pages they lack", () => {
  const L = 1, H = 2, maxBatch = 16;
  const policy = { kind: "wgkv" as const, window: 16, threshold: 0.1, gate: null };
  const ringPages = Math.ceil((16 + maxBatch - 1) / 16);
  // Room for the rings and exactly the pages 1200 admitted tokens per row fill.
  const pages = L * H * (ringPages + Math.ceil((1200 - 32) / 16));
  const kv = DualCache.cpuOnly({
    layers: L,
    kvHeads: H,
    headDim: 8,
    maxBatch,
    maxGlobalTokens: 2048,
    policy,
    pages,
  });
  const slot = kv.openSequence();
  let pos = 0;
  while (pos < 1200) {
    kv.beginStep(slot, maxBatch, pos);
    kv.endStep(slot, new Array(maxBatch * L * H).fill(1));
    pos += maxBatch;
  }
  equal(kv.pool.freePages, 0, "every page in use, none wasted on runs");
  throws(
    () => kv.beginStep(slot, maxBatch, pos),
    (e: Error) => e instanceof OutOfMemoryError && /--kv-global/.test(e.message),
  );
});

Deno.test("dual cache: globalPageRun 1 takes a page at a time; 0 is refused", () => {
  const L = 1, H = 2, maxBatch = 32;
  const policy = { kind: "wgkv" as const, window: 16, threshold: 0.1, gate: null };
  const options = { layers: L, kvHeads: H, headDim: 8, maxBatch, maxGlobalTokens: 2048, policy };
  const kv = DualCache.cpuOnly({ ...options, globalPageRun: 1 });
  const slot = kv.openSequence();
  for (let pos = 0; pos < 1600; pos += maxBatch) {
    kv.beginStep(slot, maxBatch, pos);
    kv.endStep(slot, new Array(maxBatch * L * H).fill(1));
    let filled = 0;
    for (let h = 0; h < H; h++) filled += Math.ceil(kv.globalLength(slot, 0, h) / 16);
    equal(kv.stats(slot).globalPages, filled, `no page held ahead at ${pos}`);
  }
  throws(
    () => DualCache.cpuOnly({ ...options, globalPageRun: 0 }),
    (e: Error) =>
      e instanceof BadFlagError && /globalPageRun must be a whole number ≥ 1, got 0/.test(e.message),
  );
});

Deno.test("dual cache: pages a row took ahead go back to the pool when another row needs them", () => {
  const maxBatch = 16, tokens = 1600;
  const policy = { kind: "wgkv" as const, window: 16, threshold: 0.1, gate: null };
  // Head 0 admits the tokens before position 770: 49 pages, the last of them from a run of 3 taken at 48
  // held, so 2 stay unfilled. Head 1 admits those from 600 on. The pool holds the rings and exactly the
  // pages both rows fill, so head 1's last pages exist only once head 0's unfilled ones are given back.
  const ring = 2, C = 32;
  const fill0 = Math.ceil(770 / 16), fill1 = Math.ceil((tokens - C - 600) / 16);
  const kv = DualCache.cpuOnly({
    layers: 1,
    kvHeads: 2,
    headDim: 8,
    maxBatch,
    maxGlobalTokens: 2048,
    policy,
    pages: 2 * ring + fill0 + fill1,
  });
  equal(kv.ringTokens, C);
  const slot = kv.openSequence();
  for (let pos = 0; pos < tokens; pos += maxBatch) {
    kv.beginStep(slot, maxBatch, pos);
    const flags = [];
    for (let t = 0; t < maxBatch; t++) flags.push(pos + t < 770 ? 1 : 0, pos + t >= 600 ? 1 : 0);
    kv.endStep(slot, flags);
  }
  equal(kv.globalLength(slot, 0, 0), 770);
  equal(kv.globalLength(slot, 0, 1), tokens - C - 600);
  equal(kv.pool.freePages, 0);
});

/** Every page the rows of `kv` list (rings, then global pages) has one owner and is in use; returns them. */
function listedPages(kv: DualCache, slots: number[]): Set<number> {
  const owners = new Set<number>();
  for (const s of slots) {
    for (let l = 0; l < kv.layers; l++) {
      for (let h = 0; h < kv.kvHeads; h++) {
        const row = kv.tables.rowOf(s, l, h);
        for (const p of kv.tables.pagesOfRow(row, kv.ringPages + Math.ceil(kv.globalLength(s, l, h) / 16))) {
          ok(!owners.has(p), `page ${p} has two owners`);
          ok(kv.pool.isUsed(p), `page ${p} is listed but free`);
          owners.add(p);
        }
      }
    }
  }
  return owners;
}

/** Lengths, global lengths and admissions of every row of `slot`. */
function rowState(kv: DualCache, slot: number) {
  const s = kv.stats(slot);
  const rows = [];
  for (let l = 0; l < kv.layers; l++) {
    for (let h = 0; h < kv.kvHeads; h++) rows.push([kv.length(slot, l, h), kv.globalLength(slot, l, h)]);
  }
  return { tokens: s.tokens, rows, admitted: [...s.admittedFraction].map((f) => f * s.tokens) };
}

Deno.test("dual cache: a rewind leaves the state of the kept tokens; later steps go on as without the rewound ones", () => {
  const L = 2, H = 3, maxBatch = 4, W = 9;
  const policy = { kind: "wgkv" as const, window: W, threshold: 0.1, gate: null };
  const options = {
    layers: L,
    kvHeads: H,
    headDim: 8,
    maxBatch,
    maxGlobalTokens: 256,
    policy,
    globalPageRun: 2,
  };
  const kv = DualCache.cpuOnly(options);
  const C = kv.ringTokens; // ⌈(9 + 4 − 1)/16⌉·16 = 16
  equal(C, 16);
  equal(kv.maxRewind, C - W + 1);
  ok(kv.maxRewind >= maxBatch);
  const slot = kv.openSequence();
  const flags: number[][] = []; // [position][layer·H + head]
  const draw = () => Array.from({ length: L * H }, () => Math.random() < 0.6 ? 1 : 0);
  const feed = (cache: DualCache, s: number, from: number, to: number, step: number) => {
    for (let p = from; p < to; p += step) {
      const n = Math.min(step, to - p);
      while (flags.length < p + n) flags.push(draw());
      cache.beginStep(s, n, p);
      cache.endStep(s, flags.slice(p, p + n).flat());
    }
  };
  /** A fresh cache fed the first `n` tokens one at a time. */
  const fresh = (n: number) => {
    const other = DualCache.cpuOnly(options);
    const s = other.openSequence();
    feed(other, s, 0, n, 1);
    return { other, s };
  };
  let seen = 0;
  feed(kv, slot, 0, seen = 90, maxBatch);
  for (const back of [1, kv.maxRewind, 5, kv.maxRewind, 2]) {
    equal(kv.earliestRewind(slot), seen - kv.maxRewind);
    // Steps ahead (as a chain decodes), then back by `back` tokens.
    feed(kv, slot, seen, seen + kv.maxRewind, 1);
    const ahead = seen + kv.maxRewind;
    const pos = ahead - back;
    const globalBefore = rowState(kv, slot).rows.reduce((sum, [, g]) => sum + g, 0);
    const usedBefore = kv.pool.usedPages;
    const copies = kv.rewind(slot, pos);
    // Copies: the admitted tokens among those the rewound steps moved out of the ring.
    let lost = 0;
    for (let p = pos - C; p < ahead - C; p++) lost += flags[p].reduce((a, b) => a + b, 0);
    equal(copies, lost, `copies back to ${pos}`);
    equal(rowState(kv, slot).rows.reduce((sum, [, g]) => sum + g, 0), globalBefore - lost);
    ok(kv.pool.usedPages <= usedBefore);
    const { other, s } = fresh(pos);
    deepEqual(rowState(kv, slot), rowState(other, s), `state after rewinding to ${pos}`);
    // Every page is in one place: a row's list, a row's unfilled run, or the free list.
    const listed = listedPages(kv, [slot]);
    const stats = kv.stats(slot);
    equal(stats.ringPages + stats.globalPages, kv.pool.usedPages);
    ok(listed.size <= kv.pool.usedPages);
    // Later steps promote and drop as in the cache that never saw the rewound tokens (new flags for them).
    flags.length = pos;
    feed(kv, slot, pos, pos + 2 * maxBatch + 3, maxBatch);
    feed(other, s, pos, pos + 2 * maxBatch + 3, 3);
    deepEqual(rowState(kv, slot), rowState(other, s), `state after going on from ${pos}`);
    seen = pos + 2 * maxBatch + 3;
  }
  kv.closeSequence(slot);
  equal(kv.pool.usedPages, 0, "every page back once");
});

Deno.test("dual cache: empty global pages go back to the pool on a rewind", () => {
  // Every token admitted, a page at a time: a rewind of 16 tokens empties exactly one page per row.
  const L = 1, H = 2, maxBatch = 16, W = 16;
  const policy = { kind: "random" as const, window: W, rate: 1, seed: 0 };
  const kv = DualCache.cpuOnly({
    layers: L,
    kvHeads: H,
    headDim: 8,
    maxBatch,
    maxGlobalTokens: 256,
    policy,
    globalPageRun: 1,
  });
  const C = kv.ringTokens;
  equal(C, 32);
  const slot = kv.openSequence();
  for (let p = 0; p < C + 32; p += maxBatch) {
    kv.beginStep(slot, maxBatch, p);
    kv.endStep(slot);
  }
  equal(kv.globalLength(slot, 0, 0), 32);
  const used = kv.pool.usedPages;
  equal(kv.rewind(slot, C + 16), 16 * L * H);
  equal(kv.globalLength(slot, 0, 1), 16);
  equal(kv.pool.usedPages, used - L * H);
  listedPages(kv, [slot]);
  equal(kv.rewind(slot, C + 16), 0, "rewinding to the end changes nothing");
});

Deno.test("dual cache: rewinds further back than the ring allows, past the end or mid-step are refused", () => {
  const kv = DualCache.cpuOnly({ ...base, policy: { kind: "window", window: 4 } });
  const C = kv.ringTokens;
  const slot = kv.openSequence();
  let pos = 0;
  for (; pos < C; pos += 8) {
    kv.beginStep(slot, 8, pos);
    kv.endStep(slot);
  }
  equal(kv.earliestRewind(slot), 0, "nothing left the ring yet: any position");
  kv.rewind(slot, 3);
  equal(kv.tokens(slot), 3);
  for (pos = 3; pos < 3 + 2 * C; pos += 8) {
    kv.beginStep(slot, 8, pos);
    kv.endStep(slot);
  }
  equal(kv.earliestRewind(slot), pos - kv.maxRewind);
  const refused = (e: unknown) =>
    e instanceof BadFlagError && !e.message.includes("\n") &&
    /can rewind to positions \d+ … \d+ only/.test(e.message);
  throws(() => kv.rewind(slot, pos - kv.maxRewind - 1), refused);
  throws(() => kv.rewind(slot, pos + 1), refused);
  throws(() => kv.rewind(slot, 2.5), refused);
  kv.beginStep(slot, 1, pos);
  throws(() => kv.rewind(slot, pos), /was not ended/);
  kv.endStep(slot);
  equal(kv.rewind(slot, pos + 1 - kv.maxRewind), 0, "the window policy admits nothing: no copies");
  equal(kv.tokens(slot), pos + 1 - kv.maxRewind);
});

import { deepEqual, equal, ok, throws } from "node:assert/strict";
import { argmax, Sampler } from "../src/engine/sampling.ts";
import { Rng } from "../src/engine/rng.ts";
import { BadFlagError } from "../src/errors.ts";

function randomLogits(n: number, rng = new Rng(Math.floor(Math.random() * 1e9))): Float32Array {
  return Float32Array.from({ length: n }, () => (rng.next() - 0.5) * 10);
}

Deno.test("sampling: temperature 0 is argmax, lowest index on ties", () => {
  const logits = randomLogits(1000);
  const s = new Sampler({ temperature: 0 });
  equal(s.isGreedy, true);
  equal(s.sample(logits, []), argmax(logits));
  equal(argmax(Float32Array.from([1, 3, 3, 2])), 1);
});

Deno.test("sampling: the same seed gives the same tokens, another seed differs", () => {
  const logits = randomLogits(500);
  const draw = (seed: number) => {
    const s = new Sampler({ temperature: 1.5, topK: 0, topP: 1, minP: 0, seed });
    return Array.from({ length: 50 }, () => s.sample(logits, []));
  };
  deepEqual(draw(7), draw(7));
  ok(draw(7).join() !== draw(8).join());
});

Deno.test("sampling: top-k keeps only the k best", () => {
  const logits = randomLogits(300);
  const best = Array.from(logits.keys()).sort((a, b) => logits[b] - logits[a]).slice(0, 3);
  const s = new Sampler({ temperature: 5, topK: 3, topP: 1, minP: 0, seed: 1 });
  for (let i = 0; i < 200; i++) ok(best.includes(s.sample(logits, [])));
});

Deno.test("sampling: top-p keeps the smallest nucleus, min-p drops the unlikely", () => {
  const logits = Float32Array.from([Math.log(0.5), Math.log(0.3), Math.log(0.15), Math.log(0.05)]);
  const p = new Sampler({ temperature: 1, topK: 0, topP: 0.75, minP: 0, seed: 3 });
  const seenP = new Set(Array.from({ length: 300 }, () => p.sample(logits, [])));
  deepEqual([...seenP].sort(), [0, 1]);
  const m = new Sampler({ temperature: 1, topK: 0, topP: 1, minP: 0.2, seed: 3 });
  const seenM = new Set(Array.from({ length: 300 }, () => m.sample(logits, [])));
  deepEqual([...seenM].sort(), [0, 1, 2]);
});

Deno.test("sampling: repetition penalty steers greedy away from recent tokens", () => {
  const logits = Float32Array.from([2, 1.9, -1]);
  equal(new Sampler({ temperature: 0, repeatPenalty: 1.5 }).sample(logits, [0]), 1);
  equal(new Sampler({ temperature: 0 }).sample(logits, [0]), 0);
});

Deno.test("sampling: bad settings name their flag", () => {
  throws(
    () => new Sampler({ temperature: -1 }),
    (e) => e instanceof BadFlagError && /--temp/.test(e.message),
  );
  throws(() => new Sampler({ topP: 0 }), (e) => e instanceof BadFlagError && /--top-p/.test(e.message));
});

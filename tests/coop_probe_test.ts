// How the cooperative-matrix probe's output is read (src/gpu/coop_probe.ts): the products the device
// returns decide which WGSL builtins are the row-major ones, and anything else means no support. (The
// probe itself runs where a GPU offers cooperative matrices: tests/gpu_device_test.ts.)
import { deepEqual, equal, ok } from "node:assert/strict";
import { probeMatrices, readProbe } from "../src/gpu/coop_probe.ts";

/** a · b of the 16 × 16 row-major matrices at `ao` and `bo` of `m`. */
function times(m: Float32Array, ao: number, bo: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < 16; i++) {
    for (let j = 0; j < 16; j++) {
      let s = 0;
      for (let k = 0; k < 16; k++) s += m[ao + i * 16 + k] * m[bo + k * 16 + j];
      out.push(s);
    }
  }
  return out;
}

Deno.test("coop probe: A·B means coopLoadT is row-major, B·A coopLoad; anything else no support", () => {
  const m = probeMatrices();
  // Small integers (exact in f16), and A·B ≠ B·A for both pairs, so the two readings cannot be confused.
  ok(m.every((v) => Number.isInteger(v) && Math.abs(v) <= 3));
  const ab = [...times(m, 0, 256), ...times(m, 512, 768)];
  const ba = [...times(m, 256, 0), ...times(m, 768, 512)];
  ok(ab.some((v, i) => v !== ba[i]) && ab.slice(256).some((v, i) => v !== ba[256 + i]));

  const rowT = readProbe(Float32Array.from(ab));
  deepEqual(rowT.support, {
    emulated: false,
    loadRowMajor: "coopLoadT",
    storeRowMajor: "coopStoreT",
  });
  const rowPlain = readProbe(Float32Array.from(ba));
  equal(rowPlain.support?.loadRowMajor, "coopLoad");
  equal(rowPlain.support?.storeRowMajor, "coopStore");
  // One subgroup right and the other not (e.g. invocations 32..63 not one subgroup), or nothing written.
  for (const got of [[...ab.slice(0, 256), ...ba.slice(256)], new Array(512).fill(0)]) {
    const probe = readProbe(Float32Array.from(got));
    equal(probe.support, undefined);
    ok(/wrong product/.test(probe.reason), probe.reason);
  }
});

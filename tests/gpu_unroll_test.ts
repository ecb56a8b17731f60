import { deepEqual, equal, match, throws } from "node:assert/strict";
import { UnsupportedError } from "../src/errors.ts";
import { specialiseOverrides, unrollLoops } from "../src/gpu/unroll.ts";

Deno.test("unroll: nested marked loops become constant-index copies; unmarked loops stay", () => {
  const code = [
    "const ROWS: u32 = 2u;",
    "fn f() {",
    "  // @unroll",
    "  for (var i = 0u; i < ROWS; i++) {",
    "    // @unroll",
    "    for (var j = 0u; j < 3u; j++) { acc[i][j] += w[j] * x[i]; }",
    "  }",
    "  for (var k = 0u; k < n; k++) { total += acc[k]; }",
    "}",
  ].join("\n");
  const out = unrollLoops(code);
  const uses = out.match(/acc\[\d+u\]\[\d+u\] \+= w\[\d+u\] \* x\[\d+u\]/g) ?? [];
  deepEqual(uses, [
    "acc[0u][0u] += w[0u] * x[0u]",
    "acc[0u][1u] += w[1u] * x[0u]",
    "acc[0u][2u] += w[2u] * x[0u]",
    "acc[1u][0u] += w[0u] * x[1u]",
    "acc[1u][1u] += w[1u] * x[1u]",
    "acc[1u][2u] += w[2u] * x[1u]",
  ]);
  match(out, /for \(var k = 0u; k < n; k\+\+\)/);
  equal(out.includes("@unroll"), false);
  // Braces stay balanced, and identifiers that merely contain the loop variable are untouched.
  const twice = unrollLoops("// @unroll\nfor (var i = 0u; i < 2u; i++) { let idx = i; f(idx, vi); }");
  equal(twice, "{ let idx = 0u; f(idx, vi); }\n{ let idx = 1u; f(idx, vi); }");
});

Deno.test("unroll: a marker on something else or a non-constant bound is a one-line error", () => {
  throws(() => unrollLoops("// @unroll\nfor (var i = 1u; i < 4u; i++) { }"), UnsupportedError);
  throws(() => unrollLoops("// @unroll\nfor (var i = 0u; i < n; i++) { }"), UnsupportedError);
  throws(() => unrollLoops("// @unroll\nfor (var i = 0u; i < 4u; i++) { "), UnsupportedError);
});

Deno.test("unroll: a conditional marker unrolls when its const holds and otherwise leaves the loop", () => {
  const loop = "  // @unroll if fast\n  for (var k = 0u; k < STEPS; k++) { s += w[k]; }\n";
  const source = (fast: string) => `const STEPS: u32 = 2u;\nconst fast: bool = ${fast};\nfn f() {\n${loop}}`;
  const on = unrollLoops(source("true"));
  match(on, /\{ s \+= w\[0u\]; \}\n\{ s \+= w\[1u\]; \}/);
  equal(on.includes("for ("), false);
  const off = unrollLoops(source("false"));
  equal(
    off,
    "const STEPS: u32 = 2u;\nconst fast: bool = false;\nfn f() {\n  for (var k = 0u; k < STEPS; k++) { s += w[k]; }\n}",
  );
  // Integer conditions (nonzero holds), and the specialised override form.
  match(unrollLoops(`const fast: u32 = 1u;\n${loop.replace("STEPS", "2u")}`), /w\[1u\]/);
  const { code } = specialiseOverrides(`override fast: bool = false;\n${loop.replace("STEPS", "3u")}`, {
    fast: 1,
  });
  match(unrollLoops(code), /w\[2u\]/);
  throws(
    () => unrollLoops(loop.replace("STEPS", "2u")),
    /the condition fast is not a bool or integer constant/,
  );
});

Deno.test("specialise: given overrides become consts of their type, the others consts of their defaults", () => {
  const code = [
    "override rows: u32 = 4u;",
    "override scale: f32 = 0.125;",
    "override eps: f32;",
    "override signed: i32 = -1i;",
    "override flag: bool = false;",
    "override untouched: u32 = 7u;",
    "override derived: u32 = untouched * 2u;",
  ].join("\n");
  const { code: out, overrides } = specialiseOverrides(code, {
    rows: 8,
    scale: 1,
    eps: 1e-6,
    signed: -3,
    flag: 1,
    elsewhere: 2,
  });
  equal(
    out,
    [
      "const rows: u32 = 8u;",
      "const scale: f32 = 1.0;",
      "const eps: f32 = 0.000001;",
      "const signed: i32 = -3i;",
      "const flag: bool = true;",
      "const untouched: u32 = 7u;",
      "const derived: u32 = untouched * 2u;",
    ].join("\n"),
  );
  deepEqual(overrides, { elsewhere: 2 });
});

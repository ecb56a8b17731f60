import { equal, match, ok } from "node:assert/strict";
import { runCli } from "./cli_process.ts";

Deno.test("cli: demo makes its synthetic model once, generates, and compares the full cache with WG-KV", async () => {
  const cache = await Deno.makeTempDir({ prefix: "wgkv_demo_" });
  try {
    const first = await runCli(["demo", "-n", "6"], { WGKV_CACHE: cache });
    equal(first.code, 0, first.stderr);
    match(first.stderr, /demo: writing a synthetic tiny Llama \(f16, seed 1\)/);
    match(first.stderr, /RANDOM weights/);
    ok(first.stdout.startsWith("Once upon a time, in a small village by the sea,"), first.stdout);
    match(first.stderr, /^prefill: \d+ tokens in [\d.]+ s \([\d.]+ tok\/s\); decode: 6 tokens/m);
    // The comparison table: the same prompt under both caches, WG-KV holding less than the full cache.
    const row = (kind: string) => {
      const m = new RegExp(
        `^${kind}\\s+(\\d+)\\s+[\\d.]+\\s+[\\d.]+\\s+([\\d.]+) (KiB|MiB)\\s+([\\d.]+) (KiB|MiB)\\s+([\\d.]+)%$`,
        "m",
      ).exec(first.stderr);
      ok(m, `no ${kind} row in:\n${first.stderr}`);
      const bytes = (v: string, unit: string) => Number(v) * (unit === "MiB" ? 1024 * 1024 : 1024);
      return {
        prompt: Number(m[1]),
        used: bytes(m[2], m[3]),
        full: bytes(m[4], m[5]),
        admitted: Number(m[6]),
      };
    };
    const full = row("full");
    const wgkv = row("wgkv");
    equal(wgkv.prompt, full.prompt);
    equal(full.used, full.full);
    equal(full.admitted, 100);
    ok(wgkv.used < full.used, `WG-KV holds ${wgkv.used} bytes, the full cache ${full.used}`);
    ok(wgkv.admitted > 0 && wgkv.admitted < 100, `admitted ${wgkv.admitted}%`);
    match(first.stderr, /the speed-ups grow with the context/);

    // A second run finds the model in the cache and, greedy, writes the same text.
    const again = await runCli(["demo", "-n", "6", "--no-wgkv"], { WGKV_CACHE: cache });
    equal(again.code, 0, again.stderr);
    ok(!again.stderr.includes("writing a synthetic"), again.stderr);
    equal(again.stdout, first.stdout);
  } finally {
    await Deno.remove(cache, { recursive: true });
  }
});

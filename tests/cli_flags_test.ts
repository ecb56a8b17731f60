import { deepEqual, equal, match, ok, throws } from "node:assert/strict";
import { BadFlagError } from "../src/errors.ts";
import { type FlagSpec, parseFlags } from "../src/cli/flags.ts";
import { generationOptions, kvPolicyFromFlags } from "../src/cli/run.ts";
import { runCli } from "./cli_process.ts";
import { fixture, fixtureTest } from "./fixtures.ts";

const SPEC: Record<string, FlagSpec> = {
  "n-predict": { type: "string", short: "n", help: "" },
  temp: { type: "string", help: "" },
  stop: { type: "string", multiple: true, help: "" },
  json: { type: "boolean", help: "" },
};

Deno.test("cli flags: a negative number after a flag that takes a value is its value", () => {
  const { values, positionals } = parseFlags(
    "run",
    ["-n", "-1", "--temp", "-0.5", "--stop", "-3", "x"],
    SPEC,
  );
  equal(values["n-predict"], "-1");
  equal(values.temp, "-0.5");
  equal((values.stop as string[]).join(","), "-3");
  equal(positionals.join(","), "x");
  // After a boolean flag, or after "--", nothing is joined.
  throws(() => parseFlags("run", ["--json", "-1"], SPEC), BadFlagError);
  equal(parseFlags("run", ["--", "-n", "-1"], SPEC).positionals.join(","), "-n,-1");
  // A value that only starts like a number still reads as a flag, with the usual hint.
  throws(
    () => parseFlags("run", ["-n", "-1x"], SPEC),
    (e: Error) => e instanceof BadFlagError && /write -n=VALUE|-1x/.test(e.message),
  );
});

Deno.test("cli flags: -n -1 generates without a limit (as in llama.cpp); other negatives are refused", () => {
  const opts = (args: string[]) => generationOptions(parseFlags("run", args, SPEC).values);
  equal(opts(["-n", "-1"]).maxTokens, Infinity);
  equal(opts(["-n", "0"]).maxTokens, 0);
  equal(opts([]).maxTokens, 128);
  throws(() => opts(["-n", "-2"]), /--n-predict: -2 is not valid \(want a count ≥ 0, or -1 for no limit\)/);
  throws(() => opts(["--temp", "-1"]), /--temp: -1 is below 0/);
});

/** The KV policy flags of `run`, `chat` and `batch`. */
const KV_SPEC: Record<string, FlagSpec> = {
  kv: { type: "string", help: "" },
  gate: { type: "string", help: "" },
  window: { type: "string", help: "" },
  threshold: { type: "string", help: "" },
};

Deno.test("cli flags: --threshold takes [0, 1] (1 admits nothing); above 1 is refused", () => {
  const policy = (threshold: string) =>
    kvPolicyFromFlags(
      parseFlags("run", ["--kv", "wgkv", "--gate", "g.gguf", "--threshold", threshold], KV_SPEC).values,
    );
  deepEqual(policy("1"), { kind: "wgkv", gate: "g.gguf", window: undefined, threshold: 1 });
  deepEqual(policy("0"), { kind: "wgkv", gate: "g.gguf", window: undefined, threshold: 0 });
  throws(
    () => policy("1.5"),
    (e: Error) => e instanceof BadFlagError && /--threshold: 1\.5 is above 1/.test(e.message),
  );
  throws(() => policy("-0.1"), /--threshold: -0\.1 is below 0/);
});

fixtureTest(
  "cli flags: gate init and run take --threshold 1 (nothing admitted); --threshold 1.5 is a one-line error",
  ["stories260K.gguf"],
  async () => {
    const dir = await Deno.makeTempDir();
    try {
      const model = fixture("stories260K.gguf"), gate = `${dir}/gate.gguf`;
      const init = ["gate", "init", "-m", model, "-o", gate, "--window", "8"];
      const made = await runCli([...init, "--threshold", "1"]);
      equal(made.code, 0, made.stderr);
      const info = await runCli(["gate", "info", gate, "--json"]);
      equal(info.code, 0, info.stderr);
      equal(JSON.parse(info.stdout).threshold, 1);
      // The gate's threshold (1), then the flag's: tokens leave the 8-token window, and none is kept.
      const prompt = "Once upon a time, there was a little girl named Lily. She";
      const run = ["run", "-m", model, "-p", prompt, ..."-n 4 --temp 0 --json -b 8 --kv wgkv".split(" ")];
      for (const args of [[...run, "--gate", gate], [...run, "--gate", gate, "--threshold", "1"]]) {
        const r = await runCli(args);
        equal(r.code, 0, r.stderr);
        const kv = JSON.parse(r.stdout).kv;
        equal(kv.policy, "wgkv");
        ok(kv.tokens > 8, `tokens ${kv.tokens}`);
        ok(kv.admitted_fraction.every((f: number) => f === 0), `admitted ${kv.admitted_fraction}`);
        ok(kv.global_tokens.every((g: number) => g === 0), `global tokens ${kv.global_tokens}`);
      }
      for (const args of [[...run, "--gate", gate, "--threshold", "1.5"], [...init, "--threshold", "1.5"]]) {
        const r = await runCli(args);
        equal(r.code, 2, r.stderr);
        const lines = r.stderr.trim().split("\n");
        equal(lines.length, 1, `expected one line, got:\n${r.stderr}`);
        match(lines[0], /--threshold: 1\.5 is above 1/);
        ok(!/\bat \S+:\d+:\d+/.test(r.stderr), "no stack trace");
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

import { equal, throws } from "node:assert/strict";
import { BadFlagError } from "../src/errors.ts";
import { type FlagSpec, parseFlags } from "../src/cli/flags.ts";
import { generationOptions } from "../src/cli/run.ts";

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

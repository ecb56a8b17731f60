/**
 * Command-line flags of the benchmark scripts: `--help` prints the script's module comment (its usage), and
 * a flag parseArgs rejects ends the script with one line on stderr and exit status 2, not a stack trace; so
 * does a flag value the GPU or the model cannot take (a `WgkvError` thrown later, e.g. a decode attention
 * workgroup that does not fit the GPU's workgroup memory), with that error's exit status.
 *
 * @module
 */

import { fileURLToPath } from "node:url";
import { WgkvError } from "../src/errors.ts";

/**
 * Runs `parse` (a node:util parseArgs call whose options include a boolean `help`) for the script at
 * `scriptUrl` (its `import.meta.url`): prints the usage and exits on `--help`, prints the error and exits 2
 * on a bad flag, and returns the parsed flags otherwise.
 */
export function benchFlags<R extends { values: { help?: boolean } }>(scriptUrl: string, parse: () => R): R {
  const name = scriptUrl.substring(scriptUrl.lastIndexOf("/") + 1);
  // A WgkvError escaping the script's top level (a rejected top-level await): one line, its exit status.
  globalThis.addEventListener("unhandledrejection", (event) => {
    if (!(event.reason instanceof WgkvError)) return;
    event.preventDefault();
    console.error(`${name.replace(/\.ts$/, "")}: error: ${event.reason.message.replaceAll("\n", " ")}`);
    Deno.exit(event.reason.exitCode);
  });
  let parsed: R;
  try {
    parsed = parse();
  } catch (e) {
    console.error(`${name}: ${(e as Error).message.split("\n")[0]} (--help lists the flags)`);
    Deno.exit(2);
  }
  if (parsed.values.help) {
    console.log(moduleComment(Deno.readTextFileSync(fileURLToPath(scriptUrl))));
    Deno.exit(0);
  }
  return parsed;
}

/** The text of the first doc comment of `source`, without its `*` margins and the `@module` tag. */
function moduleComment(source: string): string {
  const match = source.match(/\/\*\*([\s\S]*?)\*\//);
  if (!match) return "";
  return match[1].split("\n").map((line) => line.replace(/^\s*\* ?/, "")).filter((line) =>
    line.trim() !== "@module"
  ).join("\n").trim();
}

/** Ends a benchmark script over a bad flag value: `message` (naming the flag) on stderr, exit status 2. */
export function flagError(message: string): never {
  console.error(`bench: ${message}`);
  Deno.exit(2);
}

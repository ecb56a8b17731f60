/**
 * Locates third-party test fixtures (never committed): `$WGKV_FIXTURES`, else `../shared/fixtures`
 * beside the checkout. A test whose fixture is missing is skipped locally and fails when `CI=true`.
 */

import { existsSync } from "node:fs";

/** Folder holding the fixtures. */
export const FIXTURES: string = Deno.env.get("WGKV_FIXTURES") ??
  new URL("../../shared/fixtures", import.meta.url).pathname;

/** Absolute path of fixture `rel` (e.g. "stories260K.gguf"). */
export function fixture(rel: string): string {
  return `${FIXTURES}/${rel}`;
}

const inCI = Deno.env.get("CI") === "true";

/**
 * Registers a test that needs the given fixtures. When one is missing the test is ignored locally,
 * and in CI it runs and fails naming the missing file.
 */
export function fixtureTest(
  name: string,
  needs: string[],
  fn: (t: Deno.TestContext) => Promise<void> | void,
): void {
  const missing = needs.filter((rel) => !existsSync(fixture(rel)));
  if (missing.length === 0) {
    Deno.test(name, fn);
  } else if (inCI) {
    Deno.test(name, () => {
      throw new Error(`missing fixture(s) in CI: ${missing.map(fixture).join(", ")}`);
    });
  } else {
    Deno.test({ name: `${name} (fixture missing: ${missing.join(", ")})`, ignore: true, fn });
  }
}

/**
 * The `wgkv` command line. Run `deno run -A cli.ts --help`, or compile it with `deno task compile`.
 *
 * @module
 */

import { main } from "./src/cli/main.ts";

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}

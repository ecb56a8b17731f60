/**
 * Ctrl-C for the commands that generate: the first stops the reply in progress (generation ends between
 * tokens, with stop reason "abort"), the next one, or one while nothing is being generated, ends the
 * process with status 130 as an uncaught Ctrl-C would.
 *
 * @module
 */

/** Stops generation on Ctrl-C; see the module documentation. */
export class Interrupt {
  #controller: AbortController | undefined;
  #listening = false;
  readonly #onSignal = () => {
    if (this.#controller && !this.#controller.signal.aborted) {
      console.error(`\n(stopping ${this.what}; Ctrl-C again quits)`);
      this.#controller.abort();
      return;
    }
    Deno.exit(130);
  };

  /**
   * Listens for Ctrl-C until {@link close} (where the platform and permissions allow; else it stays
   * default); `what` names the work a first Ctrl-C stops, for its message.
   */
  constructor(readonly what: string = "the reply") {
    try {
      Deno.addSignalListener("SIGINT", this.#onSignal);
      this.#listening = true;
    } catch {
      // No signal support here: Ctrl-C keeps ending the process at once.
    }
  }

  /** A signal for one reply: Ctrl-C aborts it until the next call. */
  reply(): AbortSignal {
    this.#controller = new AbortController();
    return this.#controller.signal;
  }

  /** Between replies: Ctrl-C ends the process again. */
  idle(): void {
    this.#controller = undefined;
  }

  /** Stops listening. */
  close(): void {
    if (this.#listening) Deno.removeSignalListener("SIGINT", this.#onSignal);
    this.#listening = false;
  }
}

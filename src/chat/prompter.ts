/**
 * A chat's turns as tokens: each turn's prompt goes on from the session's transcript exactly as it was
 * generated (the replies' own tokens, not those of their re-rendered text), followed by the tokens of the
 * rendered text after it, so that only the new message and the template's glue are prefilled.
 *
 * @module
 */

import { type ChatMessage, type ChatOptions, renderChat, renderContinuation } from "./template.ts";
import type { GenerationStats } from "../engine/session.ts";
import { type Tokenizer, TokenType } from "../tokenizer/mod.ts";

/** The prompt of one chat turn. */
export interface ChatPrompt {
  /** The rendered conversation, generation prompt added. */
  text: string;
  /** Its tokens, BOS included. */
  ids: number[];
  /**
   * How many of `ids` come from the session's transcript as it was generated (the rest encode the rendered
   * text after it); 0 when the whole rendering was encoded.
   */
  carried: number;
}

/** A reply as the session holds it, to go on from in the next turn. */
interface LastReply {
  /** The prompt it answered. */
  prompt: ChatPrompt;
  /** The session's transcript after it: the prompt's tokens, then the generated ones. */
  transcript: number[];
  /** The reply's text as generated (not trimmed; without a stop string). */
  text: string;
  /** Why it ended. */
  stopReason: GenerationStats["stopReason"];
}

/**
 * Makes the prompt tokens of chat turns so that a turn goes on from the session's transcript: after a reply,
 * the next prompt is the transcript exactly as generated (the reply's tokens, and the token that ended it
 * when the template ends its turn with that token's text) followed by the tokens of the rendered text after
 * the reply (the template's end of the turn, unless the model wrote it, the new message and the generation
 * prompt). Re-encoding the rendered reply would tokenize it differently from how it was generated, and the
 * cache could not be reused past its start. When the template renders the earlier conversation
 * differently once it goes on, the whole rendering is encoded instead.
 */
export class ChatPrompter {
  #last: LastReply | undefined;

  /**
   * A prompter for a model with GGUF metadata `meta` (its chat template) and `tokenizer`, rendering with
   * `options` (keep them the same for the whole chat).
   */
  constructor(
    readonly meta: Readonly<Record<string, unknown>>,
    readonly tokenizer: Tokenizer,
    readonly options: Omit<ChatOptions, "addGenerationPrompt"> = {},
  ) {}

  /**
   * The prompt of the turn that answers `messages` (the last one the user's new message), given the session's
   * `transcript`: that transcript followed by the new tokens when it holds the last {@link replied} reply and
   * `messages` go on from it (that reply, then new messages), else the whole rendering encoded.
   */
  prompt(messages: readonly ChatMessage[], transcript: readonly number[]): ChatPrompt {
    const last = this.#last;
    if (last !== undefined && sameTokens(transcript, last.transcript)) {
      const continued = this.#continue(messages, last);
      if (continued !== undefined) return continued;
    }
    const rendered = renderChat(this.meta, messages, { ...this.options, addGenerationPrompt: true });
    const ids = this.tokenizer.encode(rendered.text, { addBos: !rendered.startsWithBos, parseSpecial: true });
    return { text: rendered.text, ids, carried: 0 };
  }

  /**
   * Records the reply to `prompt`: the session's `transcript` after it, its `text` as generated (before
   * trimming) and why it stopped. The next {@link prompt} goes on from it.
   */
  replied(
    prompt: ChatPrompt,
    transcript: readonly number[],
    text: string,
    stopReason: GenerationStats["stopReason"],
  ): void {
    const held = sameTokens(transcript.slice(0, prompt.ids.length), prompt.ids);
    this.#last = held ? { prompt, transcript: [...transcript], text, stopReason } : undefined;
  }

  /** Forgets the last reply (the conversation starts over). */
  forget(): void {
    this.#last = undefined;
  }

  #continue(messages: readonly ChatMessage[], last: LastReply): ChatPrompt | undefined {
    const replyIndex = messages.length - 2;
    const cont = renderContinuation(this.meta, messages, replyIndex, last.prompt.text, this.options);
    if (cont === undefined) return undefined;
    const promptLength = last.prompt.ids.length;
    const generated = last.transcript.slice(promptLength);
    let carried = last.transcript.length;
    let closing = cont.closing;
    if (last.stopReason === "eos" && generated.length > 0) {
      // The model ended its turn: its end token stands for the template's end-of-turn text, unless the
      // template ends turns otherwise (then that token goes and the template's text follows the reply).
      const end = this.tokenizer.vocab.tokens[generated[generated.length - 1]] ?? "";
      const rendered = closing.trimStart();
      if (end !== "" && rendered.startsWith(end)) closing = rendered.slice(end.length);
      else carried--;
    } else if (last.stopReason === "stop") {
      // The tokens that ran into the stop string go; the part of the reply they held is encoded again.
      const kept = this.#tokensWithin(generated, last.transcript[promptLength - 1], last.text);
      carried = promptLength + kept.count;
      const reply = last.text.trimEnd();
      const rest = kept.count === 0 ? cont.lead + messages[replyIndex].content : reply.slice(kept.length);
      closing = rest + closing;
    }
    const head = last.transcript.slice(0, carried);
    const ids = head.concat(this.#encodeAfter(head[head.length - 1], closing + cont.next));
    return { text: cont.text, ids, carried };
  }

  /**
   * The tokens of `text` as it goes on after token `previous`, without BOS. After a text token, a
   * SentencePiece vocabulary's space prefix stands for a space `text` begins with (encoding is otherwise as
   * for a text that follows a control token, as in the whole rendering).
   */
  #encodeAfter(previous: number | undefined, text: string): number[] {
    const vocab = this.tokenizer.vocab;
    const afterText = previous !== undefined && !isSpecial(this.tokenizer, previous);
    if (afterText && vocab.model === "llama" && vocab.addSpacePrefix && text.startsWith(" ")) {
      text = text.slice(1);
    }
    return this.tokenizer.encode(text, { addBos: false, parseSpecial: true });
  }

  /**
   * How many of the `generated` tokens (which followed token `previous`) lie within the reply `text` (each
   * completing some of its characters), and how many characters of `text` they make.
   */
  #tokensWithin(generated: number[], previous: number, text: string): { count: number; length: number } {
    const decoder = this.tokenizer.streamDecoder({ previous });
    let decoded = "";
    let count = 0;
    let length = 0;
    for (let i = 0; i < generated.length; i++) {
      const piece = decoder.push(generated[i]);
      decoded += piece;
      if (!text.startsWith(decoded)) break;
      if (piece !== "") {
        count = i + 1;
        length = decoded.length;
      }
    }
    return { count, length };
  }
}

function isSpecial(tokenizer: Tokenizer, id: number): boolean {
  const type = tokenizer.vocab.types[id];
  return type === TokenType.control || type === TokenType.userDefined || type === TokenType.unknown;
}

function sameTokens(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((t, i) => t === b[i]);
}

/**
 * A restricted Python pickle interpreter: the opcodes (protocols 2 to 4) that `torch.save` emits for a
 * state dict, and nothing that could run code. Globals are never imported: a GLOBAL opcode yields a
 * {@link PyGlobal} naming it, and REDUCE hands the call to a caller-supplied `reduce` hook that knows the
 * few callables a checkpoint may use (tensor rebuilders, `collections.OrderedDict`); persistent ids
 * (BINPERSID, torch's storage references) go to a `persistentLoad` hook. Any other opcode, or a global the
 * hook refuses, is a {@link BadFileError} naming the file and the opcode.
 *
 * Python values map to: int → number (bigint beyond 2^53), float → number, str → string, bytes →
 * Uint8Array, None → null, bool → boolean, tuple → {@link PyTuple}, list → array, dict → Map.
 *
 * @module
 */

import { BadFileError } from "../errors.ts";

/** A Python tuple. */
export class PyTuple {
  /** Builds a tuple of `items`. */
  constructor(readonly items: readonly unknown[]) {}
}

/** A reference to a Python global (`module.name`), never resolved to code. */
export class PyGlobal {
  /** Builds a reference to `module.name`. */
  constructor(readonly module: string, readonly name: string) {}
  /** `module.name`. */
  get qualifiedName(): string {
    return `${this.module}.${this.name}`;
  }
}

/** Hooks that give meaning to REDUCE and BINPERSID. */
export interface UnpickleHooks {
  /** Result of calling global `callable` with `args`; throw a BadFileError for a callable you do not allow. */
  reduce(callable: PyGlobal, args: readonly unknown[]): unknown;
  /** Object for persistent id `pid`. */
  persistentLoad(pid: unknown): unknown;
}

const decoder = new TextDecoder("utf-8", { fatal: true });

/**
 * Runs the pickle `data` (from `where`, used in errors) and returns the object it builds. Only the subset
 * of opcodes a torch state dict uses is accepted.
 */
export function unpickle(data: Uint8Array, where: string, hooks: UnpickleHooks): unknown {
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  let stack: unknown[] = [];
  const marks: unknown[][] = [];
  const memo = new Map<number, unknown>();
  let p = 0;
  const bad = (what: string) => new BadFileError(`${where}: pickle ${what} at byte ${p}`);
  const need = (n: number) => {
    if (p + n > data.length) throw bad("ends early");
  };
  const u8 = () => (need(1), data[p++]);
  const u16 = () => (need(2), p += 2, view.getUint16(p - 2, true));
  const u32 = () => (need(4), p += 4, view.getUint32(p - 4, true));
  const i32 = () => (need(4), p += 4, view.getInt32(p - 4, true));
  const u64 = () => {
    need(8);
    const v = view.getBigUint64(p, true);
    p += 8;
    if (v > BigInt(data.length)) throw bad(`length ${v} exceeds the data`);
    return Number(v);
  };
  const bytes = (n: number) => (need(n), p += n, data.subarray(p - n, p));
  const text = (n: number) => {
    try {
      return decoder.decode(bytes(n));
    } catch {
      throw bad("string is not valid UTF-8");
    }
  };
  const line = () => {
    const end = data.indexOf(0x0a, p);
    if (end < 0) throw bad("line has no end");
    const s = new TextDecoder().decode(data.subarray(p, end));
    p = end + 1;
    return s;
  };
  const pop = () => {
    if (stack.length === 0) throw bad("pops an empty stack");
    return stack.pop();
  };
  const top = () => {
    if (stack.length === 0) throw bad("reads an empty stack");
    return stack[stack.length - 1];
  };
  const popMark = () => {
    const items = stack;
    const previous = marks.pop();
    if (previous === undefined) throw bad("has no MARK to pop to");
    stack = previous;
    return items;
  };
  const setItems = (dict: unknown, items: unknown[]) => {
    if (!(dict instanceof Map)) throw bad("SETITEM(S) on something that is not a dict");
    if (items.length % 2 !== 0) throw bad("SETITEMS with an odd number of items");
    for (let i = 0; i < items.length; i += 2) dict.set(items[i], items[i + 1]);
  };
  const append = (list: unknown, items: unknown[]) => {
    if (!Array.isArray(list)) throw bad("APPEND(S) on something that is not a list");
    list.push(...items);
  };
  const memoGet = (key: number) => {
    if (!memo.has(key)) throw bad(`reads memo ${key} that was never stored`);
    return memo.get(key);
  };
  const long = (raw: Uint8Array): number | bigint => {
    // Little-endian two's complement of any length.
    let v = 0n;
    for (let i = raw.length - 1; i >= 0; i--) v = (v << 8n) | BigInt(raw[i]);
    if (raw.length > 0 && raw[raw.length - 1] & 0x80) v -= 1n << BigInt(8 * raw.length);
    return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
  };

  while (true) {
    if (p >= data.length) throw bad("ends without STOP");
    const at = p;
    const op = data[p++];
    switch (op) {
      case 0x80: // PROTO
        if (u8() > 5) throw bad("protocol is newer than 5");
        break;
      case 0x95: // FRAME (protocol 4): a length hint only
        u64();
        break;
      case 0x2e: // STOP
        if (stack.length !== 1 || marks.length !== 0) throw bad("STOP with an unbalanced stack");
        return stack[0];
      case 0x28: // MARK
        marks.push(stack);
        stack = [];
        break;
      case 0x7d: // EMPTY_DICT
        stack.push(new Map());
        break;
      case 0x5d: // EMPTY_LIST
        stack.push([]);
        break;
      case 0x29: // EMPTY_TUPLE
        stack.push(new PyTuple([]));
        break;
      case 0x64: { // DICT
        const items = popMark();
        const dict = new Map();
        setItems(dict, items);
        stack.push(dict);
        break;
      }
      case 0x6c: { // LIST (popMark replaces `stack`, so pop before reading it)
        const items = popMark();
        stack.push(items);
        break;
      }
      case 0x74: { // TUPLE
        const items = popMark();
        stack.push(new PyTuple(items));
        break;
      }
      case 0x85: // TUPLE1
        stack.push(new PyTuple([pop()]));
        break;
      case 0x86: { // TUPLE2
        const b = pop(), a = pop();
        stack.push(new PyTuple([a, b]));
        break;
      }
      case 0x87: { // TUPLE3
        const c = pop(), b = pop(), a = pop();
        stack.push(new PyTuple([a, b, c]));
        break;
      }
      case 0x73: { // SETITEM
        const value = pop(), key = pop();
        setItems(top(), [key, value]);
        break;
      }
      case 0x75: { // SETITEMS
        const items = popMark();
        setItems(top(), items);
        break;
      }
      case 0x61: { // APPEND
        const value = pop();
        append(top(), [value]);
        break;
      }
      case 0x65: { // APPENDS
        const items = popMark();
        append(top(), items);
        break;
      }
      case 0x58: // BINUNICODE
        stack.push(text(u32()));
        break;
      case 0x8c: // SHORT_BINUNICODE
        stack.push(text(u8()));
        break;
      case 0x8d: // BINUNICODE8
        stack.push(text(u64()));
        break;
      case 0x55: // SHORT_BINSTRING
        stack.push(text(u8()));
        break;
      case 0x54: // BINSTRING
        stack.push(text(u32()));
        break;
      case 0x43: // SHORT_BINBYTES
        stack.push(bytes(u8()).slice());
        break;
      case 0x42: // BINBYTES
        stack.push(bytes(u32()).slice());
        break;
      case 0x4b: // BININT1
        stack.push(u8());
        break;
      case 0x4d: // BININT2
        stack.push(u16());
        break;
      case 0x4a: // BININT
        stack.push(i32());
        break;
      case 0x8a: // LONG1
        stack.push(long(bytes(u8())));
        break;
      case 0x47: // BINFLOAT (big-endian double)
        need(8);
        stack.push(view.getFloat64(p, false));
        p += 8;
        break;
      case 0x4e: // NONE
        stack.push(null);
        break;
      case 0x88: // NEWTRUE
        stack.push(true);
        break;
      case 0x89: // NEWFALSE
        stack.push(false);
        break;
      case 0x63: { // GLOBAL "module\nname\n"
        const module = line();
        stack.push(new PyGlobal(module, line()));
        break;
      }
      case 0x93: { // STACK_GLOBAL
        const name = pop(), module = pop();
        if (typeof module !== "string" || typeof name !== "string") throw bad("STACK_GLOBAL without strings");
        stack.push(new PyGlobal(module, name));
        break;
      }
      case 0x52: { // REDUCE
        const args = pop();
        const callable = pop();
        if (!(callable instanceof PyGlobal) || !(args instanceof PyTuple)) {
          throw bad("REDUCE of a non-global");
        }
        stack.push(hooks.reduce(callable, args.items));
        break;
      }
      case 0x62: // BUILD: the state of objects we build (tensors, dicts) carries nothing we use
        pop();
        top();
        break;
      case 0x51: // BINPERSID
        stack.push(hooks.persistentLoad(pop()));
        break;
      case 0x71: // BINPUT
        memo.set(u8(), top());
        break;
      case 0x72: // LONG_BINPUT
        memo.set(u32(), top());
        break;
      case 0x94: // MEMOIZE
        memo.set(memo.size, top());
        break;
      case 0x68: // BINGET
        stack.push(memoGet(u8()));
        break;
      case 0x6a: // LONG_BINGET
        stack.push(memoGet(u32()));
        break;
      default:
        p = at;
        throw bad(
          `opcode 0x${op.toString(16).padStart(2, "0")} ('${String.fromCharCode(op)}') is not supported`,
        );
    }
  }
}

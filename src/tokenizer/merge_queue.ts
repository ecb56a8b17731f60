/**
 * A binary heap of candidate merges of two adjacent symbols, used by both SentencePiece and BPE. The best
 * candidate has the smallest `cost` and, on a tie, the leftmost left symbol. Entries are never removed
 * early: the merge loops check that both symbols are still as they were when the entry was pushed.
 *
 * @module
 */

/** A priority queue of (left symbol, right symbol, cost, merged length) held in parallel typed arrays. */
export class MergeQueue {
  #cost = new Float64Array(64);
  #left = new Int32Array(64);
  #right = new Int32Array(64);
  #length = new Int32Array(64);
  #size = 0;

  /** Number of queued candidates. */
  get size(): number {
    return this.#size;
  }

  /** Left symbol of the best candidate (valid only when size > 0). */
  get left(): number {
    return this.#left[0];
  }

  /** Right symbol of the best candidate. */
  get right(): number {
    return this.#right[0];
  }

  /** Merged length the best candidate had when pushed (to detect stale entries). */
  get length(): number {
    return this.#length[0];
  }

  /** Adds a candidate merge. */
  push(left: number, right: number, cost: number, length: number): void {
    if (this.#size === this.#cost.length) this.#grow();
    let i = this.#size++;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!this.#before(cost, left, this.#cost[parent], this.#left[parent])) break;
      this.#move(parent, i);
      i = parent;
    }
    this.#set(i, cost, left, right, length);
  }

  /** Removes the best candidate (read it first through left/right/length). */
  pop(): void {
    const last = --this.#size;
    if (last === 0) return;
    const cost = this.#cost[last],
      left = this.#left[last],
      right = this.#right[last],
      length = this.#length[last];
    let i = 0;
    for (;;) {
      let child = 2 * i + 1;
      if (child >= last) break;
      if (
        child + 1 < last &&
        this.#before(this.#cost[child + 1], this.#left[child + 1], this.#cost[child], this.#left[child])
      ) child++;
      if (!this.#before(this.#cost[child], this.#left[child], cost, left)) break;
      this.#move(child, i);
      i = child;
    }
    this.#set(i, cost, left, right, length);
  }

  #before(costA: number, leftA: number, costB: number, leftB: number): boolean {
    return costA < costB || (costA === costB && leftA < leftB);
  }

  #move(from: number, to: number): void {
    this.#cost[to] = this.#cost[from];
    this.#left[to] = this.#left[from];
    this.#right[to] = this.#right[from];
    this.#length[to] = this.#length[from];
  }

  #set(i: number, cost: number, left: number, right: number, length: number): void {
    this.#cost[i] = cost;
    this.#left[i] = left;
    this.#right[i] = right;
    this.#length[i] = length;
  }

  #grow(): void {
    const n = this.#cost.length * 2;
    const cost = new Float64Array(n), left = new Int32Array(n), right = new Int32Array(n);
    const length = new Int32Array(n);
    cost.set(this.#cost);
    left.set(this.#left);
    right.set(this.#right);
    length.set(this.#length);
    this.#cost = cost;
    this.#left = left;
    this.#right = right;
    this.#length = length;
  }
}

// Buffer#copy off the prototype (typed any in @types/node), called on any Uint8Array.
type CopyFn = (this: Uint8Array, target: Uint8Array, targetStart: number, sourceStart: number, sourceEnd: number) => number;
const bufferCopy = (Buffer.prototype as { copy: CopyFn }).copy;

/**
 * Copy src[start, end) to dst at `at`. Buffer#copy instead of
 * `dst.set(src.subarray(...))`: no view object per call, which matters on the
 * per-block write path.
 */
export function copyBytes(src: Uint8Array, dst: Uint8Array, at: number, start: number, end: number): void {
  bufferCopy.call(src, dst, at, start, end);
}

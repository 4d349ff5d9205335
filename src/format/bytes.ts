const bufferCopy = Buffer.prototype.copy;

/**
 * Copy src[start, end) to dst at `at`. Buffer#copy instead of
 * `dst.set(src.subarray(...))`: no view object per call, which matters on the
 * per-block write path.
 */
export function copyBytes(src: Uint8Array, dst: Uint8Array, at: number, start: number, end: number): void {
  bufferCopy.call(src, dst, at, start, end);
}

import { crc32cImplementation, setCrc32cAccelerator, type Crc32cAccelerator } from '../format/crc32c';

/**
 * Hardware CRC-32C (SSE4.2 / ARMv8 CRC instructions) from @node-rs/crc32 when it is
 * installed for this platform: about 3x the table version on 4 KiB blocks, and
 * checksums are the largest CPU cost of both the write path (WAL records) and the
 * read path (every record read is verified). format/crc32c.ts stays pure and gets
 * it handed in; the table version is the fallback.
 *
 * VBFS_CRC32C=js keeps the table version (to measure it, or to rule the native
 * module out).
 */
export function loadNativeCrc32c(env: NodeJS.ProcessEnv = process.env): Crc32cAccelerator | null {
  if (env['VBFS_CRC32C'] === 'js') return null;
  try {
    // A plain import would make a missing prebuilt binary fatal; it is optional.
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    return (require('@node-rs/crc32') as { crc32c: Crc32cAccelerator }).crc32c;
  } catch {
    return null;
  }
}

/**
 * Pick the implementation for this process: the hardware one if it loads and gives
 * the standard check value, else the table. Store.open calls it, so the library,
 * the CLI and the bench all get it; cheap to repeat (require caches the module).
 */
export function installCrc32c(env: NodeJS.ProcessEnv = process.env): 'native' | 'js' {
  if (!setCrc32cAccelerator(loadNativeCrc32c(env))) setCrc32cAccelerator(null);
  return crc32cImplementation();
}

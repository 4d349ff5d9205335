/**
 * The slice of the engine API the front ends use: the FUSE layer (fuse/) serves
 * these, the CLI (cli/store.ts) extends them. `Store` declares that it implements
 * MountableStore, so a change to the engine that breaks the front ends fails here,
 * at the engine, instead of in fuse/; tests may hand the front ends a fake.
 */
import type { Durability, VolumeInfo } from '../types';
import type { VolumeOpenOptions, VolumeStats } from './types';

export interface MountableVolume {
  readonly name: string;
  readonly size: number;
  readonly blockSize: number;
  readonly durability: Durability;
  read(offset: number, length: number): Promise<Buffer>;
  /** Fills `out` before the promise settles; keeps no reference to it after. */
  readInto(offset: number, out: Buffer): Promise<void>;
  /** Reads `data` only until the promise settles: the caller may reuse it after (FUSE hands in the kernel's buffer). */
  write(offset: number, data: Uint8Array): Promise<void>;
  /** Discard a range: it reads as zeros from now on (durable like a write). */
  trim(offset: number, length: number): Promise<void>;
  fsync(): Promise<void>;
  stats(): VolumeStats;
  close(): Promise<void>;
}

export interface MountableStore {
  listVolumes(): Promise<VolumeInfo[]>;
  openVolume(name: string, opts?: VolumeOpenOptions): Promise<MountableVolume>;
  close(): Promise<void>;
}

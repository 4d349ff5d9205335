export { Store } from './store/store';
export { Volume, DEFAULT_TUNABLES } from './store/volume';
export * from './store/types';
export { VbfsError, isVbfsError, type VbfsErrorCode } from './errors';
export type { Backend } from './backend/backend';
export { FileBackend } from './backend/file-backend';
export { MemoryBackend } from './backend/memory-backend';
export type { FileIO, FileHandle, OpenMode } from './io/file-io';
export { NodeFileIO } from './io/node-file-io';

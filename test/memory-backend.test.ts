import { MemoryBackend } from '../src/backend/memory-backend';
import { backendSuite } from './backend-suite';

backendSuite('MemoryBackend', async () => new MemoryBackend());

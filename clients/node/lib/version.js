// What this worker says it speaks, in one place: the hello sends both numbers
// (docs/PROTOCOL.md, section 7), and the User-Agent carries the version.

import { createRequire } from 'node:module';

/** The wire protocol this worker speaks; a server of another one refuses its hello. */
export const PROTOCOL = 5;

/** The worker's version: package.json's, which the Python tests hold to fetchq's own. */
export const VERSION = createRequire(import.meta.url)('../package.json').version;

/**
 * The streams of a Kubernetes exec or attach session (remotecommand), whichever wire protocol carries them: what a
 * reader of one of those protocols (ws-channels.ts, spdy.ts) reports, and what it is given.
 */

export type ExecStream = 'stdin' | 'stdout' | 'stderr' | 'error' | 'resize';

/** which streams each side sends: the client types and resizes, the container prints and says how it ended */
export const FROM_CLIENT: ReadonlySet<ExecStream> = new Set(['stdin', 'resize']);
export const FROM_SERVER: ReadonlySet<ExecStream> = new Set(['stdout', 'stderr', 'error']);

export interface ExecStreamEvents {
  /** bytes of one stream, in the order they were sent (decoded, where the protocol encodes them) */
  data(stream: ExecStream, bytes: Buffer): void;
  /** the reader could not go on (a decompression failed after the bytes had passed); nothing more is reported */
  failed(err: Error): void;
}

/** Reads both directions of one session; a copy of what passes, never what is relayed. Throws UnreadableStream. */
export interface ExecStreamReader {
  fromClient(bytes: Buffer): void;
  fromServer(bytes: Buffer): void;
  close(): void;
}

/** What passed is not the protocol the member said it speaks, or exceeds what a reader holds: it stops there. */
export class UnreadableStream extends Error {}

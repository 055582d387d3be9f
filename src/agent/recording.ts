import { randomBytes } from 'node:crypto';
import {
  closeSync,
  constants as fs,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  statSync,
  unlinkSync,
  write,
  close as closeFd,
  writeSync,
} from 'node:fs';
import { join } from 'node:path';
import { TextDecoder } from 'node:util';
import { AUDIT_ID_HEADER } from '../http/audit-id.ts';
import { rawStatus } from '../http/status.ts';
import type { Logger } from '../observe/log.ts';
import { UnreadableStream, type ExecStream, type ExecStreamReader } from './exec-streams.ts';
import type { RequestView, UpgradeTap } from './exchange.ts';
import { queryFlag, requestInfo } from './request-info.ts';
import { SpdyExecReader } from './spdy.ts';
import { WebSocketExecReader } from './ws-channels.ts';

/**
 * Exec and attach sessions on record (`--record-exec DIR`): for each, the agent writes what the session printed
 * (stdout and stderr; stdin with --record-stdin; terminal resizes) as an asciicast v2 file, which `asciinema play`
 * replays, with who ran what where in its header under "tower". It reads a copy of what the exchange relays, over
 * the WebSocket channel protocols or SPDY/3.1, whichever the member chose; it never alters nor delays the session.
 *
 * Files are `<UTC time>-<Audit-ID>.cast` (the ID only when it is a plain token, else random), created with O_EXCL
 * and mode 0600; nothing of a name comes from the peer otherwise. The header line is written first, padded, and
 * rewritten in place at the end with the end time, exit status and terminal size, so a file cut short (the agent
 * killed) still plays and says it has no end. Bytes that are not UTF-8 are shown as U+FFFD, as a terminal would;
 * a character split across frames is kept whole. Recordings are never deleted or rotated here: they are evidence;
 * once those in DIR reach --record-max-bytes, new sessions cannot be recorded. An upgrade the member refuses (RBAC,
 * no such pod, a protocol it does not speak, as when kubectl tries WebSocket first) leaves no file: no session
 * took place, and the kube-apiserver's audit log has the request.
 *
 * --record-failure closed (the default): a session that cannot be recorded does not happen: an exec or attach whose
 * recording cannot start is answered 403 here, before anything reaches the kube-apiserver; one whose recording
 * fails midway (disk full, the budget reached, a stream that cannot be read) is ended. open: it goes on unrecorded,
 * and the agent says so in its log.
 */

export type RecordFailure = 'open' | 'closed';
/** the header line's room to grow when it is rewritten at the end */
const HEADER_RESERVE_BYTES = 4096;
/** what may wait for the disk, per session and in all; past it the disk does not keep up: the recording fails */
const MAX_PENDING_WRITE_BYTES = 2 ** 20;
const MAX_ALL_PENDING_WRITE_BYTES = 16 * 2 ** 20;
/** the error stream (the exit Status) and the resize stream: small JSON, held up to this */
const MAX_STATUS_BYTES = 4096;
const MAX_RESIZE_BYTES = 1024;
const MAX_TEXT_CHARS = 200;
const DEFAULT_SIZE = { width: 80, height: 24 };
const AUDIT_ID = /^[A-Za-z0-9-]{1,64}$/;

export interface RecordingOptions {
  dir: string;
  /** also what was typed (asciicast "i" events) */
  stdin: boolean;
  failure: RecordFailure;
  /** what the files in `dir` may hold in all */
  maxBytes: number;
}

export interface RecordingStats {
  /** sessions recorded to their end */
  recorded: number;
  /** sessions whose recording failed midway: ended (closed), or went on unrecorded (open) */
  failed: number;
  /** sessions refused because their recording could not start (closed) */
  refused: number;
  /** sessions that went on unrecorded because their recording could not start (open) */
  unrecorded: number;
  /** what the recordings in the directory hold, as the agent counts it */
  bytes: number;
}

/** What an exec or attach request asks, from its target; undefined for any other request. */
export interface ExecRequest {
  subresource: 'exec' | 'attach';
  namespace: string;
  pod: string;
  container: string | undefined;
  command: string[];
  stdin: boolean;
  tty: boolean;
  /** through the kubelet's own API (nodes/NAME/proxy) */
  node?: string;
}

/** the kubelet's own API paths (through nodes/NAME/proxy) that run a command or stream into a container */
const KUBELET_STREAMS = new Set(['exec', 'attach', 'run', 'cri', 'portForward']);

/**
 * An exec or attach of a pod, read as kube-apiserver reads the request (the member policy's reader: the path
 * decoded once, a `;` query or a `..` segment not read at all): `/api/v1/namespaces/NS/pods/POD/exec|attach`, and
 * the kubelet's own `/api/v1/nodes/NODE/proxy/exec|attach/NS/POD/[UID/]CONTAINER` (or `/api/v1/proxy/nodes/…`).
 * `{ unrecordable }` for a request that may run a command in a container and cannot be recorded: one that cannot be
 * read for certain, or the kubelet's `run`, `cri` or `portForward`; undefined for any other request.
 */
export function execRequest(method: string, target: string): ExecRequest | { unrecordable: string } | undefined {
  const info = requestInfo(method, target, []);
  if (typeof info === 'string') return { unrecordable: `a request the agent cannot read for certain (${info})` };
  const asked = {
    container: info.query.get('container') ?? undefined,
    command: info.query.getAll('command'),
    stdin: queryFlag(info.query, 'stdin'),
    tty: queryFlag(info.query, 'tty'),
  };
  if (!info.resourceRequest || info.apiGroup !== '') return undefined;
  if (info.resource === 'pods/exec' || info.resource === 'pods/attach')
    return {
      subresource: info.resource === 'pods/exec' ? 'exec' : 'attach',
      namespace: info.namespace,
      pod: info.name,
      ...asked,
    };
  const s = info.path.replace(/^\/+|\/+$/g, '').split('/');
  // nodes/NAME/proxy/REST, or the older proxy/nodes/NAME/REST
  const rest =
    s[2] === 'nodes' && s[4] === 'proxy' ? s.slice(5) : s[2] === 'proxy' && s[3] === 'nodes' ? s.slice(5) : undefined;
  if (!rest || !KUBELET_STREAMS.has(rest[0]!)) return undefined;
  const node = s[2] === 'nodes' ? s[3] : s[4];
  if ((rest[0] === 'exec' || rest[0] === 'attach') && (rest.length === 4 || rest.length === 5))
    return {
      subresource: rest[0],
      namespace: rest[1]!,
      pod: rest[2]!,
      node,
      ...asked,
      container: rest[rest.length - 1],
    };
  return {
    unrecordable: `the kubelet's ${rest[0]} API (${rest.slice(0, 4).join('/')}), which runs what is not recorded`,
  };
}

/** Why a recording cannot start or go on; its message is said to the client (closed) and logged. */
export class RecordingProblem extends Error {}

/** The agent's recordings: one directory, one budget, one failure mode. */
export class ExecRecorder {
  readonly opts: RecordingOptions;
  readonly #cluster: string;
  readonly #log: Logger;
  readonly #live = new Set<SessionRecording>();
  #stats: RecordingStats = { recorded: 0, failed: 0, refused: 0, unrecorded: 0, bytes: 0 };
  /** what waits for the disk, in all sessions */
  #pendingBytes = 0;

  constructor(opts: RecordingOptions, cluster: string, log: Logger) {
    this.opts = opts;
    this.#cluster = cluster;
    this.#log = log;
    try {
      mkdirSync(opts.dir, { recursive: true, mode: 0o700 });
      const st = statSync(opts.dir);
      if (st.mode & 0o002)
        log.warn('--record-exec: anyone on this host may write in the directory of recordings', { dir: opts.dir });
      this.#stats.bytes = this.#scan();
    } catch (err) {
      // said now, and again at each session it costs (refused, or unrecorded)
      log.warn('--record-exec: the directory of recordings cannot be used', {
        dir: opts.dir,
        err: (err as Error).message,
      });
    }
  }

  get stats(): RecordingStats {
    return { ...this.#stats };
  }

  /**
   * At each upgrade request: for an exec or attach, its recording (a tap), or, when it cannot start and failure is
   * closed, the 403 the agent answers instead; undefined for anything else (and for a session that goes on
   * unrecorded). `kill` ends the session (closed, when its recording fails midway).
   */
  begin(request: RequestView, kill: () => void): SessionRecording | Buffer | undefined {
    const exec = execRequest(request.method, request.target);
    // an exec that is no upgrade runs nothing (the kubelet streams or refuses); the kubelet's run API needs none
    if (!exec || (!request.upgrade && !('unrecordable' in exec))) return undefined;
    const who = {
      user: request.values('impersonate-user')[0],
      groups: request.values('impersonate-group'),
      auditId: request.values(AUDIT_ID_HEADER)[0],
    };
    const what = 'unrecordable' in exec ? 'request' : exec.subresource;
    try {
      if ('unrecordable' in exec) throw new RecordingProblem(`it is ${exec.unrecordable}`);
      return this.#open(exec, who, kill);
    } catch (err) {
      const problem = err instanceof RecordingProblem ? err.message : String(err);
      const pod = 'unrecordable' in exec ? undefined : `${exec.namespace}/${exec.pod}`;
      const fields = {
        user: who.user,
        pod,
        path: pod ? undefined : request.target,
        auditId: who.auditId,
        why: problem,
      };
      if (this.opts.failure === 'open') {
        this.#stats.unrecorded++;
        this.#log.warn(`${what} goes on unrecorded (--record-failure open): its recording cannot start`, fields);
        return undefined;
      }
      this.#stats.refused++;
      this.#log.warn(`refused ${what === 'request' ? 'a' : 'an'} ${what}: its recording cannot start`, fields);
      return Buffer.from(
        rawStatus({
          status: 403,
          message:
            `tower agent of cluster "${this.#cluster}": exec and attach sessions are recorded here ` +
            `(--record-exec), and this ${what}'s recording cannot start: ${problem}; nothing was sent to the ` +
            'kube-apiserver',
        }),
      );
    }
  }

  #open(exec: ExecRequest, who: Who, kill: () => void): SessionRecording {
    const { dir, maxBytes } = this.opts;
    const started = new Date();
    const header = headerOf(exec, who, this.#cluster, this.opts.stdin, started);
    const line = paddedLine(
      JSON.stringify(header),
      Buffer.byteLength(JSON.stringify(header)) + HEADER_RESERVE_BYTES + 1,
    );
    if (this.#stats.bytes + line.length > maxBytes) {
      // recordings moved away since are no longer counted
      try {
        this.#stats.bytes = this.#scan();
      } catch (err) {
        throw new RecordingProblem(`cannot read ${dir}: ${(err as Error).message}`);
      }
      if (this.#stats.bytes + line.length > maxBytes)
        throw new RecordingProblem(
          `the recordings in ${dir} hold ${this.#stats.bytes} bytes, its limit (--record-max-bytes) is ${maxBytes}`,
        );
    }
    const stamp = started.toISOString().replace(/[-:]/g, '');
    const id = who.auditId && AUDIT_ID.test(who.auditId) ? who.auditId : randomBytes(8).toString('hex');
    let file = join(dir, `${stamp}-${id}.cast`);
    let fd: number;
    const flags = fs.O_WRONLY | fs.O_CREAT | fs.O_EXCL | fs.O_NOFOLLOW;
    try {
      try {
        fd = openSync(file, flags, 0o600);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
        file = join(dir, `${stamp}-${id}-${randomBytes(4).toString('hex')}.cast`);
        fd = openSync(file, flags, 0o600);
      }
    } catch (err) {
      throw new RecordingProblem(`cannot create a file in ${dir}: ${(err as Error).message}`);
    }
    try {
      writeSync(fd, line, 0, line.length, 0);
    } catch (err) {
      closeSync(fd);
      // nothing of the session is in it yet
      try {
        unlinkSync(file);
      } catch {
        // gone already
      }
      throw new RecordingProblem(`cannot write ${file}: ${(err as Error).message}`);
    }
    this.#stats.bytes += line.length;
    const recording = new SessionRecording({
      recorder: this,
      fd,
      file,
      header,
      headerBytes: line.length,
      started,
      kill,
      log: this.#log,
    });
    this.#live.add(recording);
    return recording;
  }

  /** Counts `bytes` more into the budget; false when they do not fit. */
  reserve(bytes: number): boolean {
    if (this.#stats.bytes + bytes > this.opts.maxBytes) return false;
    this.#stats.bytes += bytes;
    return true;
  }

  /** Counts `bytes` more waiting for the disk; false when all sessions' would exceed what may wait. */
  holdPending(bytes: number): boolean {
    if (this.#pendingBytes + bytes > MAX_ALL_PENDING_WRITE_BYTES) return false;
    this.#pendingBytes += bytes;
    return true;
  }

  releasePending(bytes: number): void {
    this.#pendingBytes -= bytes;
  }

  /** A recording ended: how. */
  ended(recording: SessionRecording, result: 'recorded' | 'failed' | 'none'): void {
    this.#live.delete(recording);
    if (result === 'none') this.#stats.bytes -= recording.bytes;
    else this.#stats[result]++;
  }

  /** What the files in the directory hold, the live recordings' by their own count. */
  #scan(): number {
    const live = new Map([...this.#live].map((r) => [r.file, r.bytes]));
    let total = 0;
    for (const name of readdirSync(this.opts.dir)) {
      const path = join(this.opts.dir, name);
      const counted = live.get(path);
      if (counted !== undefined) {
        total += counted;
        continue;
      }
      try {
        const st = lstatSync(path);
        if (st.isFile()) total += st.size;
      } catch {
        // removed meanwhile
      }
    }
    return total;
  }
}

interface Who {
  user: string | undefined;
  groups: string[];
  auditId: string | undefined;
}

/** the asciicast v2 header, tower's part under "tower" (players ignore keys they do not know) */
interface CastHeader {
  version: 2;
  width: number;
  height: number;
  timestamp: number;
  command: string;
  title: string;
  tower: {
    cluster: string;
    /** the user the proxy acts as (Impersonate-User); null: the agent's own credentials */
    user: string | null;
    groups: string[];
    namespace: string;
    pod: string;
    container: string | null;
    node?: string;
    subresource: 'exec' | 'attach';
    command: string[];
    tty: boolean;
    stdin: boolean;
    stdinRecorded: boolean;
    auditId: string | null;
    protocol: string | null;
    /** the member's answer to the upgrade (101 when the session happened) */
    answer: number | null;
    started: string;
    ended: string | null;
    exit: { code: number | null; status: string; reason?: string; message?: string } | null;
    /** why the recording stopped before the session ended */
    stopped?: string;
  };
}

function headerOf(exec: ExecRequest, who: Who, cluster: string, stdinRecorded: boolean, started: Date): CastHeader {
  const where = `${exec.namespace}/${exec.pod}${exec.container ? ` (${exec.container})` : ''}`;
  return {
    version: 2,
    ...DEFAULT_SIZE,
    timestamp: Math.floor(started.getTime() / 1000),
    command: exec.command.join(' '),
    title: `${who.user ?? 'the agent'} on ${cluster}: ${exec.subresource} ${where}`,
    tower: {
      cluster,
      user: who.user ?? null,
      groups: who.groups,
      namespace: exec.namespace,
      pod: exec.pod,
      container: exec.container ?? null,
      ...(exec.node !== undefined ? { node: exec.node } : {}),
      subresource: exec.subresource,
      command: exec.command,
      tty: exec.tty,
      stdin: exec.stdin,
      stdinRecorded: stdinRecorded && exec.stdin,
      auditId: who.auditId ?? null,
      protocol: null,
      answer: null,
      started: started.toISOString(),
      ended: null,
      exit: null,
    },
  };
}

interface SessionRecordingInit {
  recorder: ExecRecorder;
  fd: number;
  file: string;
  header: CastHeader;
  headerBytes: number;
  started: Date;
  kill: () => void;
  log: Logger;
}

/** One session's recording: a tap on its exchange, and the asciicast file it writes. */
export class SessionRecording implements UpgradeTap {
  readonly file: string;
  readonly #init: SessionRecordingInit;
  readonly #header: CastHeader;
  readonly #t0 = performance.now();
  #reader: ExecStreamReader | undefined;
  readonly #text = new Map<ExecStream, TextDecoder>();
  #status = '';
  #resize = '';
  #sized = false;
  /** the file: where the next event goes, what waits to be written, whether a write is under way */
  #position: number;
  #pending: string[] = [];
  #pendingBytes = 0;
  #writing = false;
  #stopped = false;
  #ending = false;
  #closed = false;
  bytes: number;

  constructor(init: SessionRecordingInit) {
    this.#init = init;
    this.file = init.file;
    this.#header = init.header;
    this.#position = init.headerBytes;
    this.bytes = init.headerBytes;
  }

  answered(status: number, values: (name: string) => string[]): void {
    this.#header.tower.answer = status;
    // refused (RBAC, no such pod, a protocol it does not speak): no session, nothing printed; the file goes at the end
    if (status !== 101) return;
    const upgrade = (values('upgrade')[0] ?? '').toLowerCase();
    const events = {
      data: (s: ExecStream, b: Buffer) => this.#data(s, b),
      failed: (e: Error) => this.#fail(e.message),
    };
    try {
      if (upgrade === 'websocket') {
        // none chosen: Kubernetes' default, which a client that asks for none gets
        const protocol = values('sec-websocket-protocol')[0] || 'channel.k8s.io';
        this.#header.tower.protocol = protocol;
        if (values('sec-websocket-extensions').length)
          throw new UnreadableStream('a WebSocket extension was negotiated');
        const wanted = new Set<ExecStream>(['stdout', 'stderr', 'error', 'resize']);
        if (this.#header.tower.stdinRecorded) wanted.add('stdin');
        this.#reader = new WebSocketExecReader(protocol, events, wanted);
      } else if (upgrade === 'spdy/3.1') {
        this.#header.tower.protocol = `SPDY/3.1 ${values('x-stream-protocol-version')[0] ?? ''}`.trim();
        this.#reader = new SpdyExecReader(events);
      } else {
        this.#header.tower.protocol = upgrade;
        throw new UnreadableStream(`an upgrade to ${JSON.stringify(upgrade.slice(0, 64))}`);
      }
    } catch (err) {
      this.#fail((err as Error).message);
    }
  }

  /** read before it is relayed: false once the recording failed and the session was ended (closed) */
  fromProxy(b: Buffer): boolean {
    return this.#read(b, true);
  }

  fromMember(b: Buffer): boolean {
    return this.#read(b, false);
  }

  #read(b: Buffer, fromClient: boolean): boolean {
    if (this.#reader && !this.#stopped) {
      try {
        if (fromClient) this.#reader.fromClient(b);
        else this.#reader.fromServer(b);
      } catch (err) {
        this.#fail(err instanceof UnreadableStream ? err.message : `the agent failed reading it: ${String(err)}`);
      }
    }
    return !(this.#stopped && this.#init.recorder.opts.failure === 'closed');
  }

  /** The session's channel closed: what is left is written, then the header's end. */
  end(): void {
    if (this.#ending) return;
    this.#ending = true;
    this.#reader?.close();
    if (!this.#stopped) {
      for (const [stream, decoder] of this.#text) {
        const rest = decoder.decode();
        if (rest) this.#event(stream === 'stdin' ? 'i' : 'o', rest);
      }
    }
    const t = this.#header.tower;
    t.ended = new Date().toISOString();
    if (this.#status) t.exit = exitOf(this.#status);
    this.#flush();
  }

  #data(stream: ExecStream, bytes: Buffer): void {
    if (this.#stopped) return;
    switch (stream) {
      case 'stdout':
      case 'stderr':
      case 'stdin': {
        if (stream === 'stdin' && !this.#header.tower.stdinRecorded) return;
        let decoder = this.#text.get(stream);
        if (!decoder) this.#text.set(stream, (decoder = new TextDecoder('utf-8')));
        const text = decoder.decode(bytes, { stream: true });
        if (text) this.#event(stream === 'stdin' ? 'i' : 'o', text);
        return;
      }
      case 'error':
        if (this.#status.length < MAX_STATUS_BYTES)
          this.#status += bytes.toString('utf8', 0, MAX_STATUS_BYTES - this.#status.length);
        return;
      case 'resize':
        this.#resized(bytes.toString('latin1'));
        return;
    }
  }

  /** the resize stream: JSON objects {"Width":W,"Height":H}, one per message or one per line */
  #resized(text: string): void {
    this.#resize = (this.#resize + text).slice(-MAX_RESIZE_BYTES);
    for (let m = /\{[^{}]*\}/.exec(this.#resize); m; m = /\{[^{}]*\}/.exec(this.#resize)) {
      this.#resize = this.#resize.slice(m.index + m[0].length);
      let size: { Width?: unknown; Height?: unknown };
      try {
        size = JSON.parse(m[0]) as typeof size;
      } catch {
        continue;
      }
      const { Width: w, Height: h } = size;
      if (!Number.isInteger(w) || !Number.isInteger(h) || (w as number) <= 0 || (h as number) <= 0) continue;
      if (!this.#sized) {
        // the terminal's first size is the recording's
        this.#sized = true;
        this.#header.width = Math.min(w as number, 10_000);
        this.#header.height = Math.min(h as number, 10_000);
      }
      this.#event('r', `${w}x${h}`);
    }
  }

  #event(code: 'o' | 'i' | 'r', text: string): void {
    if (this.#stopped) return;
    const seconds = Math.round((performance.now() - this.#t0) * 1000) / 1e6;
    const line = JSON.stringify([seconds, code, text]) + '\n';
    const bytes = Buffer.byteLength(line);
    if (!this.#init.recorder.reserve(bytes)) {
      const { dir, maxBytes } = this.#init.recorder.opts;
      this.#fail(`the recordings in ${dir} reached their limit (--record-max-bytes ${maxBytes})`);
      return;
    }
    this.bytes += bytes;
    if (this.#pendingBytes + bytes > MAX_PENDING_WRITE_BYTES || !this.#init.recorder.holdPending(bytes)) {
      this.#fail('the disk does not keep up: too much of the recordings waits to be written');
      return;
    }
    this.#pendingBytes += bytes;
    this.#pending.push(line);
    this.#flush();
  }

  /** Writes what waits, one write at a time; once the session ended and all is written, the header, then close. */
  #flush(): void {
    if (this.#writing || this.#closed) return;
    const { fd } = this.#init;
    if (this.#pending.length === 0) {
      if (this.#ending) this.#finish();
      return;
    }
    const buf = Buffer.from(this.#pending.join(''));
    const held = this.#pendingBytes;
    this.#pending = [];
    this.#pendingBytes = 0;
    this.#writing = true;
    write(fd, buf, 0, buf.length, this.#position, (err) => {
      this.#init.recorder.releasePending(held);
      this.#writing = false;
      this.#position += buf.length;
      if (err) this.#fail(`cannot write ${this.file}: ${err.message}`);
      this.#flush();
    });
  }

  /** The header rewritten in place (within its padding), the file closed, the session logged. */
  #finish(): void {
    this.#closed = true;
    const { fd, headerBytes, recorder, log } = this.#init;
    const t = this.#header.tower;
    // the member refused the upgrade, or the channel ended before it answered
    if (t.answer !== 101) {
      closeFd(fd, () => {
        try {
          unlinkSync(this.file);
        } catch {
          // gone already
        }
        recorder.ended(this, 'none');
        log.debug(1, `no ${t.subresource} session to record: the member answered ${t.answer}`, { file: this.file });
      });
      return;
    }
    const text = JSON.stringify(this.#header);
    const fits = Buffer.byteLength(text) < headerBytes;
    const done = (err?: Error | null) => {
      closeFd(fd, () => undefined);
      if (err) this.#fail(`cannot write ${this.file}: ${err.message}`);
      const result = this.#stopped ? 'failed' : 'recorded';
      recorder.ended(this, result);
      log.info(result === 'recorded' ? `${t.subresource} session recorded` : `${t.subresource} recording incomplete`, {
        file: this.file,
        protocol: t.protocol ?? undefined,
        user: t.user ?? '(the agent)',
        pod: `${t.namespace}/${t.pod}`,
        container: t.container ?? undefined,
        auditId: t.auditId ?? undefined,
        answer: t.answer ?? undefined,
        exit: t.exit?.code ?? undefined,
        bytes: this.bytes,
        stopped: t.stopped,
      });
    };
    if (!fits) {
      log.warn('a recording header outgrew its room; it keeps the one written at the start', { file: this.file });
      done();
      return;
    }
    const line = paddedLine(text, headerBytes);
    write(fd, line, 0, line.length, 0, (err) => done(err));
  }

  /** The recording cannot go on: closed ends the session, open lets it go on unrecorded. */
  #fail(why: string): void {
    if (this.#stopped) return;
    this.#stopped = true;
    this.#header.tower.stopped = truncated(why);
    this.#reader?.close();
    const { recorder, log, kill } = this.#init;
    recorder.releasePending(this.#pendingBytes);
    this.#pending = [];
    this.#pendingBytes = 0;
    const t = this.#header.tower;
    const closed = recorder.opts.failure === 'closed';
    log.warn(
      closed
        ? `ended an ${t.subresource} session: its recording failed`
        : `an ${t.subresource} session goes on unrecorded (--record-failure open): its recording failed`,
      { file: this.file, user: t.user ?? '(the agent)', pod: `${t.namespace}/${t.pod}`, auditId: t.auditId, why },
    );
    if (closed) kill();
  }
}

/** How the session ended, from its error stream: a Status (v4 and later) or the text of an error (earlier). */
function exitOf(status: string): NonNullable<CastHeader['tower']['exit']> {
  try {
    const s = JSON.parse(status) as {
      status?: string;
      reason?: string;
      message?: string;
      details?: { causes?: { reason?: string; message?: string }[] };
    };
    if (s.status === 'Success') return { code: 0, status: 'Success' };
    const cause = s.details?.causes?.find((c) => c.reason === 'ExitCode');
    const code = cause?.message !== undefined && /^\d{1,3}$/.test(cause.message) ? Number(cause.message) : null;
    return {
      code,
      status: truncated(String(s.status ?? 'Failure')),
      reason: s.reason !== undefined ? truncated(String(s.reason)) : undefined,
      message: s.message !== undefined ? truncated(String(s.message)) : undefined,
    };
  } catch {
    return { code: null, status: 'Failure', message: truncated(status) };
  }
}

/** `text` and spaces up to `bytes` in all, the last a newline: JSON allows the spaces, players skip them */
function paddedLine(text: string, bytes: number): Buffer {
  const line = Buffer.alloc(bytes, 0x20);
  line.write(text, 0, bytes - 1, 'utf8');
  line[bytes - 1] = 0x0a;
  return line;
}

function truncated(s: string): string {
  return s.length > MAX_TEXT_CHARS ? s.slice(0, MAX_TEXT_CHARS) + '…' : s;
}

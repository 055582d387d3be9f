// Where one request's time goes, hop by hop, read off the wire: tcpdump on loopback timestamps every
// segment that carries bytes, and at concurrency 1 the six legs of a request follow each other:
//   client → entry    (the request reaches the first relay: tower's gateway, ssh -L's listener)
//   relay → relay     (the first relay has sent it on: proxy → agent over WebSocket, ssh → sshd)
//   relay → upstream  (the second relay has sent it on)
//   upstream → relay  (the upstream answered)
//   relay → relay     (the second relay has sent the answer back)
//   entry → client    (the first relay has sent it to the client)
// The time between two legs is what the process in between spent, plus one loopback delivery.
// Event-loop turns and write calls per request come from `strace -c` on each relay in a second run
// (strace slows what it traces, so its run gives counts, never times).
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';

export interface HopPorts {
  /** where the client connects (gateway, ssh -L's port) */
  entry: number;
  /** where the second relay connects to the first (the proxy's agent port), or the first to the second (sshd) */
  middle: number;
  /** the upstream's port */
  upstream: number;
  /** whether the first relay listens on `middle` (tower: the agent dials the proxy) or dials it (ssh dials sshd) */
  middleListensAtEntry: boolean;
}

/** the legs of one request, in order */
const LEGS = 6;
/** what each stretch between two legs is: the time from leg i to leg i+1 */
export const HOPS = [
  'first relay, request',
  'second relay, request',
  'upstream answers',
  'second relay, answer',
  'first relay, answer',
] as const;
export type HopTimes = Record<(typeof HOPS)[number], number>;

/** one segment with bytes: when (µs) and which of the six legs (0–5) it is */
export interface Segment {
  t: number;
  leg: number;
}

/** Starts tcpdump on lo for the three ports; the returned stop() ends it and yields the segments' legs. */
export async function captureLegs(ports: HopPorts): Promise<{ stop: () => Promise<Segment[]> }> {
  const filter = `tcp and (port ${ports.entry} or port ${ports.middle} or port ${ports.upstream})`;
  const dump = spawn('tcpdump', ['-i', 'lo', '-n', '-tt', '-l', '-q', '--immediate-mode', '-B', '16384', filter], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  dump.stdout.on('data', (d) => {
    out += d;
  });
  dump.stderr.on('data', (d) => {
    err += d;
  });
  // tcpdump says "listening on lo" once its capture is open
  const deadline = Date.now() + 5000;
  while (!/listening on/.test(err)) {
    if (dump.exitCode !== null || Date.now() > deadline) throw new Error(`tcpdump did not start: ${err.trim()}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  return {
    stop: async () => {
      await new Promise((r) => setTimeout(r, 200));
      dump.kill('SIGINT');
      if (dump.exitCode === null) await once(dump, 'exit');
      return parseLegs(out, ports);
    },
  };
}

/**
 * "1733094000.123456 IP 127.0.0.1.5555 > 127.0.0.1.40000: tcp 200" → the leg it is, or none (no bytes, or
 * not one of the six)
 */
export function parseLegs(text: string, ports: HopPorts): Segment[] {
  const segments: Segment[] = [];
  for (const line of text.split('\n')) {
    const m = /^(\d+\.\d+) IP [\d.]+\.(\d+) > [\d.]+\.(\d+): tcp (\d+)/.exec(line);
    if (!m || m[4] === '0') continue;
    const [src, dst] = [Number(m[2]), Number(m[3])];
    // the first relay's end of the middle connection: the listening port (tower) or the dialed one (sshd's,
    // seen from ssh)
    const towardSecond = ports.middleListensAtEntry ? src === ports.middle : dst === ports.middle;
    const towardFirst = ports.middleListensAtEntry ? dst === ports.middle : src === ports.middle;
    const leg =
      dst === ports.entry
        ? 0
        : towardSecond
          ? 1
          : dst === ports.upstream
            ? 2
            : src === ports.upstream
              ? 3
              : towardFirst
                ? 4
                : src === ports.entry
                  ? 5
                  : -1;
    if (leg >= 0) segments.push({ t: Number(m[1]) * 1e6, leg });
  }
  return segments;
}

/**
 * The median of each hop over the requests seen whole: each request is the first segment of each
 * leg in order; anything else in between (window adjustments, pings, a second segment) is skipped,
 * and a request whose legs come out of order is dropped.
 */
export function hopTimes(segments: Segment[]): { hops: HopTimes; requests: number } {
  const per: number[][] = HOPS.map(() => []);
  let want = 0;
  let times: number[] = [];
  let whole = 0;
  for (const s of segments) {
    if (s.leg === 0 && want !== 0) {
      want = 0;
      times = [];
    }
    if (s.leg !== want) continue;
    times.push(s.t);
    want++;
    if (want === LEGS) {
      // the client's own time between an answer and its next request is no relay's: not counted
      for (let i = 0; i < HOPS.length; i++) per[i]!.push(times[i + 1]! - times[i]!);
      whole++;
      want = 0;
      times = [];
    }
  }
  const median = (xs: number[]) => (xs.length ? [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]! : NaN);
  const hops = Object.fromEntries(HOPS.map((h, i) => [h, median(per[i]!)])) as HopTimes;
  return { hops, requests: whole };
}

const WAIT_CALLS = ['epoll_wait', 'epoll_pwait', 'epoll_pwait2', 'poll', 'ppoll', 'select', 'pselect6'];
const WRITE_CALLS = ['write', 'writev', 'sendmsg', 'sendto'];

/** The calls of `names` in all, from strace -c's table ("% time  seconds  usecs/call  calls  [errors]  syscall"). */
export function callsIn(summary: string, names: string[]): number {
  let sum = 0;
  for (const line of summary.split('\n')) {
    const m = /^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)(?:\s+\d+)?\s+(\w+)\s*$/.exec(line);
    if (m && names.includes(m[2]!)) sum += Number(m[1]);
  }
  return sum;
}

/** strace -c -f on a process while `run` goes: event-loop waits and write calls, in all. */
export async function countCalls<T>(
  pids: number[],
  run: () => Promise<T>,
): Promise<{ result: T; waits: number[]; writes: number[] }> {
  const tracers: { child: ChildProcess; err: string }[] = pids.map((pid) => {
    const child = spawn(
      'strace',
      ['-c', '-f', '-e', `trace=${[...WAIT_CALLS, ...WRITE_CALLS].join(',')}`, '-p', String(pid)],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    const t = { child, err: '' };
    child.stderr!.on('data', (d) => {
      t.err += d;
    });
    return t;
  });
  // strace prints "Process N attached" once it holds the process
  const deadline = Date.now() + 5000;
  while (tracers.some((t) => !/attached/.test(t.err))) {
    if (tracers.some((t) => t.child.exitCode !== null) || Date.now() > deadline)
      throw new Error(`strace did not attach: ${tracers.map((t) => t.err.trim()).join('; ')}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  const result = await run();
  const waits: number[] = [];
  const writes: number[] = [];
  for (const t of tracers) {
    t.child.kill('SIGINT');
    if (t.child.exitCode === null) await once(t.child, 'exit');
    waits.push(callsIn(t.err, WAIT_CALLS));
    writes.push(callsIn(t.err, WRITE_CALLS));
  }
  return { result, waits, writes };
}

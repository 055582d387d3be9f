import type { Duplex } from 'node:stream';
import ssh2 from 'ssh2';
import { dialWebSocket } from '../../src/agent/dial.ts';
import type { TunnelClient } from '../../src/tunnel/ssh.ts';

/** What the hostile agent's "upstream" does with a request: bytes to answer, and whether to hang up after. */
export type Script = (path: string) => { answer?: string | Buffer; close?: boolean };

export interface HostileAgent {
  /** the proxy's answer to the (first) config request */
  reply: { failed: boolean; text: string };
  /** further config requests on the same connection, if any were sent */
  more: { failed: boolean; text: string }[];
  /** request heads received through channels */
  heads: string[];
  close(): void;
}

/**
 * A v1 agent written for tests: it sends whatever `config` JSON it is given (no checks) and answers
 * the proxy's channels itself, with what `script` says, standing in for a broken or hostile
 * kube-apiserver. With TowerFeatures tls-at-agent, the proxy writes plain HTTP into its channels.
 */
export async function hostileAgent(
  proxyUrl: string,
  configs: unknown[],
  script: Script = () => ({}),
): Promise<HostileAgent> {
  const { stream } = await dialWebSocket(proxyUrl.replace(/^http/, 'ws'), { timeoutMs: 5000 });
  const client = new ssh2.Client() as TunnelClient;
  const heads: string[] = [];
  client.on('error', () => {});
  client.on('channel open', (_info, accept) => serveChannel(accept(), script, heads));
  client.connect({ sock: stream as never, username: '', password: '', ident: 'SSH-kubesphere-v1-client' });
  await new Promise<void>((resolve, reject) => {
    client.once('ready', resolve);
    client.once('close', () => reject(new Error('the proxy closed the connection before SSH was ready')));
  });
  const ask = (c: unknown) =>
    new Promise<{ failed: boolean; text: string }>((resolve) => {
      const payload = typeof c === 'string' ? Buffer.from(c) : Buffer.from(JSON.stringify(c));
      client.globalRequest('config', payload, (failed, data) => resolve({ failed, text: data?.toString() ?? '' }));
      client.once('close', () => resolve({ failed: true, text: '(connection closed)' }));
    });
  // all sent at once: a proxy must not evaluate those pipelined behind the first
  const [reply, ...more] = await Promise.all(configs.map(ask));
  return {
    reply: reply!,
    more,
    heads,
    close: () => {
      client.end();
      stream.destroy();
    },
  };
}

/** Reads request heads from the channel and answers each with the script's bytes. */
function serveChannel(channel: Duplex, script: Script, heads: string[]): void {
  let buffered = '';
  channel.on('error', () => {});
  channel.on('data', (d: Buffer) => {
    buffered += d.toString('latin1');
    for (;;) {
      const end = buffered.indexOf('\r\n\r\n');
      if (end < 0) return;
      const head = buffered.slice(0, end);
      buffered = buffered.slice(end + 4);
      heads.push(head);
      const path = (head.split(' ')[1] ?? '/').split('?')[0]!;
      const { answer, close } = script(path);
      if (answer !== undefined) channel.write(answer);
      if (close) {
        channel.end();
        channel.destroy();
        return;
      }
    }
  });
}

/** An HTTP/1.1 answer with a JSON body. */
export function jsonAnswer(code: number, body: unknown, reason = 'OK'): string {
  const s = JSON.stringify(body);
  return (
    `HTTP/1.1 ${code} ${reason}\r\nContent-Type: application/json\r\n` +
    `Content-Length: ${Buffer.byteLength(s)}\r\n\r\n${s}`
  );
}

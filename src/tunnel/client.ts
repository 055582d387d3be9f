import type { Duplex } from 'node:stream';
import ssh2 from 'ssh2';
import type { ClientChannel } from 'ssh2';
import { ConfigRejectedError, HostKeyMismatchError, TimeoutError, TowerError } from '../errors.ts';
import { printable } from '../observe/log.ts';
import { ALGORITHMS, fingerprint, type TunnelClient } from './ssh.ts';
import {
  CHANNEL_TYPE,
  CHANNEL_TYPE_CONTROL,
  CHANNEL_TYPE_TLS,
  CLIENT_IDENT,
  encodeConfig,
  FEATURE_REPLICAS,
  FEATURE_TLS_AT_AGENT,
  REQUEST_CONFIG,
  REQUEST_PING,
  UNAUTHORIZED,
  type AgentConfig,
} from './protocol.ts';
import { TunnelSession } from './session.ts';

export interface DialOptions {
  config: AgentConfig;
  /** "SHA256:…"; when set, any other host key is refused */
  expectFingerprint?: string;
  handshakeTimeoutMs: number;
  /** a channel the proxy opened towards `hostPort`: `kubesphere`, or CHANNEL_TYPE_TLS when negotiated */
  onChannel: (hostPort: string, type: string, accept: () => ClientChannel, reject: () => void) => void;
  /** the proxy's control channel (CHANNEL_TYPE_CONTROL), accepted only when the config announced FEATURE_REPLICAS */
  onControl?: (channel: ClientChannel) => void;
}

/**
 * The agent's side of the tunnel core: SSH client over `stream`, sends `config` and resolves once
 * the proxy accepted it.
 */
export function dialTunnel(stream: Duplex, opts: DialOptions): Promise<TunnelClientSession> {
  return new Promise((resolve, reject) => {
    const client = new ssh2.Client() as TunnelClient;
    let settled = false;
    let seenFingerprint = '';
    let hostKeyError: Error | undefined;
    const fail = (err: Error) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      reject(err);
      client.end();
      stream.destroy();
    };
    const timer = setTimeout(
      () => fail(new TimeoutError(`the proxy did not complete the handshake within ${opts.handshakeTimeoutMs} ms`)),
      opts.handshakeTimeoutMs,
    );
    client.on('error', (err: Error) =>
      fail(hostKeyError ?? new TowerError('ESSH', `SSH handshake with the proxy failed: ${err.message}`)),
    );
    client.on('close', () =>
      fail(hostKeyError ?? new TowerError('ECLOSED', 'the proxy closed the connection during the handshake')),
    );
    client.on('channel open', (info, accept, rejectChannel) => {
      if (info.type === CHANNEL_TYPE_CONTROL) {
        if (opts.onControl && opts.config.features?.includes(FEATURE_REPLICAS)) opts.onControl(accept());
        else rejectChannel();
        return;
      }
      const tlsAllowed = info.type === CHANNEL_TYPE_TLS && opts.config.features?.includes(FEATURE_TLS_AT_AGENT);
      if (info.type !== CHANNEL_TYPE && !tlsAllowed) {
        rejectChannel();
        return;
      }
      opts.onChannel((info.data.raw ?? Buffer.alloc(0)).toString('latin1'), info.type, accept, rejectChannel);
    });
    client.on('ready', () => {
      client.globalRequest(REQUEST_CONFIG, encodeConfig(opts.config), (failed, data) => {
        // Go peers put the reason in the payload, and Go agents read only the payload
        const text = data && data.length > 0 ? data.toString('utf8') : '';
        if (failed || text) {
          fail(configRejected(text));
          return;
        }
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        resolve(new TunnelClientSession(client, stream, seenFingerprint));
      });
    });
    client.connect({
      sock: stream as never,
      username: '',
      password: '',
      ident: CLIENT_IDENT,
      algorithms: ALGORITHMS as never,
      readyTimeout: 0,
      keepaliveInterval: 0,
      hostVerifier: (key: Buffer) => {
        seenFingerprint = fingerprint(key);
        if (opts.expectFingerprint && opts.expectFingerprint !== seenFingerprint) {
          hostKeyError = new HostKeyMismatchError(
            `the proxy's host key is ${seenFingerprint}, not ${opts.expectFingerprint} as --proxy-fingerprint ` +
              "demands; this may be another server posing as the proxy (if the proxy's data dir was reset, " +
              'print the new join command with: tower token <name>)',
          );
          return false;
        }
        return true;
      },
    });
  });
}

/**
 * The proxy's failure payload for `config`, as an error: its words end up on a terminal, escaped
 * and cut; UNAUTHORIZED (the Go proxy's text for a bad name or token) is classified here, once.
 */
function configRejected(text: string): ConfigRejectedError {
  if (!text) return new ConfigRejectedError('the proxy rejected the config without a reason', false);
  return new ConfigRejectedError(printable(text), text.includes(UNAUTHORIZED));
}

/** An admitted tunnel, the agent's end: pings the proxy, whose answers show it lives. */
export class TunnelClientSession extends TunnelSession {
  readonly hostKeyFingerprint: string;
  #client: TunnelClient;

  constructor(client: TunnelClient, stream: Duplex, hostKeyFingerprint: string) {
    super(client, stream);
    this.#client = client;
    this.hostKeyFingerprint = hostKeyFingerprint;
    client.on('error', (err: Error) => this.emit('warning', err));
  }

  /** Resolves when the proxy answered within `timeoutMs`, rejects otherwise. */
  ping(timeoutMs: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new TimeoutError(`the proxy did not answer a ping within ${timeoutMs} ms`)),
        timeoutMs,
      );
      try {
        this.#client.globalRequest(REQUEST_PING, null, () => {
          clearTimeout(timer);
          resolve();
        });
      } catch (err) {
        clearTimeout(timer);
        reject(err as Error);
      }
    });
  }
}

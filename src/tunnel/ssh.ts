/**
 * Types and settings for the ssh2 extensions that wire protocol v1 needs. The extensions
 * themselves are committed patches to ssh2, applied at install in order, each with its reason in
 * its header: patches/ssh2+1.17.0+001+wire-v1.patch (Go-style identification strings, raw global
 * requests with failure payloads, and channels of custom types with raw extra data) and
 * patches/ssh2+1.17.0+002+bounded-memory.patch (64 KiB buffered each way in a channel, not the
 * 2 MiB window; channel data that waits while the transport is full; a destroyed channel that drops
 * what it had not read, so that it closes; the channelWindow hook); 003 and 004 make its crypto
 * cheaper. Nothing else in tower touches ssh2 internals.
 */
import { createHash } from 'node:crypto';
import type { Client, Connection, ClientChannel, ServerChannel } from 'ssh2';
import ssh2 from 'ssh2';
// @ts-expect-error: an internal module of ssh2 without types; tells whether its native binding loaded
import sshCrypto from 'ssh2/lib/protocol/crypto.js';
// @ts-expect-error: an internal module of ssh2 without types; its channels' window and buffer sizes
import sshChannel from 'ssh2/lib/Channel.js';

export type Channel = ClientChannel | ServerChannel;

export interface IncomingChannelInfo {
  type: string;
  sender: number;
  window: number;
  packetSize: number;
  data: { raw?: Buffer };
}

/** The agent's SSH client with the patched API. */
export interface TunnelClient extends Client {
  /** cb(failed, replyPayload) */
  globalRequest(name: string, data: Buffer | null, cb?: (failed: boolean, data: Buffer | null) => void): this;
  on(
    event: 'channel open',
    listener: (info: IncomingChannelInfo, accept: () => ClientChannel, reject: () => void) => void,
  ): this;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- ssh2's own listener signature, which this overloads
  on(event: string | symbol, listener: (...args: any[]) => void): this;
}

/** One agent's connection on the proxy's SSH server, with the patched API. */
export interface TunnelConnection extends Connection {
  openChannel(type: string, data: Buffer, cb: (err: Error | undefined, channel: ServerChannel) => void): this;
  on(
    event: 'global request',
    listener: (name: string, data: Buffer, wantReply: boolean, reply: (ok: boolean, data?: Buffer) => void) => void,
  ): this;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- ssh2's own listener signature, which this overloads
  on(event: string | symbol, listener: (...args: any[]) => void): this;
  _sock: unknown;
  /**
   * the window its channels grant (the patch's hook; ssh2's 2 MiB when unset or more), asked at each open and
   * adjustment
   */
  channelWindow?: () => number;
}

/** Fast, widely supported choices first; Go's x/crypto/ssh speaks all of these. */
export const ALGORITHMS = {
  kex: ['curve25519-sha256', 'curve25519-sha256@libssh.org', 'ecdh-sha2-nistp256'],
  cipher: ['aes128-gcm@openssh.com', 'aes256-gcm@openssh.com', 'chacha20-poly1305@openssh.com', 'aes128-ctr'],
  serverHostKey: ['ssh-ed25519', 'ecdsa-sha2-nistp256', 'rsa-sha2-256', 'rsa-sha2-512'],
  hmac: ['hmac-sha2-256-etm@openssh.com', 'hmac-sha2-256'],
  compress: ['none'],
} as const;

/** what the peer may send a channel that nobody reads: ssh2's window, a module constant */
export const CHANNEL_WINDOW_BYTES: number = (sshChannel as { MAX_WINDOW: number }).MAX_WINDOW;
/** what a channel buffers each way before it pushes back (the patch's CHANNEL_BUFFER; ssh2 used the window) */
export const CHANNEL_BUFFER_BYTES: number = (sshChannel as { CHANNEL_BUFFER: number }).CHANNEL_BUFFER;

/** Which implementation runs the SSH ciphers: the native binding (fast) or ssh2's JS fallback. */
export const CRYPTO_BACKEND: 'native' | 'js' = (sshCrypto as { bindingAvailable: boolean }).bindingAvailable
  ? 'native'
  : 'js';
/** why the binary runs on JS crypto although it carries the native binding (undefined otherwise) */
export const CRYPTO_PROBLEM: string | undefined = (globalThis as { __towerNativeCryptoProblem?: string })
  .__towerNativeCryptoProblem;

/** "SHA256:<base64>" of an SSH public key blob, as `ssh-keygen -l` prints it. */
export function fingerprint(publicKeyBlob: Buffer): string {
  return 'SHA256:' + createHash('sha256').update(publicKeyBlob).digest('base64').replace(/=+$/, '');
}

/**
 * A new Ed25519 host key in OpenSSH format. ssh2's generator drops a leading zero byte of the
 * public key (about one key in 230 comes out 31 bytes long, which ssh2 itself then refuses to
 * parse): such a key is drawn again, so that no proxy ever stores one it cannot load.
 */
export function generateHostKey(): string {
  for (;;) {
    const key = ssh2.utils.generateKeyPairSync('ed25519').private;
    if (!(ssh2.utils.parseKey(key) instanceof Error)) return key;
  }
}

export function hostKeyFingerprint(privateKey: string): string {
  const parsed = ssh2.utils.parseKey(privateKey);
  if (parsed instanceof Error) throw parsed;
  const key = Array.isArray(parsed) ? parsed[0]! : parsed;
  return fingerprint(key.getPublicSSH());
}

/**
 * Wire protocol v1, byte-compatible with KubeSphere's Go tower: WebSocket (subprotocol
 * kubesphere-v1) carrying SSH; a `config` global request with JSON; `kubesphere` channels
 * whose extra data is the raw "host:port".
 */
import { isIP } from 'node:net';
import { TowerError } from '../errors.ts';

export const SUBPROTOCOL = 'kubesphere-v1';
export const CLIENT_IDENT = 'SSH-kubesphere-v1-client';
export const SERVER_IDENT = 'SSH-kubesphere-v1-server';
export const CHANNEL_TYPE = 'kubesphere';
/**
 * Extension, negotiated: a channel whose bytes the agent wraps in TLS to the named upstream with
 * credentials it keeps. Only opened to agents that announced FEATURE_TLS_AT_AGENT.
 */
export const CHANNEL_TYPE_TLS = 'tower-tls@v1';
/** the proxy lists its extensions in this header of the WebSocket 101 (Go proxies send none) */
export const FEATURES_HEADER = 'x-tower-features';
/** the agent makes the TLS to the member kube-apiserver: the proxy's crypto halves, keys stay home */
export const FEATURE_TLS_AT_AGENT = 'tls-at-agent';
export const REQUEST_CONFIG = 'config';
export const REQUEST_PING = 'ping';
/** the failure text the Go proxy sends for a bad name or token; Go agents exit on it */
export const UNAUTHORIZED = 'Unauthorized agent';
export const MAX_CONFIG_BYTES = 256 * 1024;

/** What the agent announces: who it is and how the proxy reaches its apiservers (Go field names). */
export interface AgentConfig {
  version: string;
  name: string;
  token: string;
  kubernetesSvcHost: string;
  kubesphereSvcHost: string;
  caData?: Buffer;
  certData?: Buffer;
  keyData?: Buffer;
  bearerToken?: Buffer;
  /** tower extensions the agent uses on this session (JSON TowerFeatures, unknown to Go peers) */
  features?: string[];
}

export class ProtocolError extends TowerError {
  constructor(message: string) {
    super('EPROTOCOL', message);
    this.name = 'ProtocolError';
  }
}

/** JSON as Go's encoding/json writes the Go tower's Config struct: []byte fields as base64. */
export function encodeConfig(c: AgentConfig): Buffer {
  const json: Record<string, string> = {
    Version: c.version,
    Name: c.name,
    Token: c.token,
    KubernetesSvcHost: c.kubernetesSvcHost,
    KubeSphereSvcHost: c.kubesphereSvcHost,
  };
  if (c.caData) json.CAData = c.caData.toString('base64');
  if (c.certData) json.CertData = c.certData.toString('base64');
  if (c.keyData) json.KeyData = c.keyData.toString('base64');
  if (c.bearerToken) json.BearerToken = c.bearerToken.toString('base64');
  const out: Record<string, unknown> = json;
  if (c.features?.length) out.TowerFeatures = c.features;
  return Buffer.from(JSON.stringify(out));
}

const STRING_FIELDS = { version: 'version', name: 'name', token: 'token', kubernetessvchost: 'kubernetesSvcHost', kubespheresvchost: 'kubesphereSvcHost' } as const;
const BYTE_FIELDS = { cadata: 'caData', certdata: 'certData', keydata: 'keyData', bearertoken: 'bearerToken' } as const;
const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

/** Parses a `config` payload; keys match case-insensitively, as Go's decoder does. */
export function decodeConfig(payload: Buffer): AgentConfig {
  if (payload.length > MAX_CONFIG_BYTES) throw new ProtocolError(`config payload of ${payload.length} bytes exceeds ${MAX_CONFIG_BYTES}`);
  let doc: unknown;
  try {
    doc = JSON.parse(payload.toString('utf8'));
  } catch (err) {
    throw new ProtocolError(`malformed config payload: ${(err as Error).message}`);
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw new ProtocolError('malformed config payload: want a JSON object');
  const out: Record<string, unknown> = { version: '', name: '', token: '', kubernetesSvcHost: '', kubesphereSvcHost: '' };
  for (const [k, v] of Object.entries(doc)) {
    const lk = k.toLowerCase();
    if (lk in STRING_FIELDS) {
      if (v === null) continue;
      if (typeof v !== 'string') throw new ProtocolError(`malformed config payload: field ${k} must be a string`);
      out[STRING_FIELDS[lk as keyof typeof STRING_FIELDS]] = v;
    } else if (lk === 'towerfeatures') {
      if (v === null) continue;
      if (!Array.isArray(v) || v.some((f) => typeof f !== 'string')) throw new ProtocolError(`malformed config payload: field ${k} must be a list of strings`);
      out.features = v;
    } else if (lk in BYTE_FIELDS) {
      if (v === null || v === '') continue;
      if (typeof v !== 'string' || !BASE64.test(v)) throw new ProtocolError(`malformed config payload: field ${k} must be base64`);
      out[BYTE_FIELDS[lk as keyof typeof BYTE_FIELDS]] = Buffer.from(v, 'base64');
    }
    // unknown fields are ignored, as Go does
  }
  return out as unknown as AgentConfig;
}

/** Splits "host:port" (IPv6 in brackets), or undefined when it is not one. */
export function splitHostPort(hostPort: string): { host: string; port: number } | undefined {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:\[\]\s]+)):(\d{1,5})$/.exec(hostPort);
  if (!m) return undefined;
  const port = Number(m[3]);
  if (port < 1 || port > 65535) return undefined;
  return { host: (m[1] ?? m[2])!, port };
}

/** "host" → "host:<defaultPort>"; keeps "host:port" and "[v6]:port"; drops a scheme prefix. */
export function normalizeHostPort(value: string, defaultPort: number): string {
  const v = value.replace(/^[a-z]+:\/\//i, '').replace(/\/.*$/, '');
  if (/^\[.*\]:\d+$/.test(v) || /^[^:]+:\d+$/.test(v)) return v;
  if (isIP(v) === 6) return `[${v}]:${defaultPort}`;
  return `${v}:${defaultPort}`;
}

export function hostOf(hostPort: string): string {
  const m = /^\[(.*)\]:\d+$/.exec(hostPort);
  return m ? m[1]! : hostPort.replace(/:\d+$/, '');
}

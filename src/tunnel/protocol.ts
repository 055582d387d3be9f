/**
 * Wire protocol v1, byte-compatible with KubeSphere's Go tower: WebSocket (subprotocol
 * kubesphere-v1) carrying SSH; a `config` global request with JSON; `kubesphere` channels
 * whose extra data is the raw "host:port".
 */
import { createPrivateKey, X509Certificate, type KeyObject } from 'node:crypto';
import { isIP } from 'node:net';
import { serverIdProblem } from '../config/names.ts';
import { ProtocolError } from '../errors.ts';

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
/**
 * The agent also adds its own Authorization to what the proxy sends through CHANNEL_TYPE_TLS
 * channels: with both features, no member credential is ever sent to the proxy.
 */
export const FEATURE_AUTH_AT_AGENT = 'auth-at-agent';
/**
 * Every proxy replica serves: the proxy names itself in SERVER_ID_HEADER and, to agents that
 * announce this, opens one CHANNEL_TYPE_CONTROL channel that carries the live replicas as they
 * change; such an agent holds a session to each of them.
 */
export const FEATURE_REPLICAS = 'replicas';
/** what a tower proxy offers */
export const OFFERED_FEATURES = [FEATURE_TLS_AT_AGENT, FEATURE_AUTH_AT_AGENT, FEATURE_REPLICAS];
/** the proxy replica's id, in the WebSocket 101: an agent that holds a session to it already hangs up before SSH */
export const SERVER_ID_HEADER = 'x-tower-server-id';
/**
 * In an agent's upgrade request: the replicas it holds a session to. A replica named there answers
 * 409 with its SERVER_ID_HEADER instead of upgrading: no WebSocket, no handshake slot, no SSH.
 */
export const HELD_HEADER = 'x-tower-held';
/** opened by the proxy to agents that announced FEATURE_REPLICAS: one JSON line per ReplicaView */
export const CHANNEL_TYPE_CONTROL = 'tower-control@v1';
/** a control line longer than this ends the control channel */
export const MAX_CONTROL_LINE_BYTES = 64 * 1024;
/** replicas an agent holds sessions to, at most */
export const MAX_REPLICAS = 32;
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

/** What a replica tells its agents: who it is, which replicas live (draining ones left out), and whether it drains. */
export interface ReplicaView {
  server: string;
  servers: string[];
  draining: boolean;
}

export function encodeReplicaView(v: ReplicaView): Buffer {
  return Buffer.from(JSON.stringify(v) + '\n');
}

/** One control line from a proxy, checked: ids as serverIdProblem allows, at most MAX_REPLICAS. */
export function decodeReplicaView(line: string): ReplicaView {
  let doc: unknown;
  try {
    doc = JSON.parse(line);
  } catch (err) {
    throw new ProtocolError(`malformed control message: ${(err as Error).message}`);
  }
  const d = doc as Partial<ReplicaView> | null;
  if (
    typeof d !== 'object' ||
    d === null ||
    typeof d.server !== 'string' ||
    !Array.isArray(d.servers) ||
    typeof d.draining !== 'boolean'
  ) {
    throw new ProtocolError(
      'malformed control message: want {"server": string, "servers": [string], "draining": boolean}',
    );
  }
  if (d.servers.length > MAX_REPLICAS)
    throw new ProtocolError(`control message names ${d.servers.length} replicas, more than ${MAX_REPLICAS}`);
  for (const id of [d.server, ...d.servers]) {
    if (typeof id !== 'string' || serverIdProblem(id))
      throw new ProtocolError(`control message names an invalid server id ${JSON.stringify(String(id).slice(0, 64))}`);
  }
  return { server: d.server, servers: [...new Set(d.servers as string[])], draining: d.draining };
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

const STRING_FIELDS = {
  version: 'version',
  name: 'name',
  token: 'token',
  kubernetessvchost: 'kubernetesSvcHost',
  kubespheresvchost: 'kubesphereSvcHost',
} as const;
const BYTE_FIELDS = { cadata: 'caData', certdata: 'certData', keydata: 'keyData', bearertoken: 'bearerToken' } as const;
const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;
/** printable ASCII: what may reach an HTTP header or a log line */
const VISIBLE = /^[\x21-\x7e]+$/;
const PRINTABLE = /^[\x20-\x7e]*$/;
const HOST_NAME = /^[A-Za-z0-9_]([A-Za-z0-9_.-]{0,252})$/;
const FEATURE = /^[a-z0-9][a-z0-9@.-]{0,63}$/;
export const CONFIG_LIMITS = {
  versionChars: 64,
  nameChars: 253,
  tokenChars: 512,
  bearerTokenBytes: 16 * 1024,
  pemBytes: 64 * 1024,
  features: 16,
} as const;

/** Parses a `config` payload; keys match case-insensitively, as Go's decoder does. Every value is checked here. */
export function decodeConfig(payload: Buffer): AgentConfig {
  if (payload.length > MAX_CONFIG_BYTES)
    throw new ProtocolError(`config payload of ${payload.length} bytes exceeds ${MAX_CONFIG_BYTES}`);
  let doc: unknown;
  try {
    doc = JSON.parse(payload.toString('utf8'));
  } catch (err) {
    throw new ProtocolError(`malformed config payload: ${(err as Error).message}`);
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc))
    throw new ProtocolError('malformed config payload: want a JSON object');
  const out: Record<string, unknown> = {
    version: '',
    name: '',
    token: '',
    kubernetesSvcHost: '',
    kubesphereSvcHost: '',
  };
  for (const [k, v] of Object.entries(doc)) {
    const lk = k.toLowerCase();
    if (lk in STRING_FIELDS) {
      if (v === null) continue;
      if (typeof v !== 'string') {
        const field = fieldName(STRING_FIELDS[lk as keyof typeof STRING_FIELDS]);
        throw new ProtocolError(`malformed config payload: field ${field} must be a string`);
      }
      out[STRING_FIELDS[lk as keyof typeof STRING_FIELDS]] = v;
    } else if (lk === 'towerfeatures') {
      if (v === null) continue;
      if (!Array.isArray(v) || v.some((f) => typeof f !== 'string'))
        throw new ProtocolError('malformed config payload: field TowerFeatures must be a list of strings');
      out.features = v;
    } else if (lk in BYTE_FIELDS) {
      if (v === null || v === '') continue;
      if (typeof v !== 'string' || !BASE64.test(v))
        throw new ProtocolError(
          `malformed config payload: field ${fieldName(BYTE_FIELDS[lk as keyof typeof BYTE_FIELDS])} must be base64`,
        );
      out[BYTE_FIELDS[lk as keyof typeof BYTE_FIELDS]] = Buffer.from(v, 'base64');
    }
    // unknown fields are ignored, as Go does
  }
  const config = out as unknown as AgentConfig;
  const problem = configProblem(config);
  if (problem) throw new ProtocolError(`invalid config: ${problem}`);
  return config;
}

const GO_NAMES: Record<string, string> = {
  version: 'Version',
  name: 'Name',
  token: 'Token',
  kubernetesSvcHost: 'KubernetesSvcHost',
  kubesphereSvcHost: 'KubeSphereSvcHost',
  caData: 'CAData',
  certData: 'CertData',
  keyData: 'KeyData',
  bearerToken: 'BearerToken',
  features: 'TowerFeatures',
};
function fieldName(key: string): string {
  return GO_NAMES[key] ?? key;
}

/**
 * Why a decoded config cannot be used, or undefined. Values reach HTTP headers, TLS contexts and
 * logs, so each is checked for type, length and characters, and PEM must parse.
 */
export function configProblem(c: AgentConfig): string | undefined {
  if (!PRINTABLE.test(c.version) || c.version.length > CONFIG_LIMITS.versionChars)
    return `Version must be at most ${CONFIG_LIMITS.versionChars} printable ASCII characters`;
  if (!c.name || !VISIBLE.test(c.name) || c.name.length > CONFIG_LIMITS.nameChars)
    return `Name must be 1-${CONFIG_LIMITS.nameChars} printable ASCII characters without spaces`;
  if (!c.token || !VISIBLE.test(c.token) || c.token.length > CONFIG_LIMITS.tokenChars)
    return `Token must be 1-${CONFIG_LIMITS.tokenChars} printable ASCII characters without spaces`;
  if (!c.kubernetesSvcHost) return 'KubernetesSvcHost is missing: the agent must name its kube-apiserver as host:port';
  const k8s = upstreamProblem(c.kubernetesSvcHost, 443);
  if (k8s) return `KubernetesSvcHost ${k8s}`;
  if (c.kubesphereSvcHost) {
    const ks = upstreamProblem(c.kubesphereSvcHost, 80);
    if (ks) return `KubeSphereSvcHost ${ks}`;
  }
  if (c.features) {
    if (c.features.length > CONFIG_LIMITS.features || c.features.some((f) => !FEATURE.test(f)))
      return (
        `TowerFeatures must be at most ${CONFIG_LIMITS.features} names of lower-case letters, digits, ` +
        '"@", "." and "-"'
      );
  }
  if (c.bearerToken?.length) {
    const t = c.bearerToken.toString('latin1').trim();
    if (!t || t.length > CONFIG_LIMITS.bearerTokenBytes || !VISIBLE.test(t))
      return `BearerToken must be 1-${CONFIG_LIMITS.bearerTokenBytes} printable ASCII characters without spaces`;
  }
  for (const f of ['caData', 'certData', 'keyData'] as const) {
    if ((c[f]?.length ?? 0) > CONFIG_LIMITS.pemBytes) return `${fieldName(f)} exceeds ${CONFIG_LIMITS.pemBytes} bytes`;
  }
  if (c.caData?.length) {
    const blocks = pemBlocks(c.caData, 'CERTIFICATE');
    if (blocks.length === 0) return 'CAData holds no PEM certificate';
    for (const b of blocks) {
      try {
        new X509Certificate(b);
      } catch (err) {
        return `CAData holds a certificate that does not parse: ${(err as Error).message}`;
      }
    }
  }
  const hasCert = (c.certData?.length ?? 0) > 0;
  const hasKey = (c.keyData?.length ?? 0) > 0;
  if (hasCert !== hasKey) return 'CertData and KeyData come together: a client certificate needs its key';
  if (hasCert) {
    let cert: X509Certificate;
    try {
      cert = new X509Certificate(c.certData!);
    } catch (err) {
      return `CertData is not a PEM certificate: ${(err as Error).message}`;
    }
    let key: KeyObject;
    try {
      key = createPrivateKey(c.keyData!);
    } catch (err) {
      return `KeyData is not a PEM private key: ${(err as Error).message}`;
    }
    if (!cert.checkPrivateKey(key)) return 'KeyData does not belong to CertData';
  }
  return undefined;
}

/**
 * "host:port" with a host name or IP and a port 1-65535 (a scheme is dropped, as the Go tower's
 * agent sends either).
 */
function upstreamProblem(value: string, defaultPort: number): string | undefined {
  if (value.length > 300 || !VISIBLE.test(value)) return 'must be host:port in printable ASCII';
  const hp = splitHostPort(normalizeHostPort(value, defaultPort));
  if (!hp) return `${JSON.stringify(value)} is not host:port with a port 1-65535`;
  if (!isIP(hp.host) && !HOST_NAME.test(hp.host)) return `${JSON.stringify(value)} has an invalid host name`;
  return undefined;
}

function pemBlocks(data: Buffer, label: string): string[] {
  const re = new RegExp(`-----BEGIN ${label}-----[\\s\\S]*?-----END ${label}-----`, 'g');
  return data.toString('latin1').match(re) ?? [];
}

/** Splits "host:port" (IPv6 in brackets), or undefined when it is not one. */
export function splitHostPort(hostPort: string): { host: string; port: number } | undefined {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]\s]+)):(\d{1,5})$/.exec(hostPort);
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

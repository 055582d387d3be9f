import { join } from 'node:path';
import { stringify as toYaml } from 'yaml';
import { assertClusterName } from '../../config/names.ts';
import { log } from '../../observe/log.ts';
import type { ClusterRecords, ClusterReport, ClusterRow, ClusterStatus, ProxyRecord, ProxyRecords } from '../mode.ts';
import { DataDir, pidAlive } from './data-dir.ts';

/**
 * What the proxy serving a data dir records there: proxy.yaml (its addresses and pid) and
 * status/<name>.yaml (each cluster's agents), read by `tower token`, `tower kubeconfig` and `tower clusters`.
 */
export class FileProxyRecord implements ProxyRecords {
  #data: DataDir;
  #clusters: ClusterRecords;

  constructor(dir: string | DataDir, clusters: ClusterRecords) {
    this.#data = typeof dir === 'string' ? new DataDir(dir) : dir;
    this.#clusters = clusters;
  }

  async read(): Promise<ProxyRecord | undefined> {
    const path = join(this.#data.dir, 'proxy.yaml');
    const r = await this.#data.readYaml(path);
    if (r.missing || (!r.problem && r.doc === undefined)) return undefined;
    const d = r.doc as Partial<ProxyRecord> | null;
    const wellFormed =
      typeof d === 'object' &&
      d !== null &&
      typeof d.agentUrl === 'string' &&
      typeof d.gatewayUrl === 'string' &&
      typeof d.hostKeyFingerprint === 'string';
    if (r.problem || !wellFormed) {
      // only addresses for printing: commands fall back to the defaults
      log.warn('ignoring an unusable file in the data dir', { path, why: r.problem ?? 'is malformed' });
      return undefined;
    }
    return d as ProxyRecord;
  }

  async write(record: ProxyRecord): Promise<void> {
    await this.#data.locked(async () =>
      this.#data.writeFile(join(this.#data.dir, 'proxy.yaml'), toYaml(record), false),
    );
  }

  async writeStatus(name: string, status: ClusterStatus): Promise<void> {
    assertClusterName(name);
    // only the proxy writes status, so no lock: the rename alone keeps readers consistent
    this.#data.writeFile(join(this.#data.statusDir, `${name}.yaml`), toYaml(status), false);
  }

  /** What the proxy last wrote about `name`'s agents; undefined when nothing (or nothing usable) was. */
  async readStatus(name: string): Promise<ClusterStatus | undefined> {
    assertClusterName(name);
    const r = await this.#data.readYaml(join(this.#data.statusDir, `${name}.yaml`));
    const d = r.doc as Record<string, unknown> | null | undefined;
    if (r.problem || typeof d !== 'object' || d === null || typeof d.connected !== 'boolean') return undefined;
    // a file like any other: each field is kept only when it is what the proxy writes
    const text = (v: unknown, max: number) =>
      typeof v === 'string' && v.length <= max && /^[\x20-\x7e]*$/.test(v) ? v : undefined;
    const time = (v: unknown) => {
      const t = text(v, 40);
      return t && !Number.isNaN(Date.parse(t)) ? t : undefined;
    };
    return {
      connected: d.connected,
      agents: Number.isSafeInteger(d.agents) && (d.agents as number) >= 0 ? (d.agents as number) : 0,
      since: time(d.since),
      lastSeen: time(d.lastSeen),
      agentVersions: text(d.agentVersions, 1024),
      agentAddresses: text(d.agentAddresses, 1024),
    };
  }

  /** Each cluster with what the proxy last wrote of its agents: counts only while that proxy runs. */
  async report(): Promise<ClusterReport> {
    const location = this.#data.location;
    const record = await this.read();
    const running = pidAlive(record?.pid);
    const rows: ClusterRow[] = [];
    for (const c of await this.#clusters.list()) {
      const st = c.problem ? undefined : await this.readStatus(c.name);
      rows.push({
        name: c.name,
        agents: running ? (st?.agents ?? 0) : undefined,
        connectedSince: st?.since,
        lastSeen: st?.connected && running ? new Date().toISOString() : st?.lastSeen,
        agentVersion: st?.agentVersions,
        agentAddress: st?.agentAddresses,
        note: c.problem ? `unusable record: ${c.problem}` : undefined,
      });
    }
    const last = record?.pid ? ` (the last one was pid ${record.pid})` : '';
    return {
      rows,
      note: running ? undefined : `no proxy is serving ${location}${last}: AGENTS unknown`,
      whenEmpty: `no clusters in ${location} (register one with: tower token NAME)`,
    };
  }
}

const UNIT_BYTES: Record<string, number> = { '': 1, k: 1e3, M: 1e6, G: 1e9, Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30 };
const SIZE = /^(\d+(?:\.\d+)?)(Ki|Mi|Gi|k|M|G)?$/;

/**
 * Parses a size in bytes as Kubernetes writes quantities ("64Mi", "200M", "512Ki", "1048576"), or undefined when
 * malformed.
 */
export function parseSize(text: string): number | undefined {
  const m = SIZE.exec(text.trim());
  if (!m) return undefined;
  const bytes = Math.round(Number(m[1]) * UNIT_BYTES[m[2] ?? '']!);
  return Number.isSafeInteger(bytes) ? bytes : undefined;
}

/** "64Mi", "1Gi", "512Ki", or plain bytes: as the flag would be written. */
export function formatSize(bytes: number): string {
  for (const unit of ['Gi', 'Mi', 'Ki'] as const) {
    if (bytes > 0 && bytes % UNIT_BYTES[unit]! === 0) return `${bytes / UNIT_BYTES[unit]!}${unit}`;
  }
  return String(bytes);
}

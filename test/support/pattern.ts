/**
 * One regular expression written as consecutive parts, so that a long expected message fits in 120 columns:
 * `pattern(/^tower agent: /m, /refused$/m)` is `/^tower agent: refused$/m`. The parts' sources are joined as
 * written; they must share their flags.
 */
export function pattern(...parts: RegExp[]): RegExp {
  const flags = parts[0]?.flags ?? '';
  if (parts.some((part) => part.flags !== flags)) {
    throw new Error(`pattern(): parts with different flags (${parts.map((part) => `/${part.flags}`).join(' ')})`);
  }
  return new RegExp(parts.map((part) => part.source).join(''), flags);
}

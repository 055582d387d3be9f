// How the bench writes a figure and a ratio in its tables.

/** a figure with as many decimals as it deserves; – when there is none */
export function fmt(v: number | undefined): string {
  if (v === undefined || Number.isNaN(v)) return '–';
  return v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2);
}

/** a / b, as "1.23×"; – when either is missing or b is 0 */
export function ratio(a?: number, b?: number): string {
  return a === undefined || b === undefined || !b ? '–' : `${(a / b).toFixed(2)}×`;
}

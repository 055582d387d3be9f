import { StoreError } from '../errors.ts';

const DNS1123_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
export const MAX_NAME_LENGTH = 63;

/** Why `name` is not a valid cluster name (a DNS-1123 label), or undefined when it is. */
export function clusterNameProblem(name: string): string | undefined {
  if (name.length === 0) return 'a cluster name must not be empty';
  if (name.length > MAX_NAME_LENGTH) return `a cluster name has at most ${MAX_NAME_LENGTH} characters`;
  if (!DNS1123_LABEL.test(name)) {
    return 'a cluster name must be a DNS-1123 label: lower-case letters, digits and "-", starting and ending with a letter or digit (e.g. "alpha")';
  }
  return undefined;
}

export function assertClusterName(name: string): string {
  const problem = clusterNameProblem(name);
  if (problem) throw new StoreError('EINVALIDNAME', `invalid cluster name ${JSON.stringify(name)}: ${problem}`);
  return name;
}

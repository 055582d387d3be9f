/** An error meant for people: a stable code and a message that names the thing and the fix. */
export class TowerError extends Error {
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.name = 'TowerError';
    this.code = code;
  }
}

/** Bad configuration: a flag, environment variable or config file value. */
export class ConfigError extends TowerError {
  constructor(message: string) {
    super('ECONFIG', message);
    this.name = 'ConfigError';
  }
}

/** A cluster name, token or record that the store refuses. */
export class StoreError extends TowerError {
  constructor(code: string, message: string) {
    super(code, message);
    this.name = 'StoreError';
  }
}

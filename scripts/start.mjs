// npm start: builds dist/tower when needed, then runs `tower proxy`
// (extra arguments pass through: npm start -- --port 9000).
import { spawn } from 'node:child_process';
import { binary, ensureBuilt } from './lib.mjs';

ensureBuilt();
const child = spawn(binary, ['proxy', ...process.argv.slice(2)], { stdio: 'inherit' });
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => child.kill(sig));
child.on('exit', (code, signal) => process.exit(code ?? (signal ? 1 : 0)));

// Lints and type-checks the repository's Python (the sandbox driver, the zygote, the probe,
// the seccomp generator, the bench's load driver bench/client.py) to the same bar as the
// TypeScript; run by `npm run lint`.
//
// - Ruff, through its WebAssembly build (@astral-sh/ruff-wasm-nodejs: no PyPI, no native
//   binary), with the settings of ruff.toml, over every *.py file git tracks.
// - Pyright (npm), with pyrightconfig.json, over the same files.
//
// Output: one finding per line, `path:line:col: code message` (1-based line and column),
// then a summary on stderr. Exit 0 when both tools find nothing, 1 on findings, 2 when a
// tool could not run (bad config, pyright crash).
//
// Limits: ruff.toml is read as a TOML subset (see parseTomlSubset), and the WebAssembly
// check sees file contents without a file name, so `per-file-ignores` cannot apply: use
// `# noqa: CODE - reason` comments instead.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);
const root = join(dirname(fileURLToPath(import.meta.url)), '..');

/** `[table]` headers and one-line `key = value` pairs whose values are JSON-compatible TOML
 * (double-quoted strings, numbers, booleans, one-line arrays without a trailing comma).
 * Anything else is an error, never silently skipped. */
function parseTomlSubset(text, file) {
  const out = {};
  let table = out;
  text.split('\n').forEach((raw, i) => {
    const line = stripComment(raw).trim();
    if (line === '') return;
    const where = `${file}:${i + 1}`;
    const header = /^\[([A-Za-z0-9_.-]+)\]$/.exec(line);
    if (header) {
      table = out;
      for (const key of header[1].split('.')) table = table[key] ??= {};
      return;
    }
    const pair = /^([A-Za-z0-9_-]+)\s*=\s*(.+)$/.exec(line);
    if (!pair) throw new Error(`${where}: unsupported TOML (lint-python.mjs reads a subset): ${raw}`);
    try {
      table[pair[1]] = JSON.parse(pair[2]);
    } catch {
      throw new Error(`${where}: value must be one-line JSON-compatible TOML: ${pair[2]}`);
    }
  });
  return out;
}

function stripComment(line) {
  let inString = false;
  for (let i = 0; i < line.length; i++) {
    if (inString && line[i] === '\\') i++;
    else if (line[i] === '"') inString = !inString;
    else if (!inString && line[i] === '#') return line.slice(0, i);
  }
  return line;
}

function trackedPythonFiles() {
  const out = execFileSync('git', ['ls-files', '-z', '--', '*.py'], { cwd: root, encoding: 'utf8' });
  return out
    .split('\0')
    .filter((f) => f !== '' && !f.split('/').includes('node_modules') && existsSync(join(root, f)))
    .sort();
}

function runRuff(files) {
  const { Workspace, PositionEncoding } = require('@astral-sh/ruff-wasm-nodejs');
  const settings = parseTomlSubset(readFileSync(join(root, 'ruff.toml'), 'utf8'), 'ruff.toml');
  const workspace = new Workspace(settings, PositionEncoding.Utf16);
  const findings = [];
  for (const file of files) {
    const diagnostics = workspace.check(readFileSync(join(root, file), 'utf8'));
    diagnostics.sort((a, b) => a.start_location.row - b.start_location.row || a.start_location.column - b.start_location.column);
    for (const d of diagnostics) {
      findings.push(`${file}:${d.start_location.row}:${d.start_location.column}: ${d.code ?? 'syntax-error'} ${d.message}`);
    }
  }
  return findings;
}

function runPyright(files) {
  const pyright = join(dirname(require.resolve('pyright/package.json')), 'index.js');
  const run = spawnSync(process.execPath, [pyright, '--outputjson', '--project', 'pyrightconfig.json', ...files], {
    cwd: root,
    encoding: 'utf8',
    maxBuffer: 64 << 20,
  });
  let report;
  try {
    report = JSON.parse(run.stdout);
  } catch {
    report = undefined;
  }
  // Exit codes: 0 clean, 1 errors reported; anything else is a failure to check.
  if (report === undefined || (run.status !== 0 && run.status !== 1)) {
    process.stderr.write(`pyright could not run (exit ${run.status ?? run.signal}):\n${run.stderr}${run.stdout}`);
    process.exit(2);
  }
  return report.generalDiagnostics
    .filter((d) => d.severity === 'error' || d.severity === 'warning')
    .map((d) => {
      const file = d.file ? relative(root, d.file) : '(pyright)';
      const at = d.range ? `${d.range.start.line + 1}:${d.range.start.character + 1}` : '1:1';
      const message = d.message.replace(/\s*\n\s*/g, ' ');
      return `${file}:${at}: ${d.rule ?? d.severity} ${message}`;
    });
}

const files = trackedPythonFiles();
let ruffFindings;
try {
  ruffFindings = runRuff(files);
} catch (err) {
  process.stderr.write(`ruff could not run: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(2);
}
const pyrightFindings = runPyright(files);
for (const line of [...ruffFindings, ...pyrightFindings]) process.stdout.write(`${line}\n`);
process.stderr.write(`lint-python: ${files.length} files; ruff ${ruffFindings.length} findings, pyright ${pyrightFindings.length} findings\n`);
process.exit(ruffFindings.length + pyrightFindings.length > 0 ? 1 : 0);

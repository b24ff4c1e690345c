/**
 * Start-up checks of the sandbox: build the seccomp filter, launch the probe
 * (sandbox-python/probe.py) in a sandbox of each kind the server will use, and compare
 * what each sees from inside with the sandbox description and with the other kinds
 * (probe-compare.ts). The server refuses to start when bubblewrap's sandbox differs from
 * the description (fail closed: never a silently weaker sandbox), with a message that
 * says how to fix it; a template whose sandbox differs is not used.
 */
import { execFile } from 'node:child_process';
import { existsSync, promises as fsp, readdirSync, readFileSync, readlinkSync, realpathSync } from 'node:fs';
import { promisify } from 'node:util';
import type { InterpreterProcess, Launcher } from './launcher.js';
import type { Zygote } from './zygote.js';
import type { SandboxInit } from './launcher.js';
import { finished, type Readable } from 'node:stream';
import { SANDBOX_PATHS, type SandboxSpec } from './spec.js';
import { compareWithSpec, expectedDump, normaliseDump, type Dump, type HostFacts } from './probe-compare.js';
import type { Mounts } from './mounts.js';

const execFileP = promisify(execFile);

export class PreflightError extends Error {
  /** Whether FIX_HINT (bubblewrap, user namespaces, the container's profiles) applies:
   * not to a sandbox that starts but differs from its description. */
  constructor(
    message: string,
    readonly hint = true,
  ) {
    super(message);
  }
}

export const FIX_HINT = [
  'The full sandbox needs bubblewrap (apt-get install bubblewrap) and unprivileged user namespaces',
  '(sysctl kernel.unprivileged_userns_clone=1 where that sysctl exists; user.max_user_namespaces > 0).',
  'In a container, run with the seccomp profile shipped in deploy/seccomp-sandbox.json',
  '(docker run --security-opt seccomp=deploy/seccomp-sandbox.json ...) and, under AppArmor,',
  '--security-opt apparmor=unconfined; see the README section "Security".',
].join('\n');

export async function buildSeccompFilter(python: string, script: string): Promise<Buffer> {
  try {
    const { stdout } = await execFileP(python, [script], { encoding: 'buffer', env: { PATH: '/usr/bin:/bin' }, maxBuffer: 1 << 20 });
    if (stdout.length === 0 || stdout.length % 8 !== 0) throw new Error(`unexpected filter size ${stdout.length}`);
    return stdout;
  } catch (e) {
    throw new PreflightError(`could not build the seccomp filter (needs python3-seccomp): ${(e as Error).message}`);
  }
}

/** The server's own facts the probe's expectations depend on. */
export function hostFacts(privileged: boolean): HostFacts {
  const namespaces: Record<string, string> = {};
  for (const ns of readdirSync('/proc/self/ns')) namespaces[ns] = readlinkSync(`/proc/self/ns/${ns}`);
  return {
    mountinfo: readFileSync('/proc/self/mountinfo', 'utf8'),
    limits: readFileSync('/proc/self/limits', 'utf8'),
    namespaces,
    realpath: (p) => realpathSync(p),
    privileged,
  };
}

/** One kind's probe: its dump, normalised, and where it differs from the spec. */
export interface ProbeReport {
  kind: string;
  dump: Dump;
  differences: string[];
}

const PROBE_FILE = `${SANDBOX_PATHS.driver}/probe.py`;

/** Launches the probe in a bubblewrap sandbox of `spec`; `kind` names it in differences. */
export async function probeBwrap(
  launcher: Launcher,
  spec: SandboxSpec,
  identity: { uid?: number; gid?: number },
  hiddenHostPath: string,
  python: string,
  host: HostFacts,
  kind = 'bwrap',
): Promise<ProbeReport> {
  if (!existsSync('/usr/bin/bwrap')) throw new PreflightError('bubblewrap is not installed (/usr/bin/bwrap missing)');
  const proc = launcher.launch({ spec, identity, argv: [python, '-I', PROBE_FILE, hiddenHostPath] });
  return report(kind, spec, await readDump(proc, proc.stdout, proc.stderr), host);
}

/** Runs the probe in a sandbox of `spec` the interpreter template forks and builds, the
 * way every session interpreter is made. */
export async function probeTemplate(zygote: Zygote, spec: SandboxSpec, identity: { uid?: number; gid?: number }, hiddenHostPath: string, host: HostFacts): Promise<ProbeReport> {
  const proc = zygote.spawn({ spec, uid: identity.uid, gid: identity.gid, probeArgs: [hiddenHostPath] });
  const channel = await proc.control;
  return report('template', spec, await readDump(proc, channel?.output ?? proc.stdout, proc.stderr), host);
}

/** Runs the probe as a command the command template starts in the sandbox of a running
 * template interpreter (`init`), the way every bash command of such a session starts. */
export async function probeCommand(
  commands: Zygote,
  spec: SandboxSpec,
  init: SandboxInit,
  identity: { uid?: number; gid?: number },
  hiddenHostPath: string,
  python: string,
  host: HostFacts,
): Promise<ProbeReport> {
  const box = `probe_${init.pid}`;
  const proc = commands.command({ box, argv: [python, '-I', PROBE_FILE, hiddenHostPath], spec, init, uid: identity.uid, gid: identity.gid });
  try {
    return report('template command', spec, await readDump(proc, proc.stdout, proc.stderr), host);
  } catch (e) {
    if (proc.failedToStart) throw new PreflightError(`the command template could not start a command: ${proc.failure.trim().slice(0, 500)}`, false);
    throw e;
  } finally {
    commands.forget(box);
  }
}

function report(kind: string, spec: SandboxSpec, raw: Dump, host: HostFacts): ProbeReport {
  const dump = normaliseDump(raw, host);
  return { kind, dump, differences: compareWithSpec(kind, dump, expectedDump(spec, host, dump)) };
}

async function readDump(proc: InterpreterProcess, stdout: Readable, stderr: Readable): Promise<Dump> {
  let out = '';
  let err = '';
  stdout.on('data', (d: Buffer) => {
    if (out.length < 1 << 20) out += d.toString('utf8');
  });
  stderr.on('data', (d: Buffer) => {
    if (err.length < 1 << 16) err += d.toString('utf8');
  });
  stdout.resume();
  const timer = setTimeout(() => void proc.kill(), 20_000);
  // The report is complete when its stream ends: every process of the sandbox is gone.
  const [info] = await Promise.all([proc.exited, new Promise<void>((r) => finished(stdout, () => r()))]);
  clearTimeout(timer);
  proc.destroyStreams();
  if (info.exitCode !== 0) throw new PreflightError(`the sandbox did not start (status ${info.exitCode}): ${(err || out).trim().slice(0, 500)}`);
  try {
    return JSON.parse(out) as Dump;
  } catch {
    throw new PreflightError(`the sandbox probe gave no report: ${(err || out).trim().slice(0, 500)}`);
  }
}

/** Leftovers of a server that died without cleaning up (SIGKILL, power loss). */
export async function sweepSessionsRoot(root: string, privileged: boolean, mounts: Pick<Mounts, 'unmountLazy'>, remove: (dir: string) => Promise<void>): Promise<number> {
  const names = await fsp.readdir(root).catch(() => [] as string[]);
  let n = 0;
  for (const name of names) {
    if (!name.startsWith('box_') && !name.startsWith('probe_')) continue;
    const dir = `${root}/${name}`;
    if (privileged) await mounts.unmountLazy(dir);
    await remove(dir);
    n++;
  }
  return n;
}

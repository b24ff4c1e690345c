/**
 * Start-up checks of the sandbox: build the seccomp filter, launch one sandbox with the
 * full flags, and verify from inside that each protection holds. The server refuses to
 * start when any fails (fail closed: never a silently weaker sandbox), with a message
 * that says how to fix it.
 */
import { execFile } from 'node:child_process';
import { existsSync, promises as fsp } from 'node:fs';
import { promisify } from 'node:util';
import type { InterpreterProcess, Launcher } from './launcher.js';
import type { Zygote } from './zygote.js';
import type { Readable } from 'node:stream';
import type { BwrapLayout, ResourceLimits } from './bwrap-args.js';
import { SANDBOX_UID } from './bwrap-args.js';
import { unmountLazy } from './mounts.js';

const execFileP = promisify(execFile);

export class PreflightError extends Error {}

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

export interface ProbeResult {
  protections: string[];
  report: Record<string, unknown>;
}

/** Launches the probe in a real bubblewrap sandbox and checks its report. */
export async function probeSandbox(
  launcher: Launcher,
  layout: BwrapLayout,
  identity: { uid?: number; gid?: number },
  limits: ResourceLimits,
  hiddenHostPath: string,
  python: string,
): Promise<ProbeResult> {
  if (!existsSync('/usr/bin/bwrap')) throw new PreflightError('bubblewrap is not installed (/usr/bin/bwrap missing)');
  const proc = launcher.launch({ layout, identity, limits, argv: [python, '-I', '/opt/sandbox/probe.py', hiddenHostPath] });
  return checkProbe(proc, proc.stdout, proc.stderr);
}

/** Runs the probe in a sandbox the interpreter template forks and builds (zygote.ts), the
 * way every session interpreter is made, and checks its report. */
export async function probeTemplate(zygote: Zygote, layout: BwrapLayout, uid: number, limits: ResourceLimits, hiddenHostPath: string): Promise<ProbeResult> {
  const proc = zygote.spawn({ layout, uid, gid: uid, limits, probeArgs: [hiddenHostPath] });
  const channel = await proc.control;
  return checkProbe(proc, channel?.output ?? proc.stdout, proc.stderr);
}

async function checkProbe(proc: InterpreterProcess, stdout: Readable, stderr: Readable): Promise<ProbeResult> {
  let out = '';
  let err = '';
  stdout.on('data', (d: Buffer) => (out += d.toString('utf8')));
  stderr.on('data', (d: Buffer) => (err += d.toString('utf8')));
  stdout.resume();
  const timer = setTimeout(() => void proc.kill(), 20_000);
  const info = await proc.exited;
  clearTimeout(timer);
  await new Promise((r) => setTimeout(r, 20));
  proc.destroyStreams();
  if (info.exitCode !== 0) throw new PreflightError(`the sandbox did not start (status ${info.exitCode}): ${(err || out).trim().slice(0, 500)}`);
  let report: Record<string, unknown>;
  try {
    report = JSON.parse(out) as Record<string, unknown>;
  } catch {
    throw new PreflightError(`the sandbox probe gave no report: ${(err || out).trim().slice(0, 500)}`);
  }
  const failures: string[] = [];
  const protections: string[] = [];
  const check = (ok: boolean, name: string, failure: string) => (ok ? protections.push(name) : failures.push(failure));
  check(report.uid === SANDBOX_UID, 'non-root uid inside', `uid inside is ${String(report.uid)}`);
  check(report.cap_eff === '0000000000000000', 'no capabilities', `capabilities inside: ${String(report.cap_eff)}`);
  check(report.no_new_privs === '1', 'no_new_privs', 'no_new_privs is not set');
  check(report.seccomp === '2', 'seccomp filter', `seccomp mode is ${String(report.seccomp)}`);
  const env = report.init_environ;
  // bwrap's init shows PATH only; the template's init is not dumpable, so unreadable
  const envHidden = (Array.isArray(env) && env.every((k) => k === 'PATH')) || (typeof env === 'string' && env.startsWith('unreadable'));
  check(envHidden, 'server environment hidden', `the sandbox's /proc/1/environ shows ${JSON.stringify(env)}`);
  check(Array.isArray(report.pids) && (report.pids as number[]).every((p) => p < 10), 'own pid namespace', `host processes visible: ${JSON.stringify(report.pids)}`);
  check(report.host_path_visible === false, 'host file system hidden (allow-list)', 'the sessions root is visible inside the sandbox');
  check(String(report.network).startsWith('blocked'), 'no network', `network reachable: ${String(report.network)}`);
  check(String(report.netlink).startsWith('blocked'), 'socket families filtered', 'netlink sockets allowed');
  check(String(report.unshare_user).startsWith('blocked'), 'no nested namespaces', 'nested user namespaces allowed');
  check(report['writable:/'] === false && report['writable:/usr'] === false && report['writable:/etc'] === false, 'read-only system', 'the system folders are writable');
  check(report.workspace_writable === true, 'writable workspace', 'the workspace is not writable');
  if (failures.length > 0) throw new PreflightError(`the sandbox does not hold:\n  ${failures.join('\n  ')}`);
  return { protections, report };
}

/** Leftovers of a server that died without cleaning up (SIGKILL, power loss). */
export async function sweepSessionsRoot(root: string, privileged: boolean, remove: (dir: string) => Promise<void>): Promise<number> {
  const names = await fsp.readdir(root).catch(() => [] as string[]);
  let n = 0;
  for (const name of names) {
    if (!name.startsWith('box_') && !name.startsWith('probe_')) continue;
    const dir = `${root}/${name}`;
    if (privileged) await unmountLazy(dir);
    await remove(dir);
    n++;
  }
  return n;
}

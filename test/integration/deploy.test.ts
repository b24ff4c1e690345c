/**
 * The deployment files, checked as far as a machine without a cluster or Docker allows:
 * every manifest parses; the names, ports, paths and settings they use are the server's
 * (the config schema, /health, the headless Service the router resolves); the router's
 * ConfigMap holds the same nginx files the scale-out test runs; the image workflow builds
 * both architectures and pushes :latest and :<sha>; make calls the npm scripts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { parseAllDocuments, parse } from 'yaml';
import { describeSettings } from '../../src/config.js';

const ROOT = new URL('../../../', import.meta.url); // dist/test/integration -> the repository
const read = (p: string) => readFileSync(new URL(p, ROOT), 'utf8');
const docs = (p: string): any[] =>
  parseAllDocuments(read(p)).map((d) => {
    assert.deepEqual(d.errors, [], `${p} parses`);
    return d.toJS();
  });

const manifests = readdirSync(new URL('deploy/kubernetes/', ROOT))
  .filter((f) => f.endsWith('.yaml'))
  .flatMap((f) => docs(`deploy/kubernetes/${f}`).map((d) => ({ file: f, ...d })));
const find = (kind: string, name: string) => {
  const m = manifests.find((d) => d.kind === kind && d.metadata?.name === name && !d.file.includes('patch'));
  assert.ok(m, `${kind}/${name}`);
  return m;
};

test('every manifest parses and names its kind, version and name', () => {
  assert.ok(manifests.length >= 7);
  for (const m of manifests) {
    assert.equal(typeof m.apiVersion, 'string', m.file);
    assert.equal(typeof m.kind, 'string', m.file);
    assert.equal(typeof m.metadata?.name, 'string', m.file);
  }
});

test('the StatefulSet: settings the server knows, the sessions root in memory, probes on /health, the replica from the pod name, the token from a Secret', () => {
  const sts = find('StatefulSet', 'otari-sandbox');
  const pod = sts.spec.template.spec;
  const [c] = pod.containers;
  const known = new Set(describeSettings().map((s) => s.env));
  const env = new Map<string, any>(c.env.map((e: any) => [e.name, e]));
  for (const name of env.keys()) assert.ok(known.has(name), `${name} is a setting of the server`);
  assert.equal(env.get('SANDBOX_REPLICA_ID').valueFrom.fieldRef.fieldPath, 'metadata.name');
  assert.deepEqual(env.get('SANDBOX_API_TOKEN').valueFrom.secretKeyRef, { name: 'otari-sandbox-token', key: 'token' });
  const port = Number(env.get('PORT').value);
  assert.equal(c.ports.find((p: any) => p.name === 'http').containerPort, port);
  for (const probe of ['readinessProbe', 'livenessProbe', 'startupProbe']) {
    assert.equal(c[probe].httpGet.path, '/health', probe);
    assert.equal(c[probe].httpGet.port, 'http', probe);
  }
  const root = env.get('SANDBOX_SESSIONS_ROOT').value;
  const mount = c.volumeMounts.find((m: any) => m.mountPath === root);
  assert.ok(mount, 'the sessions root is a volume');
  assert.equal(pod.volumes.find((v: any) => v.name === mount.name).emptyDir.medium, 'Memory');
  assert.ok(c.resources.requests.cpu && c.resources.requests.memory && c.resources.limits.memory);
  assert.equal(c.securityContext.seccompProfile.type, 'Localhost');
  assert.deepEqual(JSON.parse(read('deploy/seccomp-sandbox.json')).defaultAction !== undefined, true, 'the profile the pod names is shipped');
  // The grace the pod gets covers the server's own drain.
  assert.ok(pod.terminationGracePeriodSeconds > Number(env.get('SANDBOX_SHUTDOWN_GRACE_SECONDS').value));
  const headless = find('Service', sts.spec.serviceName);
  assert.equal(headless.spec.clusterIP, 'None');
  for (const svc of [headless, find('Service', 'otari-sandbox')]) assert.deepEqual(svc.spec.selector, sts.spec.template.metadata.labels);
  assert.deepEqual(find('PodDisruptionBudget', 'otari-sandbox').spec.selector.matchLabels, sts.spec.template.metadata.labels);
});

test('the rootless patch runs the server unprivileged in a pod user namespace', () => {
  const patch = docs('deploy/kubernetes/statefulset-rootless.patch.yaml')[0];
  assert.equal(patch.spec.template.spec.hostUsers, false);
  const sc = patch.spec.template.spec.containers[0].securityContext;
  assert.ok(sc.runAsUser > 0 && sc.runAsNonRoot === true);
  assert.deepEqual(sc.capabilities.drop, ['ALL']);
});

test('the router: the kustomization ships the nginx files the scale-out test runs, and they name the StatefulSet pods and Services', () => {
  const k = parse(read('deploy/kustomization.yaml'));
  for (const r of k.resources)
    assert.ok(
      manifests.some((m) => `kubernetes/${m.file}` === r),
      r,
    );
  const files: string[] = k.configMapGenerator.find((g: any) => g.name === 'otari-sandbox-router').files;
  assert.deepEqual(files.sort(), ['nginx/otari-router-kubernetes.conf', 'nginx/otari-routes.conf']);
  const conf = read('deploy/nginx/otari-router-kubernetes.conf');
  const sts = find('StatefulSet', 'otari-sandbox');
  const ns = k.namespace;
  assert.ok(conf.includes(`.${sts.spec.serviceName}.${ns}.svc.cluster.local:8080`), 'per-pod DNS through the headless Service');
  assert.ok(conf.includes(`"otari-sandbox.${ns}.svc.cluster.local:8080"`), 'creates through the ordinary Service');
  const podName = /"~\^\(\?<pod>([^)]*)\)\$"/.exec(conf)?.[1];
  assert.ok(podName && new RegExp(`^${podName}$`).test(`${sts.metadata.name}-0`) && !new RegExp(`^${podName}$`).test('evil'), podName);
  const router = find('Deployment', 'otari-sandbox-router');
  const [c] = router.spec.template.spec.containers;
  assert.ok(c.args.includes('/etc/nginx/otari/otari-router-kubernetes.conf'));
  assert.ok(conf.includes('include /etc/nginx/otari/otari-routes.conf;'));
  assert.equal(c.volumeMounts.find((m: any) => m.name === 'config').mountPath, '/etc/nginx/otari');
});

test('the nginx routes pass nginx -t (with the replica map of a test)', () => {
  const routes = new URL('deploy/nginx/otari-routes.conf', ROOT).pathname;
  const dir = execFileSync('mktemp', ['-d']).toString().trim();
  try {
    const conf = `pid ${dir}/pid; error_log ${dir}/err; events {}
http { access_log off; client_body_temp_path ${dir}/b; proxy_temp_path ${dir}/p; fastcgi_temp_path ${dir}/f; uwsgi_temp_path ${dir}/u; scgi_temp_path ${dir}/s;
map $otari_replica $otari_backend { default ""; } upstream any { server 127.0.0.1:1; } map $host $otari_any { default any; }
server { listen 127.0.0.1:1; include ${routes}; } }`;
    execFileSync('sh', ['-c', `cat > ${dir}/nginx.conf`], { input: conf });
    execFileSync('/usr/sbin/nginx', ['-t', '-q', '-p', dir, '-c', `${dir}/nginx.conf`], { stdio: 'pipe' });
  } finally {
    execFileSync('rm', ['-rf', dir]);
  }
});

test('the image workflow tests, then builds amd64 and arm64 and pushes :latest and :<sha> from main only', () => {
  const wf = parse(read('.github/workflows/image.yml'));
  assert.deepEqual(wf.on.push.branches, ['main']);
  const steps: any[] = wf.jobs.image.steps;
  assert.deepEqual(wf.jobs.image.needs, 'test');
  const build = steps.find((s) => String(s.uses).startsWith('docker/build-push-action'));
  assert.equal(build.with.platforms, 'linux/amd64,linux/arm64');
  assert.match(build.with.tags, /:latest\n/);
  assert.match(build.with.tags, /:\$\{\{ github\.sha \}\}/);
  assert.equal(build.with.push, "${{ github.event_name == 'push' }}");
  assert.ok(steps.some((s) => String(s.uses).startsWith('docker/setup-qemu-action')));
  assert.ok(wf.jobs.test.steps.some((s: any) => String(s.run).includes('.ci/run')));
});

test('make install / test / build / run call the same scripts as npm and CI', () => {
  const dry = (target: string) => execFileSync('make', ['-n', '-s', target], { cwd: new URL('.', ROOT).pathname }).toString();
  assert.match(dry('install'), /^bash scripts\/install\.sh$/m);
  assert.match(dry('test'), /^npm test$/m);
  assert.match(dry('build'), /^docker build -t otari-sandbox-container:dev \.$/m);
  const run = dry('run');
  assert.match(run, /-p 8080:8080/);
  assert.match(run, /seccomp=deploy\/seccomp-sandbox\.json/);
  assert.match(dry('ci'), /^bash \.ci\/run$/m);
});

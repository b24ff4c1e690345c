/**
 * Helpers of the templates (sandbox-python/zygote.py) that need no sandbox, run in a plain
 * python3 that loads the file.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const zygote = fileURLToPath(new URL('../../../sandbox-python/zygote.py', import.meta.url));

test('the templates wait on descriptors past 1023: a template serving hundreds of boxes holds them (select() refused them and ended the command template)', () => {
  const out = execFileSync(
    '/usr/bin/python3',
    [
      '-I',
      '-c',
      [
        'import importlib.util, os, sys',
        's = importlib.util.spec_from_file_location("z", sys.argv[1]); z = importlib.util.module_from_spec(s); s.loader.exec_module(z)',
        'pid = os.fork()',
        'if pid == 0:',
        '    os.read(os.open("/dev/zero", os.O_RDONLY), 1); os.pause()',
        'os.dup2(os.pidfd_open(pid), 1500)',
        'alive = z.readable(1500, 0)',
        'os.kill(pid, 9); os.waitpid(pid, 0)',
        'print(alive, z.readable(1500, 0), z.readable(1500))',
      ].join('\n'),
      zygote,
    ],
    { encoding: 'utf8' },
  );
  assert.equal(out, 'False True True\n');
});

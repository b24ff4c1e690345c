/**
 * Starts the real server (dist/src/main.js, unchanged) for the benchmark. A separate
 * entry only so that the benchmark's server process is not caught by a
 * `pkill -f dist/src/main.js` aimed at other servers running on the same machine.
 */
await import('../src/main.js');

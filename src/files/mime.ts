/**
 * The media type of a file from its name: mime-types' table plus a few types it lacks.
 * Lookups keyed by names from the workspace are Maps (mime-types' own table is a
 * null-prototype object): `x.constructor` or `x.__proto__` is just a name.
 */
import mime from 'mime-types';

const EXTRA_TYPES = new Map<string, string>([
  ['py', 'text/x-python'],
  ['ipynb', 'application/x-ipynb+json'],
  ['parquet', 'application/vnd.apache.parquet'],
  ['log', 'text/plain'],
  ['tsv', 'text/tab-separated-values'],
]);

export function mimeOf(name: string): string | null {
  const ext = name.includes('.') ? name.slice(name.lastIndexOf('.') + 1).toLowerCase() : '';
  const type = EXTRA_TYPES.get(ext) ?? mime.lookup(name);
  return typeof type === 'string' ? type : null;
}

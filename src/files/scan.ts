/**
 * The artifact scan's walk of a workspace (artifacts.ts): path -> "mtime:size:ino:ctime" of
 * every regular file the rule lets in (no component starting with '.', but the top-level
 * spill folder; within MAX_DEPTH levels), with synchronous calls. It runs on a thread of
 * its own (scan-pool.ts, scan-worker.ts), never on the event loop: its calls need the
 * kernel's locks on the workspace's folders, which the session's code can hold for
 * seconds (fourth red team of 2026-12-03: the loop waited in the session's own scan up to
 * 3.9 s at a time, and every other session with it).
 *
 * The workspace is hostile: every folder is opened relative to its parent's fd with
 * O_NOFOLLOW (through /proc/self/fd, as workspace-fs.ts), files are lstat()ed through that
 * fd, never followed. Bounded by `maxEntries` names (a folder counts FOLDER_COST) and
 * SCAN_MAX_NAME_BYTES bytes of names, and MAX_DEPTH levels (one fd each).
 */
import { closeSync, constants as C, lstatSync, openSync, opendirSync, type Dir } from 'node:fs';
import { SPILL_DIR } from './spill.js';
import { fileSignature } from './workspace-fs.js';

const DIR_FLAGS = C.O_RDONLY | C.O_DIRECTORY | C.O_NOFOLLOW;
/** Folder levels the scan descends at most (it holds one fd per level). */
export const MAX_DEPTH = 32;
/** What a folder counts against SANDBOX_ARTIFACTS_SCAN_MAX_ENTRIES: two opens, a read and
 * two closes cost about three to four times a file's lstat (bench: 31 us a folder, 10 us a
 * file, on a loaded 2-core machine). */
export const FOLDER_COST = 4;
/** Bytes of workspace-relative names one scan looks at, at most (with
 * SANDBOX_ARTIFACTS_SCAN_MAX_ENTRIES, what a call's scan holds and sorts). */
export const SCAN_MAX_NAME_BYTES = 1024 * 1024;

export interface Scan {
  files: Map<string, string>;
  /** The walk stopped at a bound (entries or depth): files past it were not looked at.
   * 'stuck': the workspace did not answer in time (scan-pool.ts); nothing was looked at. */
  truncated: false | 'entries' | 'names' | 'depth' | 'stuck';
}

const at = (fd: number, name: string) => `/proc/self/fd/${fd}/${name}`;

export function scanWorkspace(workspaceDir: string, maxEntries: number): Scan {
  const files = new Map<string, string>();
  let examined = 0;
  let nameBytes = 0;
  let truncated: Scan['truncated'] = false;
  const walk = (fd: number, prefix: string, depth: number): void => {
    let dir: Dir;
    try {
      dir = opendirSync(`/proc/self/fd/${fd}`);
    } catch {
      return;
    }
    try {
      for (let d = dir.readSync(); d !== null; d = dir.readSync()) {
        if (++examined > maxEntries) {
          truncated = 'entries';
          return;
        }
        const name = d.name;
        if (name.startsWith('.') && !(depth === 0 && name === SPILL_DIR)) continue;
        const rel = prefix + name;
        // What a scan holds is bounded by its names' bytes too, not only their count.
        nameBytes += rel.length;
        if (nameBytes > SCAN_MAX_NAME_BYTES) {
          truncated = 'names';
          return;
        }
        if (d.isDirectory()) {
          if (depth + 1 >= MAX_DEPTH) {
            truncated ||= 'depth';
            continue;
          }
          // A folder costs several names' work (FOLDER_COST): counted before it is opened.
          examined += FOLDER_COST - 1;
          if (examined > maxEntries) {
            truncated = 'entries';
            return;
          }
          let sub: number;
          try {
            sub = openSync(at(fd, name), DIR_FLAGS);
          } catch {
            continue; // replaced by a link since readdir, or gone
          }
          try {
            walk(sub, `${rel}/`, depth + 1);
          } finally {
            closeSync(sub);
          }
          if (truncated === 'entries' || truncated === 'names') return;
        } else if (d.isFile()) {
          // Through the folder's open handle, never by its path: a folder swapped for a
          // link since it was opened cannot make the scan stat a host file, and a path too
          // long for the kernel is no error. A name that vanished or changed kind is
          // skipped.
          let st;
          try {
            st = lstatSync(at(fd, name), { throwIfNoEntry: false });
          } catch {
            continue;
          }
          if (st?.isFile()) files.set(rel, fileSignature(st));
        }
      }
    } finally {
      dir.closeSync();
    }
  };
  let root: number;
  try {
    root = openSync(workspaceDir, DIR_FLAGS);
  } catch {
    return { files, truncated };
  }
  try {
    walk(root, '', 0);
  } finally {
    closeSync(root);
  }
  return { files, truncated };
}

/**
 * Named points in the writers where a test can kill moe: with MOE_CRASH_AT=<phase> in the environment, the process
 * SIGKILLs itself when it reaches that phase, so crash-safety trials are deterministic, one per phase, instead of
 * kills at random times (test/reliability/crash.test.ts). Unset (always, outside tests), it does nothing.
 */

/** In the order a folder output reaches them; the last two only when --force replaces an existing folder. */
export const CRASH_PHASES = [
  'after-create', // the temporary folder exists, nothing in it
  'mid-shard', // the first tensor is written, its shard still open
  'after-first-shard', // the first shard is closed, the next not yet opened (outputs of two or more shards)
  'before-verify', // every file is written, the re-open check has not run
  'before-rename', // moe's marker is written, the folder not yet renamed into place
  'between-renames', // the existing destination is moved aside, the new folder not yet renamed into place
  'before-remove-old', // the new folder is in place, the replaced one not yet removed
] as const;
export type CrashPhase = (typeof CRASH_PHASES)[number];

export function crashPoint(phase: CrashPhase): void {
  if (process.env.MOE_CRASH_AT === phase) process.kill(process.pid, 'SIGKILL');
}

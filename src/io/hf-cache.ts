/**
 * Models in the local Hugging Face cache, in the layout huggingface_hub writes (`hf download`, snapshot_download):
 *
 *   CACHE/models--ORG--NAME/refs/main              the commit the branch (or tag) points to, as text
 *   CACHE/models--ORG--NAME/snapshots/COMMIT/…     the files, relative symlinks to ../../blobs/HASH
 *   CACHE/models--ORG--NAME/blobs/HASH             the contents
 *
 * CACHE is chosen as huggingface_hub's constants.py does: HF_HUB_CACHE (or the older HUGGINGFACE_HUB_CACHE), else
 * HF_HOME/hub, else XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub. A revision is looked up as
 * huggingface_hub's try_to_load_from_cache does: refs/REVISION when that exists, else a snapshot folder of that
 * name (a commit hash). moe reads the cache and never downloads.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { CheckpointError } from '../errors';

/** `ORG/NAME` or `ORG/NAME@REVISION`, as the Hub spells repository ids (huggingface_hub's validate_repo_id). */
const REPO_ID = /^([A-Za-z0-9][\w.-]{0,95})\/([A-Za-z0-9][\w.-]{0,95})(?:@([\w.][\w./-]*))?$/;

export interface RepoSpec {
  org: string;
  name: string;
  /** The revision asked for (`main` when none). */
  revision: string;
  explicitRevision: boolean;
}

/** A repository id (with an optional @revision), or undefined when the text is not shaped like one. */
export function parseRepoId(spec: string): RepoSpec | undefined {
  const m = REPO_ID.exec(spec);
  if (!m) return undefined;
  const [, org, name, rev] = m;
  // huggingface_hub refuses "--" and ".." in ids; a revision never climbs out of refs/ or snapshots/.
  if ([org, name].some((s) => s.includes('--') || s.includes('..') || s.endsWith('.') || s.endsWith('-')))
    return undefined;
  if (rev !== undefined && rev.split('/').some((p) => p === '' || p === '.' || p === '..')) return undefined;
  // A missing `out/model.gguf` or `dir/model.safetensors` is a missing file, not a repository.
  if (/\.(gguf|safetensors|json|bin)$/i.test(name)) return undefined;
  return { org, name, revision: rev ?? 'main', explicitRevision: rev !== undefined };
}

function expandHome(p: string): string {
  return p === '~' || p.startsWith('~/') ? path.join(os.homedir(), p.slice(1)) : p;
}

/** The hub cache folder huggingface_hub would use with this environment. */
export function hubCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  const hub = env.HF_HUB_CACHE || env.HUGGINGFACE_HUB_CACHE;
  if (hub) return path.resolve(expandHome(hub));
  const home = env.HF_HOME || path.join(env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'), 'huggingface');
  return path.resolve(expandHome(home), 'hub');
}

/** The folder of a repository in a cache: models--ORG--NAME. */
export function repoFolder(cache: string, spec: RepoSpec): string {
  return path.join(cache, `models--${spec.org}--${spec.name}`);
}

const isDir = (p: string) => fs.statSync(p, { throwIfNoEntry: false })?.isDirectory() === true;

/**
 * The snapshot folder a repository id names in the cache, or a CheckpointError naming every folder looked in and
 * the command that downloads it.
 */
export function snapshotFor(
  spec: RepoSpec,
  given: string,
  local: string,
  env: NodeJS.ProcessEnv = process.env,
): string {
  const id = `${spec.org}/${spec.name}`;
  const repo = repoFolder(hubCacheDir(env), spec);
  const download = `hf download ${id}${spec.explicitRevision ? ` --revision ${spec.revision}` : ''}`;
  const missing = (why: string, lookedIn: string[]) =>
    new CheckpointError(`model ${given} is not a folder, and ${why} (looked in ${lookedIn.join(', ')})`, {
      hint: `moe never downloads: run \`${download}\` (it fills the same cache), or give the model's folder`,
    });
  if (!isDir(repo)) throw missing(`${id} is not in the Hugging Face cache`, [local, repo]);
  const ref = path.join(repo, 'refs', spec.revision);
  let commit = spec.revision;
  if (fs.statSync(ref, { throwIfNoEntry: false })?.isFile()) commit = fs.readFileSync(ref, 'utf8').trim();
  const snapshot = path.join(repo, 'snapshots', commit);
  if (commit === '' || commit.includes('/') || commit.includes('..') || !isDir(snapshot)) {
    const which =
      commit === spec.revision ? `revision "${spec.revision}"` : `revision "${spec.revision}" (commit ${commit})`;
    throw missing(`the Hugging Face cache holds no snapshot of ${id} at ${which}`, [
      local,
      ref,
      path.join(repo, 'snapshots', commit || spec.revision),
    ]);
  }
  return snapshot;
}

/**
 * MODEL as given on the command line or in a recipe (relative to `base`): a folder when one exists at that path,
 * else a repository id found in the local Hugging Face cache. Returns an absolute folder.
 */
export function resolveModel(given: string, base = process.cwd()): string {
  const local = path.resolve(base, given);
  if (fs.existsSync(local)) return local;
  const spec = parseRepoId(given);
  if (!spec) throw new CheckpointError('model folder does not exist', { file: given, hint: 'check the path' });
  return snapshotFor(spec, given, local);
}

/**
 * A model named in a file such as a recipe (relative to `dir`, the file's folder): a folder, else a repository id in
 * the local Hugging Face cache. A missing one is bad input (exit 3), its message starting with `where` (the line).
 */
export function modelNamedIn(given: string, dir: string, where: string, file: string): string {
  const local = path.resolve(dir, given);
  if (fs.existsSync(local)) return local;
  const spec = parseRepoId(given);
  if (!spec)
    throw new CheckpointError(`${where}: the model folder ${local} does not exist`, {
      file,
      hint: 'fix the path (relative to the folder of that file), or give a repository id (ORG/NAME) that is in the Hugging Face cache',
    });
  try {
    return snapshotFor(spec, given, local);
  } catch (e) {
    if (e instanceof CheckpointError) throw new CheckpointError(`${where}: ${e.message}`, { file, hint: e.hint });
    throw e;
  }
}

/**
 * When `realDir` (a real path) is a snapshot of a cached repository (…/models--ORG--NAME/snapshots/REV), the real
 * path of that repository's blobs/ folder, which its files link into; otherwise undefined.
 */
export function snapshotBlobs(realDir: string): string | undefined {
  const snapshots = path.dirname(realDir);
  const repo = path.dirname(snapshots);
  if (path.basename(snapshots) !== 'snapshots' || !path.basename(repo).startsWith('models--')) return undefined;
  try {
    return fs.realpathSync(path.join(repo, 'blobs'));
  } catch {
    return undefined;
  }
}

/** A short name for a model folder: ORG/NAME@REV for a cache snapshot, else the folder's name. */
export function modelName(dir: string): string {
  const snapshots = path.dirname(dir);
  const m = /^models--(.+?)--(.+)$/.exec(path.basename(path.dirname(snapshots)));
  if (path.basename(snapshots) === 'snapshots' && m) return `${m[1]}/${m[2]}@${path.basename(dir).slice(0, 12)}`;
  return path.basename(dir);
}

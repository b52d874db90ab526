/**
 * Models where users keep them (issue 16): a Hugging Face cache snapshot (files are relative symlinks into the
 * repository's blobs/) and a repository id (ORG/NAME, ORG/NAME@REVISION) resolved from the local cache, never
 * downloaded. The cache is built here from fixtures/tiny-moe in the layout huggingface_hub writes.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { convert } from '../../src/commands/convert';
import { evalCommand } from '../../src/commands/eval';
import { formatInspect, inspect } from '../../src/commands/inspect';
import { openCheckpoint } from '../../src/io/checkpoint';
import { hubCacheDir, parseRepoId, resolveModel } from '../../src/io/hf-cache';
import { loadRecipe } from '../../src/commands/recipe';
import { quiet, ROOT, runMain, tmpDir } from '../helpers';

const TINY = path.join(ROOT, 'fixtures', 'tiny-moe');
const EVAL_TEXT = path.join(ROOT, 'fixtures', 'text', 'eval.txt');
const COMMIT = 'c0ffee0123456789abcdef0123456789abcdef01';
const OLD_COMMIT = '0ld0000000000000000000000000000000000000';

/** models--acme--tiny-moe in `cache`: blobs named by content hash, snapshot files linked to ../../blobs/HASH. */
function addRepo(cache: string, repoName: string, commit: string, files: string[], ref = 'main'): string {
  const repo = path.join(cache, repoName);
  const snap = path.join(repo, 'snapshots', commit);
  fs.mkdirSync(path.join(repo, 'blobs'), { recursive: true });
  fs.mkdirSync(snap, { recursive: true });
  fs.mkdirSync(path.join(repo, 'refs'), { recursive: true });
  for (const f of files) {
    const bytes = fs.readFileSync(path.join(TINY, f));
    const hash = createHash('sha256').update(bytes).digest('hex');
    const blob = path.join(repo, 'blobs', hash);
    if (!fs.existsSync(blob)) fs.writeFileSync(blob, bytes);
    fs.symlinkSync(path.join('..', '..', 'blobs', hash), path.join(snap, f));
  }
  fs.writeFileSync(path.join(repo, 'refs', ref), commit);
  return snap;
}

const FILES = ['config.json', 'generation_config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json'];

let cache: string;
let snapshot: string;
const saved = { HF_HUB_CACHE: process.env.HF_HUB_CACHE, HUGGINGFACE_HUB_CACHE: process.env.HUGGINGFACE_HUB_CACHE };

beforeAll(() => {
  cache = path.join(tmpDir('moe-hf-'), 'hub');
  snapshot = addRepo(cache, 'models--acme--tiny-moe', COMMIT, FILES);
  // A second, older snapshot reachable by its commit hash only (refs/main points at COMMIT).
  fs.mkdirSync(path.join(cache, 'models--acme--tiny-moe', 'snapshots', OLD_COMMIT));
  for (const f of FILES)
    fs.symlinkSync(
      fs.readlinkSync(path.join(snapshot, f)),
      path.join(cache, 'models--acme--tiny-moe', 'snapshots', OLD_COMMIT, f),
    );
  process.env.HF_HUB_CACHE = cache;
  delete process.env.HUGGINGFACE_HUB_CACHE;
});

afterAll(() => {
  for (const [k, v] of Object.entries(saved)) {
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
});

describe('repository ids', () => {
  test('parsed as huggingface_hub spells them; paths are not ids', () => {
    expect(parseRepoId('Qwen/Qwen3-30B-A3B')).toEqual({
      org: 'Qwen',
      name: 'Qwen3-30B-A3B',
      revision: 'main',
      explicitRevision: false,
    });
    expect(parseRepoId('acme/tiny-moe@v1.0')).toEqual({
      org: 'acme',
      name: 'tiny-moe',
      revision: 'v1.0',
      explicitRevision: true,
    });
    for (const notId of [
      './nope',
      'nope',
      '/abs/x',
      '../a/b',
      'a/b/c',
      'a--b/c',
      'a/b@../x',
      'a/..',
      'a/b@',
      'out/model.gguf',
      'm/model.safetensors',
    ])
      expect(parseRepoId(notId)).toBeUndefined();
  });

  test('the cache folder: HF_HUB_CACHE, else HF_HOME/hub, else XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub', () => {
    expect(hubCacheDir({ HF_HUB_CACHE: '/c/hub', HF_HOME: '/h' })).toBe('/c/hub');
    expect(hubCacheDir({ HF_HOME: '/h' })).toBe('/h/hub');
    expect(hubCacheDir({ XDG_CACHE_HOME: '/x' })).toBe('/x/huggingface/hub');
    expect(hubCacheDir({})).toBe(path.join(os.homedir(), '.cache', 'huggingface', 'hub'));
    expect(hubCacheDir({ HF_HOME: '~/hf' })).toBe(path.join(os.homedir(), 'hf', 'hub'));
  });

  test('ORG/NAME, @main and @COMMIT resolve to the snapshot; a folder of that relative path wins', () => {
    expect(resolveModel('acme/tiny-moe')).toBe(snapshot);
    expect(resolveModel('acme/tiny-moe@main')).toBe(snapshot);
    expect(resolveModel(`acme/tiny-moe@${OLD_COMMIT}`)).toBe(
      path.join(cache, 'models--acme--tiny-moe', 'snapshots', OLD_COMMIT),
    );
    const base = tmpDir();
    fs.mkdirSync(path.join(base, 'acme', 'tiny-moe'), { recursive: true });
    expect(resolveModel('acme/tiny-moe', base)).toBe(path.join(base, 'acme', 'tiny-moe'));
  });

  test('inspect ORG/NAME equals inspect of the plain folder, and names the repository', () => {
    const a = inspect({ model: 'acme/tiny-moe' });
    const b = inspect({ model: TINY });
    expect(a.model).toBe(snapshot);
    expect({ ...a, model: '' }).toEqual({ ...b, model: '' });
    expect(formatInspect(a)).toContain(`model          acme/tiny-moe@${COMMIT.slice(0, 12)} (qwen3_moe)`);
  });

  test("eval ORG/NAME@main gives the plain folder's numbers, in process and through the CLI", async () => {
    const opts = { data: EVAL_TEXT, seqLen: 64, maxTokens: 256 };
    const a = await evalCommand({ ...opts, model: 'acme/tiny-moe@main', baseline: 'acme/tiny-moe' }, quiet);
    const b = await evalCommand({ ...opts, model: TINY, baseline: TINY }, quiet);
    expect(a.loss).toBe(b.loss);
    expect(a.perplexity).toBe(b.perplexity);
    expect(a.positions).toBe(b.positions);
    expect(a.size).toEqual(b.size);
    expect(a.baseline).toEqual({ ...b.baseline, model: snapshot });
    expect(a.baseline!.kl_mean).toBe(0);
    const r = await runMain([
      'eval',
      'acme/tiny-moe@main',
      '--data',
      EVAL_TEXT,
      '--seq-len',
      '64',
      '--max-tokens',
      '256',
      '--baseline',
      'acme/tiny-moe',
      '--json',
    ]);
    expect(r.stderr).not.toMatch(/^moe: /m);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ model: snapshot, perplexity: b.perplexity });
  });

  test('outputs written from a snapshot hold regular files with the contents, not links', async () => {
    const out = path.join(tmpDir(), 'out');
    await convert({ model: 'acme/tiny-moe', output: out }, quiet);
    for (const f of fs.readdirSync(out)) expect([f, fs.lstatSync(path.join(out, f)).isFile()]).toEqual([f, true]);
    // Buffer.equals: jest's toEqual on megabytes of Buffer takes minutes.
    const same = (f: string) => fs.readFileSync(path.join(out, f)).equals(fs.readFileSync(path.join(TINY, f)));
    expect(
      ['tokenizer.json', 'tokenizer_config.json', 'generation_config.json', 'model.safetensors'].filter(
        (f) => !same(f),
      ),
    ).toEqual([]);
  });

  test("a recipe's model: and eval baseline: take repository ids", () => {
    const dir = tmpDir();
    const file = path.join(dir, 'r.yaml');
    fs.writeFileSync(
      file,
      `model: acme/tiny-moe\noutput: out\nsteps:\n  - eval: { data: ${EVAL_TEXT}, baseline: acme/tiny-moe@${OLD_COMMIT} }\n`,
    );
    expect(loadRecipe(file).model).toBe(snapshot);
    fs.writeFileSync(
      file,
      `model: acme/tiny-moe\noutput: out\nsteps:\n  - eval: { data: ${EVAL_TEXT}, baseline: acme/gone }\n`,
    );
    expect(() => loadRecipe(file)).toThrow(
      expect.objectContaining({
        exitCode: 3,
        message: expect.stringMatching(
          /^r\.yaml line 4: eval\.baseline: model acme\/gone is not a folder, and acme\/gone is not in the Hugging Face cache \(looked in .*models--acme--gone\)/,
        ),
      }),
    );
  });
});

describe('absent models', () => {
  test('a repository id not in the cache: exit 3 naming every folder looked in and the command that downloads it; nothing downloaded', async () => {
    const work = tmpDir();
    const r = await runMain(['inspect', 'acme/absent'], work);
    expect(r.code).toBe(3);
    expect(r.stderr.trim()).toBe(
      `moe: model acme/absent is not a folder, and acme/absent is not in the Hugging Face cache (looked in ${path.join(work, 'acme', 'absent')}, ${path.join(cache, 'models--acme--absent')}); moe never downloads: run \`hf download acme/absent\` (it fills the same cache), or give the model's folder`,
    );
    expect(fs.existsSync(path.join(cache, 'models--acme--absent'))).toBe(false);
    expect(fs.readdirSync(work)).toEqual([]);
  });

  test('a revision the cache lacks names refs/REV and the snapshot folder, and hf download --revision', () => {
    expect(() => openCheckpoint('acme/tiny-moe@v9')).toThrow(
      expect.objectContaining({
        exitCode: 3,
        message: `model acme/tiny-moe@v9 is not a folder, and the Hugging Face cache holds no snapshot of acme/tiny-moe at revision "v9" (looked in ${path.resolve('acme/tiny-moe@v9')}, ${path.join(cache, 'models--acme--tiny-moe', 'refs', 'v9')}, ${path.join(cache, 'models--acme--tiny-moe', 'snapshots', 'v9')})`,
        hint: expect.stringContaining('`hf download acme/tiny-moe --revision v9`'),
      }),
    );
  });

  test('refs/main pointing at a snapshot that is not there', () => {
    const c = path.join(tmpDir(), 'hub');
    addRepo(c, 'models--acme--tiny-moe', COMMIT, ['config.json']);
    fs.writeFileSync(path.join(c, 'models--acme--tiny-moe', 'refs', 'main'), 'f'.repeat(40));
    process.env.HF_HUB_CACHE = c;
    try {
      expect(() => openCheckpoint('acme/tiny-moe')).toThrow(
        expect.objectContaining({
          exitCode: 3,
          message: expect.stringContaining(
            `no snapshot of acme/tiny-moe at revision "main" (commit ${'f'.repeat(40)})`,
          ),
        }),
      );
    } finally {
      process.env.HF_HUB_CACHE = cache;
    }
  });

  test('a missing plain folder is bad input (exit 3)', async () => {
    const r = await runMain(['inspect', './nope'], tmpDir());
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(/^moe: model folder does not exist \(\.\/nope\); check the path/);
  });
});

describe('links in a snapshot', () => {
  /** A copy of the snapshot in another repository of the same cache, with `file` linked to `target`. */
  function snapshotWith(file: string, target: (repo: string) => string): string {
    const repoName = `models--acme--bad${Math.random().toString(36).slice(2, 8)}`;
    const snap = addRepo(
      cache,
      repoName,
      COMMIT,
      FILES.filter((f) => f !== file),
    );
    fs.symlinkSync(target(path.join(cache, repoName)), path.join(snap, file));
    return snap;
  }

  test("a link out of the repository's blobs/ is refused, naming the file and where it leads", () => {
    const outside = path.join(tmpDir(), 'config.json');
    fs.copyFileSync(path.join(TINY, 'config.json'), outside);
    const snap = snapshotWith('config.json', () => outside);
    expect(() => openCheckpoint(snap)).toThrow(
      expect.objectContaining({
        exitCode: 3,
        message: `file "config.json" resolves outside the model folder and its repository's blobs/ folder (to ${fs.realpathSync(outside)})`,
      }),
    );
  });

  test("a link into another repository's blobs/ is refused", () => {
    const otherBlob = path.join(
      cache,
      'models--acme--tiny-moe',
      'blobs',
      path.basename(fs.readlinkSync(path.join(snapshot, 'model.safetensors'))),
    );
    const snap = snapshotWith('model.safetensors', () => otherBlob);
    expect(() => openCheckpoint(snap)).toThrow(
      expect.objectContaining({
        exitCode: 3,
        message: expect.stringMatching(
          /^shard "model\.safetensors" resolves outside the model folder and its repository's blobs\/ folder/,
        ),
      }),
    );
  });

  test('links into a folder named blobs/ beside a folder that is not a cache snapshot are refused', () => {
    const root = tmpDir();
    fs.mkdirSync(path.join(root, 'blobs'));
    fs.mkdirSync(path.join(root, 'model'));
    for (const f of FILES) {
      fs.copyFileSync(path.join(TINY, f), path.join(root, 'blobs', f));
      fs.symlinkSync(path.join('..', 'blobs', f), path.join(root, 'model', f));
    }
    expect(() => openCheckpoint(path.join(root, 'model'))).toThrow(
      expect.objectContaining({
        exitCode: 3,
        message: expect.stringMatching(/^file "config\.json" resolves outside the model folder \(to /),
      }),
    );
  });
});

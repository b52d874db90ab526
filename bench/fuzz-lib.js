/**
 * Seeded random mutations of a checkpoint's safetensors headers and model.safetensors.index.json (issue 11), for
 * test/reliability/fuzz.test.ts (a few hundred cases) and bench/fuzz.js (the full 10,000). Independent of src/:
 * its own PRNG, its own header parser, so it can check what the reader returns.
 *
 * A model is `{ files: { name: Buffer } }`: config.json, the shards and the index when there is one.
 * `mutate(model, rng)` returns `{ kind, files }`, a changed copy; `writeModel` puts it in a folder.
 */
'use strict';
const fs = require('node:fs');
const path = require('node:path');

const INDEX = 'model.safetensors.index.json';
const DTYPE_BYTES = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  F8_E4M3: 1,
  F8_E5M2: 1,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U8: 1,
  BOOL: 1,
};

/** mulberry32: small, fast and seeded; `rng.int(n)` in [0, n), `rng.pick(list)`. */
function prng(seed) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  next.int = (n) => Math.floor(next() * n);
  next.pick = (list) => list[next.int(list.length)];
  return next;
}

function readModel(dir) {
  const files = {};
  for (const name of fs.readdirSync(dir).sort())
    if (name === 'config.json' || name === INDEX || name.endsWith('.safetensors'))
      files[name] = fs.readFileSync(path.join(dir, name));
  return { files };
}

function writeModel(dir, files) {
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  for (const [name, data] of Object.entries(files)) fs.writeFileSync(path.join(dir, name), data);
}

/** Splits a safetensors file into its header length, header text and data (no validation). */
function split(buf) {
  const n = Number(buf.readBigUInt64LE(0));
  return { n, header: buf.subarray(8, 8 + n).toString('utf8'), data: buf.subarray(8 + n) };
}

function join(headerText, data, n) {
  const text = Buffer.isBuffer(headerText) ? headerText : Buffer.from(headerText, 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(n ?? text.length));
  return Buffer.concat([len, text, data]);
}

/** A JSON object's text with key `dup` written twice: first `first`, then the original value (JSON.parse keeps the last). */
function withDuplicate(obj, dup, first) {
  const parts = Object.entries(obj).map(([k, v]) => `${JSON.stringify(k)}:${JSON.stringify(v)}`);
  const i = Object.keys(obj).indexOf(dup);
  parts.splice(i, 0, `${JSON.stringify(dup)}:${JSON.stringify(first)}`);
  return `{${parts.join(',')}}`;
}

function deep(depth, leaf) {
  return '['.repeat(depth) + JSON.stringify(leaf) + ']'.repeat(depth);
}

/** Stands for a value nested a million deep in a header; replaced in the header's text. */
const DEEP_MARK = '@@deep@@';

const HUGE = [2 ** 53, 2 ** 53 + 2, 1e300, Number.MAX_SAFE_INTEGER, 2 ** 32, 2 ** 31];
const BAD_DTYPES = [
  'Q4_K',
  'f32',
  'bf16',
  '',
  'F32 ',
  'float32',
  null,
  7,
  true,
  ['F32'],
  { dtype: 'F32' },
  'F8_E4M3FN',
  'U16',
  'C64',
  'BOOL',
  'I64',
  'U8',
  'F64',
  '__proto__',
  'constructor',
  'toString',
];
const BAD_NAMES = [
  '../model-00001-of-00002.safetensors',
  '../../etc/passwd',
  '/etc/passwd',
  '/dev/zero',
  '.',
  '..',
  '',
  'sub/dir.safetensors',
  'model-00009-of-00009.safetensors',
  'config.json',
  'model.safetensors.index.json',
  'C:\\x.safetensors',
  '\u0000.safetensors',
  'mödel.safetensors',
  'model.safetensors/',
];

/** Mutations of one tensor entry `e` (a parsed header value); `ctx` gives its neighbours. Each returns a label. */
const ENTRY = [
  (e, r) => ((e.dtype = r.pick(BAD_DTYPES)), 'dtype'),
  (e, r) => (
    (e.shape = r.pick([
      [-1],
      [1.5],
      [2 ** 53],
      [1e20, 0],
      ['3'],
      [[2]],
      [],
      null,
      '2x3',
      [2, -0],
      [NaN],
      {},
      [null],
      [true],
      [...e.shape, 1],
      [...e.shape, 2],
      e.shape.slice(1),
      [...e.shape].reverse(),
      e.shape.map((d) => d * 2),
      [0],
    ])),
    'shape'
  ),
  (e, r) => ((e.shape = JSON.parse(deep(1 + r.int(5000), 1))), 'shape nested'),
  // Deeper than the stack: the text is put in by mutate() (JSON.stringify can't write it).
  (e, r) => ((e[r.pick(['shape', 'dtype', 'data_offsets'])] = DEEP_MARK), 'value nested 1e6 deep'),
  (e, r) => {
    const [b, x] = e.data_offsets;
    e.data_offsets = r.pick([
      [x, b],
      [b, b],
      [b, x + 1],
      [b + 1, x + 1],
      [b - 1, x - 1],
      [b, 1e18],
      [b, r.pick(HUGE)],
      [String(b), String(x)],
      [b],
      [b, x, x],
      [],
      null,
      'x',
      [-1, x - b - 1],
      [b + 0.5, x + 0.5],
      [b, null],
      { 0: b, 1: x },
      [0, x - b],
    ]);
    return 'data_offsets';
  },
  (e) => (delete e.data_offsets, 'data_offsets missing'),
  (e) => (delete e.dtype, 'dtype missing'),
  (e) => (delete e.shape, 'shape missing'),
  (e, r) => (
    (e[r.pick(['extra', 'data_offsets ', '__proto__', 'Dtype'])] = r.pick([1, 'x', null, [1]])),
    'extra field'
  ),
];

/** Mutations of a parsed header `h` (an object); they return a label, or [label, text] for text the JSON can't express. */
const HEADER = [
  (h, r) => {
    const names = tensorNames(h);
    const e = h[r.pick(names)];
    return `entry ${r.pick(ENTRY)(e, r, h)}`;
  },
  (h, r) => {
    const names = tensorNames(h);
    const a = h[r.pick(names)];
    const b = h[r.pick(names)];
    a.data_offsets = [...b.data_offsets];
    return 'offsets copied from another tensor';
  },
  (h, r) => {
    const names = tensorNames(h);
    const a = r.pick(names);
    const b = r.pick(names);
    [h[a].data_offsets, h[b].data_offsets] = [h[b].data_offsets, h[a].data_offsets];
    return 'offsets swapped';
  },
  (h, r) => (delete h[r.pick(tensorNames(h))], 'tensor removed'),
  (h, r) => {
    const name = r.pick(tensorNames(h));
    const e = h[name];
    delete h[name];
    h[
      r.pick([name + '.x', name.replace(/\d+/, '99'), name.toUpperCase(), `${name}\u00e9`, `${name}\ud83d\ude00`, ''])
    ] = e;
    return 'tensor renamed';
  },
  (h, r) => {
    const name = r.pick(tensorNames(h));
    return [
      'duplicate key',
      withDuplicate(h, name, r.pick([{ dtype: 'F32', shape: [1], data_offsets: [0, 4] }, h[name], 'x'])),
    ];
  },
  (h, r) => {
    const e = h[r.pick(tensorNames(h))];
    h['extra.tensor'] = {
      dtype: e.dtype,
      shape: e.shape,
      data_offsets: r.pick([e.data_offsets, [e.data_offsets[1], e.data_offsets[1]]]),
    };
    return 'extra tensor';
  },
  (h, r) => ((h[r.pick(tensorNames(h))] = r.pick([null, 1, 'x', [], true])), 'entry not an object'),
  (h, r) => {
    h.__metadata__ = r.pick([
      null,
      [],
      'pt',
      1,
      { format: 1 },
      { format: null },
      { format: { a: 1 } },
      { format: ['pt'] },
      { x: true },
      { 'moe.quant.x': 'null' },
    ]);
    return '__metadata__';
  },
  (h, r) => {
    // A packed weight's metadata (moe's own format), with garbage in it.
    const md = (h.__metadata__ = typeof h.__metadata__ === 'object' && h.__metadata__ ? h.__metadata__ : {});
    const keys = Object.keys(md).filter((k) => k.startsWith('moe.quant.'));
    const key = keys.length && r() < 0.7 ? r.pick(keys) : `moe.quant.${r.pick(tensorNames(h))}`;
    let info;
    try {
      info = JSON.parse(md[key]);
    } catch {
      info = { bits: 4, group_size: 128, shape: [64, 64], dtype: 'BF16', method: 'rtn' };
    }
    if (typeof info !== 'object' || info === null) info = {};
    const field = r.pick(['bits', 'group_size', 'shape', 'dtype', 'method']);
    info[field] = r.pick([
      0,
      -1,
      9,
      3.5,
      1e9,
      null,
      'x',
      [],
      [64],
      [64, -64],
      [0, 0],
      [2 ** 40, 2 ** 40],
      'F32',
      { a: 1 },
      '<deep>',
    ]);
    const text = JSON.stringify(info).replace('"<deep>"', deep(1_000_000, 1));
    md[key] = r.pick([text, text, text, 'null', '1', '[]', '{', '"x"', '']);
    return 'packed metadata';
  },
  () => ['deep nesting', `{"a":${deep(100000, 0)}}`],
  () => ['header not an object', JSON.stringify([{ dtype: 'F32', shape: [1], data_offsets: [0, 4] }])],
  (h, r) => ['header a scalar', r.pick(['1', 'null', '"x"', 'true', ''])],
  (h, r) => [
    'unicode',
    JSON.stringify(h).replace(/"model\./, r.pick(['"\u0000model.', '"\ud800model.', '"model\u202e.', '"m\uffffodel.'])),
  ],
  (h, r) => {
    const text = JSON.stringify(h);
    return [
      'invalid UTF-8',
      Buffer.concat([
        Buffer.from(text.slice(0, 3)),
        Buffer.from([r.pick([0xff, 0xc3, 0xed, 0xa0, 0x80])]),
        Buffer.from(text.slice(3)),
      ]),
    ];
  },
  (h, r) => ['whitespace padding', JSON.stringify(h) + ' '.repeat(1 + r.int(8))],
];

function tensorNames(h) {
  const names = Object.keys(h).filter((k) => k !== '__metadata__');
  return names.length ? names : ['__none__'];
}

/** Byte-level mutations of a safetensors file. */
const BYTES = [
  (b, r) => {
    const i = r.int(8);
    b[i] ^= 1 << r.int(8);
    return b;
  },
  (b, r) => {
    b.writeBigUInt64LE(
      BigInt(
        r.pick([
          0,
          1,
          7,
          2 ** 32,
          Number.MAX_SAFE_INTEGER,
          split(b).n - 1,
          split(b).n + 1,
          b.length,
          b.length - 8,
          100 * 1024 * 1024 + 1,
        ]),
      ),
      0,
    );
    return b;
  },
  (b, r) => {
    b.writeBigUInt64LE(r.pick([2n ** 63n, 2n ** 64n - 1n, 2n ** 53n + 1n]), 0);
    return b;
  },
  (b, r) => {
    const { n } = split(b);
    const i = 8 + r.int(Math.max(1, n));
    for (let k = 0, m = 1 + r.int(4); k < m; k++) b[Math.min(b.length - 1, i + k)] = r.int(256);
    return b;
  },
  (b, r) => {
    const { n } = split(b);
    const i = 8 + r.int(Math.max(1, n));
    const ins = Buffer.from(
      Array.from({ length: 1 + r.int(4) }, () =>
        r.pick([0x20, 0x22, 0x2c, 0x7b, 0x7d, 0x5b, 0x5d, 0x30, 0x2d, 0x00, 0xff, r.int(256)]),
      ),
    );
    return Buffer.concat([b.subarray(0, i), ins, b.subarray(i)]);
  },
  (b, r) => {
    const { n } = split(b);
    const i = 8 + r.int(Math.max(1, n));
    return Buffer.concat([b.subarray(0, i), b.subarray(Math.min(b.length, i + 1 + r.int(4)))]);
  },
  (b, r) => b.subarray(0, r.int(b.length)),
  (b, r) => Buffer.concat([b, Buffer.alloc(1 + r.int(16))]),
  (b, r) => b.subarray(0, r.int(8)),
];

/** Mutations of the parsed index `j`; they return a label, or [label, text]. */
const INDEX_MUT = [
  (j, r) => ((j.weight_map[r.pick(Object.keys(j.weight_map))] = r.pick(BAD_NAMES)), 'weight_map bad shard name'),
  (j, r) => (
    (j.weight_map[r.pick(Object.keys(j.weight_map))] = r.pick([null, 1, [], {}, true, ['model.safetensors']])),
    'weight_map non-string'
  ),
  (j, r) => (delete j.weight_map[r.pick(Object.keys(j.weight_map))], 'tensor missing from the map'),
  (j, r) => (
    (j.weight_map[r.pick(['extra.weight', 'model.layers.99.mlp.gate.weight', '__proto__', ''])] = r.pick(
      Object.values(j.weight_map),
    )),
    'extra tensor in the map'
  ),
  (j, r) => {
    const keys = Object.keys(j.weight_map);
    const shards = [...new Set(Object.values(j.weight_map))];
    j.weight_map[r.pick(keys)] = r.pick(shards.length > 1 ? shards : ['other.safetensors']);
    return 'tensor in the wrong shard';
  },
  (j, r) => ((j.weight_map = r.pick([null, [], 'x', {}, 1])), 'weight_map not an object'),
  (j) => (delete j.weight_map, 'no weight_map'),
  (j, r) => (
    (j.metadata = r.pick([null, 1, { total_size: 'x' }, { total_size: -1 }, { total_size: 1e300 }])),
    'metadata'
  ),
  (j, r) => ['invalid JSON', JSON.stringify(j).slice(0, r.int(JSON.stringify(j).length))],
  (j, r) => ['index a scalar', r.pick(['null', '1', '"x"', '[]', ''])],
  (j) => [
    'duplicate key',
    withDuplicate(j.weight_map, Object.keys(j.weight_map)[0], '../evil.safetensors').replace(/^/, '{"weight_map":') +
      '}',
  ],
  () => ['deep nesting', `{"weight_map":${deep(100000, 0)}}`],
  (j, r) => [
    'value nested 1e6 deep',
    JSON.stringify(j).replace(/("weight_map":\{"[^"]*":)"[^"]*"/, `$1${deep(1_000_000, r.pick(['x', 1]))}`),
  ],
];

/** One seeded mutation of `model`: a header (text or bytes), the data, or the index. */
function mutate(model, rng) {
  const files = { ...model.files };
  const shards = Object.keys(files).filter((n) => n.endsWith('.safetensors'));
  const target = rng.pick(shards);
  const hasIndex = INDEX in files;
  const roll = rng();
  if (hasIndex && roll < 0.25) {
    const j = JSON.parse(files[INDEX].toString('utf8'));
    const out = rng.pick(INDEX_MUT)(j, rng);
    const [label, text] = Array.isArray(out) ? out : [out, JSON.stringify(j, null, 2)];
    files[INDEX] = Buffer.from(text, 'utf8');
    return { kind: `index: ${label}`, target: INDEX, files };
  }
  if (roll < 0.55) {
    const buf = Buffer.from(files[target]);
    files[target] = rng.pick(BYTES)(buf, rng);
    return { kind: 'bytes', target, files };
  }
  const { header, data } = split(files[target]);
  const h = JSON.parse(header);
  const out = rng.pick(HEADER)(h, rng);
  const [label, text] = Array.isArray(out)
    ? out
    : [out, JSON.stringify(h).replace(`"${DEEP_MARK}"`, () => deep(1_000_000, 1))];
  files[target] = join(text, data);
  return { kind: `header: ${label}`, target, files };
}

/** Case `i` of a run seeded `seed`: its own PRNG, so any case can be replayed alone. */
function fuzzCase(bases, seed, i) {
  const rng = prng((Math.imul(seed, 0x9e3779b1) + i) >>> 0);
  const base = rng.int(bases.length);
  return { base, ...mutate(bases[base], rng) };
}

/**
 * An independent parse of a shard, for checking what the reader returned on success: tensors by name with dtype,
 * shape and absolute byte range. Returns undefined where this simple parser disagrees with the file being valid.
 */
function parseShard(buf) {
  if (buf.length < 8) return undefined;
  const { n, header } = split(buf);
  const h = JSON.parse(header);
  const out = new Map();
  for (const [name, e] of Object.entries(h)) {
    if (name === '__metadata__') continue;
    out.set(name, { dtype: e.dtype, shape: e.shape, begin: 8 + n + e.data_offsets[0], end: 8 + n + e.data_offsets[1] });
  }
  return out;
}

function tensorBytes(dtype, shape) {
  return shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[dtype];
}

/**
 * Opens the folder `dir` holding `files` with moe's reader (`api`: openCheckpoint, TensorReader, loadArchitecture from
 * src or dist), reads every tensor, and checks what it read against the independent parse. Returns undefined on
 * success; throws what the reader threw, or an Error starting "inconsistent:" when a success read wrong data.
 */
function readAll(dir, files, api) {
  const ckpt = api.openCheckpoint(dir);
  const reader = new api.TensorReader(ckpt);
  try {
    const raw = new Map();
    for (const [name, buf] of Object.entries(files)) if (name.endsWith('.safetensors')) raw.set(name, parseShard(buf));
    for (const t of ckpt.tensors.values()) {
      const bytes = reader.bytes(t.name);
      if (bytes.length !== tensorBytes(t.dtype, t.shape))
        throw new Error(`inconsistent: ${t.name} read ${bytes.length} bytes for ${t.dtype} [${t.shape}]`);
      if (t.packed) continue;
      const shard = path.basename(t.file);
      const want = raw.get(shard)?.get(t.name);
      if (
        !want ||
        want.dtype !== t.dtype ||
        JSON.stringify(want.shape) !== JSON.stringify(t.shape) ||
        want.begin !== t.begin ||
        want.end !== t.end
      )
        throw new Error(`inconsistent: ${t.name} is not where ${shard}'s header puts it`);
      if (!Buffer.from(bytes).equals(files[shard].subarray(want.begin, want.end)))
        throw new Error(`inconsistent: ${t.name} bytes differ from the file`);
    }
    api.loadArchitecture(ckpt);
  } finally {
    reader.close();
  }
}

/** The shape of an error message with names and numbers taken out, for counting errors by class. */
function messageClass(message) {
  return message
    .replace(/"(?:[^"\\]|\\.)*"/g, '"…"')
    .replace(/\[[^\]]*\]/g, '[…]')
    .replace(/\b[\w-]+(\.[\w-]+)+\b/g, 'NAME')
    .replace(/ \(.*$/, ' (…)')
    .replace(/\d+/g, 'N')
    .slice(0, 100);
}

module.exports = {
  fuzzCase,
  INDEX,
  DTYPE_BYTES,
  prng,
  readModel,
  writeModel,
  mutate,
  parseShard,
  tensorBytes,
  split,
  readAll,
  messageClass,
};

/**
 * Tiny ONNX models, encoded by hand: onnxruntime only runs ModelProto bytes, and the few graphs the
 * onnx backend needs (one Gemm, one batched MatMul, the fused graphs of onnx-fused.ts) do not justify a protobuf
 * dependency.
 *
 * Field numbers follow onnx/onnx.proto (ModelProto, GraphProto, NodeProto, AttributeProto, ValueInfoProto,
 * TensorProto, TypeProto.Tensor, TensorShapeProto.Dimension). Every size that varies is a symbolic dimension
 * (`dim_param`), so one session serves every shape.
 */
import { InternalError } from '../errors';

/** IR version 8 goes with opset 17 (ONNX 1.12), which onnxruntime 1.x loads. */
export const IR_VERSION = 8;
export const OPSET = 17;

/** TensorProto.DataType of the element types used here. */
const ELEM_TYPE = { float32: 1, uint8: 2, int32: 6, int64: 7 } as const;
export type ElemType = keyof typeof ELEM_TYPE;

const ATTR_INT = 2; // AttributeProto.AttributeType.INT
const ATTR_TENSOR = 4; // AttributeProto.AttributeType.TENSOR
const ATTR_INTS = 7; // AttributeProto.AttributeType.INTS

const WIRE_VARINT = 0;
const WIRE_LEN = 2;

type Bytes = number[];

function varint(out: Bytes, v: number): void {
  if (!Number.isSafeInteger(v) || v < 0) throw new InternalError(`onnx-graph: cannot encode ${v} as a varint`);
  while (v >= 0x80) {
    out.push((v % 0x80) | 0x80);
    v = Math.floor(v / 0x80);
  }
  out.push(v);
}

function fieldInt(out: Bytes, field: number, v: number): void {
  varint(out, (field << 3) | WIRE_VARINT);
  varint(out, v);
}

function fieldBytes(out: Bytes, field: number, payload: Bytes): void {
  varint(out, (field << 3) | WIRE_LEN);
  varint(out, payload.length);
  for (const b of payload) out.push(b);
}

function fieldString(out: Bytes, field: number, s: string): void {
  fieldBytes(out, field, Array.from(Buffer.from(s, 'utf8')));
}

/** A graph input or output: float32 unless `type` says otherwise; a string dim is symbolic, a number fixed. */
export interface ValueSpec {
  name: string;
  dims: (string | number)[];
  type?: ElemType;
}

/** A constant tensor (the `value` of a Constant node). */
export interface TensorSpec {
  type: ElemType;
  dims: number[];
  values: number[];
}

export interface AttrSpec {
  name: string;
  int?: number;
  ints?: number[];
  tensor?: TensorSpec;
}

export interface NodeSpec {
  op: string;
  inputs: string[];
  outputs: string[];
  attrs?: AttrSpec[];
  /** An operator set other than the default one, e.g. onnxruntime's 'com.microsoft' (version 1). */
  domain?: string;
}

export interface GraphSpec {
  name: string;
  inputs: ValueSpec[];
  outputs: ValueSpec[];
  nodes: NodeSpec[];
}

function valueInfo(v: ValueSpec): Bytes {
  const shape: Bytes = [];
  for (const d of v.dims) {
    const dim: Bytes = [];
    if (typeof d === 'number')
      fieldInt(dim, 1, d); // Dimension.dim_value
    else fieldString(dim, 2, d); // Dimension.dim_param
    fieldBytes(shape, 1, dim); // TensorShapeProto.dim
  }
  const tensor: Bytes = [];
  fieldInt(tensor, 1, ELEM_TYPE[v.type ?? 'float32']); // TypeProto.Tensor.elem_type
  fieldBytes(tensor, 2, shape); // TypeProto.Tensor.shape
  const type: Bytes = [];
  fieldBytes(type, 1, tensor); // TypeProto.tensor_type
  const out: Bytes = [];
  fieldString(out, 1, v.name); // ValueInfoProto.name
  fieldBytes(out, 2, type); // ValueInfoProto.type
  return out;
}

/** TensorProto with its values little-endian in raw_data. */
function tensorProto(t: TensorSpec): Bytes {
  const size = t.dims.reduce((a, b) => a * b, 1);
  if (t.values.length !== size)
    throw new InternalError(
      `onnx-graph: a constant of shape [${t.dims.join(', ')}] needs ${size} values, got ${t.values.length}`,
    );
  if (t.type === 'uint8') throw new InternalError('onnx-graph: uint8 constants are not encoded');
  const raw = Buffer.alloc(size * (t.type === 'int64' ? 8 : 4));
  t.values.forEach((v, i) => {
    if (t.type === 'float32') raw.writeFloatLE(v, 4 * i);
    else if (t.type === 'int32') raw.writeInt32LE(v, 4 * i);
    else raw.writeBigInt64LE(BigInt(v), 8 * i);
  });
  const out: Bytes = [];
  for (const d of t.dims) fieldInt(out, 1, d); // TensorProto.dims
  fieldInt(out, 2, ELEM_TYPE[t.type]); // TensorProto.data_type
  fieldBytes(out, 9, Array.from(raw)); // TensorProto.raw_data
  return out;
}

function attribute(a: AttrSpec): Bytes {
  const out: Bytes = [];
  fieldString(out, 1, a.name); // AttributeProto.name
  if (a.int !== undefined) {
    fieldInt(out, 3, a.int); // AttributeProto.i
    fieldInt(out, 20, ATTR_INT); // AttributeProto.type
  } else if (a.ints !== undefined) {
    for (const i of a.ints) fieldInt(out, 8, i); // AttributeProto.ints (unpacked, as onnx writes them)
    fieldInt(out, 20, ATTR_INTS);
  } else if (a.tensor !== undefined) {
    fieldBytes(out, 5, tensorProto(a.tensor)); // AttributeProto.t
    fieldInt(out, 20, ATTR_TENSOR);
  } else {
    throw new InternalError(`onnx-graph: attribute ${a.name} has no value`);
  }
  return out;
}

function node(n: NodeSpec, index: number): Bytes {
  const out: Bytes = [];
  for (const i of n.inputs) fieldString(out, 1, i); // NodeProto.input
  for (const o of n.outputs) fieldString(out, 2, o); // NodeProto.output
  fieldString(out, 3, `${n.op.toLowerCase()}_${index}`); // NodeProto.name
  fieldString(out, 4, n.op); // NodeProto.op_type
  for (const a of n.attrs ?? []) fieldBytes(out, 5, attribute(a)); // NodeProto.attribute
  if (n.domain) fieldString(out, 7, n.domain); // NodeProto.domain
  return out;
}

/** ModelProto bytes for `spec` (default ONNX domain, opset `OPSET`). */
export function encodeModel(spec: GraphSpec): Uint8Array {
  const graph: Bytes = [];
  spec.nodes.forEach((n, i) => fieldBytes(graph, 1, node(n, i))); // GraphProto.node
  fieldString(graph, 2, spec.name); // GraphProto.name
  for (const v of spec.inputs) fieldBytes(graph, 11, valueInfo(v)); // GraphProto.input
  for (const v of spec.outputs) fieldBytes(graph, 12, valueInfo(v)); // GraphProto.output

  const opset: Bytes = [];
  fieldString(opset, 1, ''); // OperatorSetIdProto.domain: '' is the default ONNX domain
  fieldInt(opset, 2, OPSET); // OperatorSetIdProto.version

  const model: Bytes = [];
  fieldInt(model, 1, IR_VERSION); // ModelProto.ir_version
  fieldString(model, 2, 'moe'); // ModelProto.producer_name
  fieldBytes(model, 7, graph); // ModelProto.graph
  fieldBytes(model, 8, opset); // ModelProto.opset_import
  for (const domain of new Set(spec.nodes.flatMap((n) => (n.domain ? [n.domain] : [])))) {
    const extra: Bytes = [];
    fieldString(extra, 1, domain);
    fieldInt(extra, 2, 1); // version 1 (onnxruntime's contrib operators)
    fieldBytes(model, 8, extra);
  }
  return Uint8Array.from(model);
}

/**
 * Y [tokens, out] = X [tokens, in] · Wᵀ (+ B [out]), W in nn.Linear layout [out, in]. Gemm with transB=1 hands W
 * to the sgemm kernel as it is, with no transposed copy.
 */
export function linearModel(bias: boolean): Uint8Array {
  const inputs: ValueSpec[] = [
    { name: 'X', dims: ['tokens', 'in'] },
    { name: 'W', dims: ['out', 'in'] },
  ];
  if (bias) inputs.push({ name: 'B', dims: ['out'] });
  return encodeModel({
    name: bias ? 'linear_bias' : 'linear',
    inputs,
    outputs: [{ name: 'Y', dims: ['tokens', 'out'] }],
    nodes: [{ op: 'Gemm', inputs: inputs.map((v) => v.name), outputs: ['Y'], attrs: [{ name: 'transB', int: 1 }] }],
  });
}

/**
 * C [batch, m, n] = A [batch, m, k] · B [batch, k, n], or with transB A · Bᵀ for B [batch, n, k]. The
 * Transpose+MatMul pair is fused by onnxruntime's graph optimizer (level 'all') into one FusedMatMul with
 * transB, so no transposed copy of B is made.
 */
export function bmmModel(transB: boolean): Uint8Array {
  const nodes: NodeSpec[] = transB
    ? [
        { op: 'Transpose', inputs: ['B'], outputs: ['BT'], attrs: [{ name: 'perm', ints: [0, 2, 1] }] },
        { op: 'MatMul', inputs: ['A', 'BT'], outputs: ['C'] },
      ]
    : [{ op: 'MatMul', inputs: ['A', 'B'], outputs: ['C'] }];
  return encodeModel({
    name: transB ? 'bmm_transb' : 'bmm',
    inputs: [
      { name: 'A', dims: ['batch', 'm', 'k'] },
      { name: 'B', dims: transB ? ['batch', 'n', 'k'] : ['batch', 'k', 'n'] },
    ],
    outputs: [{ name: 'C', dims: ['batch', 'm', 'n'] }],
    nodes,
  });
}

/**
 * The graphs behind the onnx backend's fused operations (Backend's FusedOps; RefBackend defines their meaning).
 * Each is one session with symbolic dimensions, like the graphs of onnx-graph.ts, and runs the whole piece of the
 * forward pass natively: no per-element loop is left to JavaScript, and logitStats never hands the logits back.
 * Plain opset-17 operators only. For attention at H=16, T=512, d=64 (2 threads) this graph took 4.9 ms, opset 23's
 * Attention with is_causal 5.2 ms and com.microsoft's MultiHeadAttention (unidirectional, heads as its batch)
 * 7.2 ms: neither pays for a newer opset or a second domain. Timings of the fused calls: bench/fused.js.
 */
import { encodeModel, type NodeSpec, type TensorSpec } from './onnx-graph';

function constant(name: string, tensor: TensorSpec): NodeSpec {
  return { op: 'Constant', inputs: [], outputs: [name], attrs: [{ name: 'value', tensor }] };
}

/**
 * O [H, T, dv] = Softmax(Q·Kᵀ·Scale + Mask)·V for Q, K [H, T, dk], V [H, T, dv], Scale a float scalar and Mask the
 * additive causal mask [T, T] (ref.ts `causalMask`). Transpose+MatMul becomes one FusedMatMul with transB under
 * onnxruntime's optimizer, so Kᵀ is never copied.
 */
export function attentionModel(): Uint8Array {
  return encodeModel({
    name: 'attention',
    inputs: [
      { name: 'Q', dims: ['heads', 'T', 'dk'] },
      { name: 'K', dims: ['heads', 'T', 'dk'] },
      { name: 'V', dims: ['heads', 'T', 'dv'] },
      { name: 'Scale', dims: [] },
      { name: 'Mask', dims: ['T', 'T'] },
    ],
    outputs: [{ name: 'O', dims: ['heads', 'T', 'dv'] }],
    nodes: [
      { op: 'Transpose', inputs: ['K'], outputs: ['KT'], attrs: [{ name: 'perm', ints: [0, 2, 1] }] },
      { op: 'MatMul', inputs: ['Q', 'KT'], outputs: ['S'] }, // [H, T, T]
      { op: 'Mul', inputs: ['S', 'Scale'], outputs: ['Scaled'] },
      { op: 'Add', inputs: ['Scaled', 'Mask'], outputs: ['Masked'] },
      { op: 'Softmax', inputs: ['Masked'], outputs: ['P'], attrs: [{ name: 'axis', int: 2 }] },
      { op: 'MatMul', inputs: ['P', 'V'], outputs: ['O'] }, // [H, T, dv]
    ],
  });
}

/**
 * attentionModel on token-major operands (Backend.attentionTokens): Q [T, H, dk], K [T, KV, dk], V [T, KV, dv] →
 * O [T, H, dv]. The query heads of one key/value head are G = H / KV consecutive heads, so Q's head-major
 * [H, T, dk] is [KV, G·T, dk]: one product per key/value head, no copy of K or V per query head, and the mask
 * broadcast over G by viewing the scores as [KV, G, T, T]. The views' shapes come in as int64 inputs: QShape
 * [KV, G·T, dk], SShape [KV, G, T, T], PShape [KV, G·T, T], OShape [H, T, dv]. Same operations in the same order
 * as attentionModel on each score.
 */
export function attentionTokensModel(): Uint8Array {
  const shape = (name: string, n: number) => ({ name, dims: [n], type: 'int64' as const });
  return encodeModel({
    name: 'attention_tokens',
    inputs: [
      { name: 'Q', dims: ['T', 'heads', 'dk'] },
      { name: 'K', dims: ['T', 'kv', 'dk'] },
      { name: 'V', dims: ['T', 'kv', 'dv'] },
      { name: 'Scale', dims: [] },
      { name: 'Mask', dims: ['T', 'T'] },
      shape('QShape', 3),
      shape('SShape', 4),
      shape('PShape', 3),
      shape('OShape', 3),
    ],
    outputs: [{ name: 'O', dims: ['T', 'heads', 'dv'] }],
    nodes: [
      { op: 'Transpose', inputs: ['Q'], outputs: ['QH'], attrs: [{ name: 'perm', ints: [1, 0, 2] }] }, // [H, T, dk]
      { op: 'Reshape', inputs: ['QH', 'QShape'], outputs: ['QG'] }, // [KV, G·T, dk]
      { op: 'Transpose', inputs: ['K'], outputs: ['KT'], attrs: [{ name: 'perm', ints: [1, 2, 0] }] }, // [KV, dk, T]
      { op: 'MatMul', inputs: ['QG', 'KT'], outputs: ['S'] }, // [KV, G·T, T]
      { op: 'Mul', inputs: ['S', 'Scale'], outputs: ['Scaled'] },
      { op: 'Reshape', inputs: ['Scaled', 'SShape'], outputs: ['S4'] }, // [KV, G, T, T]
      { op: 'Add', inputs: ['S4', 'Mask'], outputs: ['Masked'] },
      { op: 'Softmax', inputs: ['Masked'], outputs: ['P'], attrs: [{ name: 'axis', int: 3 }] },
      { op: 'Reshape', inputs: ['P', 'PShape'], outputs: ['P3'] }, // [KV, G·T, T]
      { op: 'Transpose', inputs: ['V'], outputs: ['VT'], attrs: [{ name: 'perm', ints: [1, 0, 2] }] }, // [KV, T, dv]
      { op: 'MatMul', inputs: ['P3', 'VT'], outputs: ['O3'] }, // [KV, G·T, dv]
      { op: 'Reshape', inputs: ['O3', 'OShape'], outputs: ['OH'] }, // [H, T, dv]
      { op: 'Transpose', inputs: ['OH'], outputs: ['O'], attrs: [{ name: 'perm', ints: [1, 0, 2] }] }, // [T, H, dv]
    ],
  });
}

/**
 * Attention with a per-head sink logit (gpt-oss; ref.ts attentionRef with opts.sinks): Sinks [H, 1, 1] joins each
 * row's max M = max(max_s A_s, sink) and its denominator Z = Σ_s exp(A_s − M) + exp(sink − M), where A = Q·Kᵀ·Scale
 * + Mask; O = (exp(A − M)·V) / Z. Dividing after the product divides [H, T, dv] instead of [H, T, T].
 */
export function attentionSinksModel(): Uint8Array {
  return encodeModel({
    name: 'attention_sinks',
    inputs: [
      { name: 'Q', dims: ['heads', 'T', 'dk'] },
      { name: 'K', dims: ['heads', 'T', 'dk'] },
      { name: 'V', dims: ['heads', 'T', 'dv'] },
      { name: 'Scale', dims: [] },
      { name: 'Mask', dims: ['T', 'T'] },
      { name: 'Sinks', dims: ['heads', 1, 1] },
    ],
    outputs: [{ name: 'O', dims: ['heads', 'T', 'dv'] }],
    nodes: [
      constant('Axis2', { type: 'int64', dims: [1], values: [2] }),
      { op: 'Transpose', inputs: ['K'], outputs: ['KT'], attrs: [{ name: 'perm', ints: [0, 2, 1] }] },
      { op: 'MatMul', inputs: ['Q', 'KT'], outputs: ['S'] }, // [H, T, T]
      { op: 'Mul', inputs: ['S', 'Scale'], outputs: ['Scaled'] },
      { op: 'Add', inputs: ['Scaled', 'Mask'], outputs: ['Masked'] },
      {
        op: 'ReduceMax',
        inputs: ['Masked'],
        outputs: ['RowMax'],
        attrs: [
          { name: 'axes', ints: [2] },
          { name: 'keepdims', int: 1 },
        ],
      }, // [H, T, 1]
      { op: 'Max', inputs: ['RowMax', 'Sinks'], outputs: ['M'] },
      { op: 'Sub', inputs: ['Masked', 'M'], outputs: ['Shifted'] },
      { op: 'Exp', inputs: ['Shifted'], outputs: ['E'] },
      { op: 'ReduceSum', inputs: ['E', 'Axis2'], outputs: ['Sum'], attrs: [{ name: 'keepdims', int: 1 }] },
      { op: 'Sub', inputs: ['Sinks', 'M'], outputs: ['SinkShifted'] },
      { op: 'Exp', inputs: ['SinkShifted'], outputs: ['SinkE'] },
      { op: 'Add', inputs: ['Sum', 'SinkE'], outputs: ['Z'] },
      { op: 'MatMul', inputs: ['E', 'V'], outputs: ['EV'] }, // [H, T, dv]
      { op: 'Div', inputs: ['EV', 'Z'], outputs: ['O'] },
    ],
  });
}

/**
 * Act [rows, width] = silu(G) ⊙ U with [G | U] = X·GateUpᵀ, Out [rows, hidden] = Act·Downᵀ, for X [rows, hidden],
 * GateUp [2·width, hidden] (gate rows, then up rows) and Down [hidden, width]. Split with two outputs and no sizes
 * halves the axis (opset 13–17), so width needs no input of its own; silu(g) = g·sigmoid(g).
 */
export function swigluModel(): Uint8Array {
  return encodeModel({
    name: 'swiglu',
    inputs: [
      { name: 'X', dims: ['rows', 'hidden'] },
      { name: 'GateUp', dims: ['width2', 'hidden'] },
      { name: 'Down', dims: ['hidden', 'width'] },
    ],
    outputs: [
      { name: 'Out', dims: ['rows', 'hidden'] },
      { name: 'Act', dims: ['rows', 'width'] },
    ],
    nodes: [
      { op: 'Gemm', inputs: ['X', 'GateUp'], outputs: ['GU'], attrs: [{ name: 'transB', int: 1 }] }, // [rows, 2·width]
      { op: 'Split', inputs: ['GU'], outputs: ['G', 'U'], attrs: [{ name: 'axis', int: 1 }] },
      { op: 'Sigmoid', inputs: ['G'], outputs: ['SigG'] },
      { op: 'Mul', inputs: ['G', 'SigG'], outputs: ['SiluG'] },
      { op: 'Mul', inputs: ['SiluG', 'U'], outputs: ['Act'] },
      { op: 'Gemm', inputs: ['Act', 'Down'], outputs: ['Out'], attrs: [{ name: 'transB', int: 1 }] },
    ],
  });
}

/**
 * Per-row statistics of Y = X·Wᵀ ([rows, count], never an output) for X [rows, hidden], W [count, hidden]:
 * Max = max(Y), SumExp = Σ exp(Y − Max), ArgMax (first index of the max; int32), Target = Y[r, Targets[r] − Start]
 * when 0 ≤ Targets[r] − Start < count, else NaN. Targets is int32 [rows, 1] and Start an int32 scalar; every output
 * is [rows, 1], which is `rows` values once flattened.
 */
export function logitStatsModel(): Uint8Array {
  return encodeModel({
    name: 'logit_stats',
    inputs: [
      { name: 'X', dims: ['rows', 'hidden'] },
      { name: 'W', dims: ['count', 'hidden'] },
      { name: 'Targets', dims: ['rows', 1], type: 'int32' },
      { name: 'Start', dims: [], type: 'int32' },
    ],
    outputs: [
      { name: 'Max', dims: ['rows', 1] },
      { name: 'SumExp', dims: ['rows', 1] },
      { name: 'ArgMax', dims: ['rows', 1], type: 'int32' },
      { name: 'Target', dims: ['rows', 1] },
    ],
    nodes: [
      constant('Axis1', { type: 'int64', dims: [1], values: [1] }),
      constant('Zero', { type: 'int32', dims: [], values: [0] }),
      constant('NaN', { type: 'float32', dims: [], values: [NaN] }),
      { op: 'Gemm', inputs: ['X', 'W'], outputs: ['Y'], attrs: [{ name: 'transB', int: 1 }] }, // [rows, count]
      {
        op: 'ReduceMax',
        inputs: ['Y'],
        outputs: ['Max'],
        attrs: [
          { name: 'axes', ints: [1] },
          { name: 'keepdims', int: 1 },
        ],
      },
      { op: 'Sub', inputs: ['Y', 'Max'], outputs: ['Shifted'] },
      { op: 'Exp', inputs: ['Shifted'], outputs: ['E'] },
      { op: 'ReduceSum', inputs: ['E', 'Axis1'], outputs: ['SumExp'], attrs: [{ name: 'keepdims', int: 1 }] },
      {
        op: 'ArgMax',
        inputs: ['Y'],
        outputs: ['ArgMax64'],
        attrs: [
          { name: 'axis', int: 1 },
          { name: 'keepdims', int: 1 },
          { name: 'select_last_index', int: 0 },
        ],
      },
      { op: 'Cast', inputs: ['ArgMax64'], outputs: ['ArgMax'], attrs: [{ name: 'to', int: 6 }] }, // int32
      // Target: the column Targets − Start where it lies in [0, count), gathered from a clamped index.
      {
        op: 'Shape',
        inputs: ['W'],
        outputs: ['Count64'],
        attrs: [
          { name: 'start', int: 0 },
          { name: 'end', int: 1 },
        ],
      }, // [1]
      { op: 'Cast', inputs: ['Count64'], outputs: ['Count'], attrs: [{ name: 'to', int: 6 }] },
      { op: 'Sub', inputs: ['Targets', 'Start'], outputs: ['Idx'] },
      { op: 'GreaterOrEqual', inputs: ['Idx', 'Zero'], outputs: ['AboveStart'] },
      { op: 'Less', inputs: ['Idx', 'Count'], outputs: ['BelowEnd'] },
      { op: 'And', inputs: ['AboveStart', 'BelowEnd'], outputs: ['Inside'] },
      { op: 'Where', inputs: ['Inside', 'Idx', 'Zero'], outputs: ['Col'] },
      { op: 'GatherElements', inputs: ['Y', 'Col'], outputs: ['Picked'], attrs: [{ name: 'axis', int: 1 }] },
      { op: 'Where', inputs: ['Inside', 'Picked', 'NaN'], outputs: ['Target'] },
    ],
  });
}

/**
 * The gated MLP with biases and gpt-oss's clamped activation (ref.ts swigluRef with GluOptions):
 * [G | U] = X·GateUpᵀ + GateUpBias, Act = (min(U, Limit) ∨ −Limit + Plus) ⊙ Gc·σ(Alpha·Gc) with Gc = min(G, Limit),
 * Out = Act·Downᵀ + DownBias. Alpha 1, Limit +∞ and Plus 0 give silu(G) ⊙ U, so one graph serves biases alone too.
 */
export function gluModel(): Uint8Array {
  return encodeModel({
    name: 'glu',
    inputs: [
      { name: 'X', dims: ['rows', 'hidden'] },
      { name: 'GateUp', dims: ['width2', 'hidden'] },
      { name: 'GateUpBias', dims: ['width2'] },
      { name: 'Down', dims: ['hidden', 'width'] },
      { name: 'DownBias', dims: ['hidden'] },
      { name: 'Alpha', dims: [] },
      { name: 'Limit', dims: [] },
      { name: 'Plus', dims: [] },
    ],
    outputs: [
      { name: 'Out', dims: ['rows', 'hidden'] },
      { name: 'Act', dims: ['rows', 'width'] },
    ],
    nodes: [
      // [rows, 2·width]
      { op: 'Gemm', inputs: ['X', 'GateUp', 'GateUpBias'], outputs: ['GU'], attrs: [{ name: 'transB', int: 1 }] },
      { op: 'Split', inputs: ['GU'], outputs: ['G', 'U'], attrs: [{ name: 'axis', int: 1 }] },
      { op: 'Neg', inputs: ['Limit'], outputs: ['NegLimit'] },
      { op: 'Min', inputs: ['G', 'Limit'], outputs: ['Gc'] },
      { op: 'Min', inputs: ['U', 'Limit'], outputs: ['UcHigh'] },
      { op: 'Max', inputs: ['UcHigh', 'NegLimit'], outputs: ['Uc'] },
      { op: 'Mul', inputs: ['Gc', 'Alpha'], outputs: ['AlphaG'] },
      { op: 'Sigmoid', inputs: ['AlphaG'], outputs: ['SigG'] },
      { op: 'Mul', inputs: ['Gc', 'SigG'], outputs: ['Glu'] },
      { op: 'Add', inputs: ['Uc', 'Plus'], outputs: ['UpPlus'] },
      { op: 'Mul', inputs: ['UpPlus', 'Glu'], outputs: ['Act'] },
      { op: 'Gemm', inputs: ['Act', 'Down', 'DownBias'], outputs: ['Out'], attrs: [{ name: 'transB', int: 1 }] },
    ],
  });
}

/**
 * The gated delta rule chunk by chunk (transformers' torch_chunk_gated_delta_rule, the WY form of Yang et al., 2024,
 * "Gated Delta Networks"), its products on the backend's batched matmul instead of per-token scalar work over the
 * state. Per window and value head, chunks of L tokens (the last zero-padded: k = v = β = g = 0 leave the state
 * alone), G = within-chunk cumulative sum of the log decays g:
 *
 *   A[i,j] = −(β_i k_i · k_j) · exp(G_i − G_j) for j < i; Tm = (I − A)⁻¹ by forward substitution;
 *   U = Tm · (β v), W = Tm · (β k · exp(G))                          (every chunk at once)
 *   then chunk by chunk, S [dk, dv] from 0:
 *   v' = U − W · S;  o = (q · exp(G)) · S + (q kᵀ ⊙ exp(G_i − G_j), j ≤ i) · v'
 *   S ← S · exp(G_L) + (k · exp(G_L − G))ᵀ · v'
 *
 * The products run in float32 on the backend (as transformers runs them); the decays and the substitution in
 * float64. Equal to the per-token recurrence in deltanet.ts up to float32 rounding (test/model/deltanet.test.ts).
 */
import type { Backend } from '../../backend/backend';

/** Tokens per chunk (transformers' chunk_size). */
export const CHUNK = 64;

const math = Math;

export interface ChunkInputs {
  /** The conv output [N, C]: q of every key head | k | v. */
  conv: Float32Array;
  /** β = σ(b) and the log decay g per token and value head, [N, Hv]. */
  beta: Float64Array;
  decay: Float64Array;
  windows: number;
  T: number;
  C: number;
  Hk: number;
  Hv: number;
  dk: number;
  dv: number;
}

/** Per (window, value head) sequence padded to P = chunks · L: q, k (l2-normed), v, β and the cumulative decay G. */
function layout(x: ChunkInputs, P: number) {
  const { conv, beta, decay, windows, T, C, Hk, Hv, dk, dv } = x;
  const B2 = windows * Hv;
  const r = Hv / Hk;
  const q = new Float32Array(B2 * P * dk);
  const k = new Float32Array(B2 * P * dk);
  const kb = new Float32Array(B2 * P * dk);
  const kbe = new Float32Array(B2 * P * dk);
  const qe = new Float32Array(B2 * P * dk);
  const vb = new Float32Array(B2 * P * dv);
  const G = new Float64Array(B2 * P);
  const scale = 1 / math.sqrt(dk);
  for (let w = 0; w < windows; w++)
    for (let h = 0; h < Hv; h++) {
      const b2 = w * Hv + h;
      const g = math.floor(h / r);
      let cum = 0;
      for (let t = 0; t < T; t++) {
        const n = w * T + t;
        const p = b2 * P + t;
        cum = t % CHUNK === 0 ? decay[n * Hv + h] : cum + decay[n * Hv + h];
        G[p] = cum;
        const bt = beta[n * Hv + h];
        const e = math.exp(cum);
        const qo = n * C + g * dk;
        const ko = n * C + Hk * dk + g * dk;
        let qs = 0;
        let ks = 0;
        for (let i = 0; i < dk; i++) {
          qs += conv[qo + i] * conv[qo + i];
          ks += conv[ko + i] * conv[ko + i];
        }
        const qi = scale / math.sqrt(qs + 1e-6);
        const ki = 1 / math.sqrt(ks + 1e-6);
        for (let i = 0; i < dk; i++) {
          const kv = conv[ko + i] * ki;
          const qv = conv[qo + i] * qi;
          q[p * dk + i] = qv;
          k[p * dk + i] = kv;
          kb[p * dk + i] = kv * bt;
          kbe[p * dk + i] = kv * bt * e;
          qe[p * dk + i] = qv * e;
        }
        const vo = n * C + 2 * Hk * dk + h * dv;
        for (let j = 0; j < dv; j++) vb[p * dv + j] = conv[vo + j] * bt;
      }
      for (let t = T; t < P; t++) G[b2 * P + t] = t % CHUNK === 0 ? 0 : G[b2 * P + t - 1];
    }
  return { q, k, kb, kbe, qe, vb, G, B2 };
}

/** Tm = (I − A)⁻¹ per chunk from KK = (βk)·kᵀ [B, L, L], in place into a float32 [B, L, L]. */
function inverse(KK: Float32Array, G: Float64Array, B: number): Float32Array {
  const L = CHUNK;
  const Tm = new Float32Array(B * L * L);
  const a = new Float64Array(L * L);
  for (let b = 0; b < B; b++) {
    const o = b * L * L;
    a.fill(0);
    for (let i = 1; i < L; i++)
      for (let j = 0; j < i; j++) a[i * L + j] = -KK[o + i * L + j] * math.exp(G[b * L + i] - G[b * L + j]);
    // Row i: a[i, :i] + Σ_{m<i} a[i, m] · Tm[m, :i] over the rows already done (transformers' loop, in float64).
    for (let i = 1; i < L; i++) {
      const row = a.slice(i * L, i * L + i);
      for (let m = 0; m < i; m++) {
        const c = row[m];
        if (c === 0) continue;
        for (let j = 0; j < m; j++) a[i * L + j] += c * a[m * L + j];
      }
    }
    for (let i = 0; i < L; i++) {
      for (let j = 0; j < i; j++) Tm[o + i * L + j] = a[i * L + j];
      Tm[o + i * L + i] = 1;
    }
  }
  return Tm;
}

/** q kᵀ ⊙ exp(G_i − G_j) on and below the diagonal, 0 above, in place. */
function intraMask(QK: Float32Array, G: Float64Array, B: number): void {
  const L = CHUNK;
  for (let b = 0; b < B; b++)
    for (let i = 0; i < L; i++) {
      const o = (b * L + i) * L;
      for (let j = 0; j <= i; j++) QK[o + j] *= math.exp(G[b * L + i] - G[b * L + j]);
      for (let j = i + 1; j < L; j++) QK[o + j] = 0;
    }
}

/** The core output [N, Hv·dv] of every window and value head. */
export async function chunkedDeltaRule(be: Backend, x: ChunkInputs): Promise<Float32Array> {
  const { windows, T, Hv, dk, dv } = x;
  const L = CHUNK;
  const nC = math.ceil(T / L);
  const P = nC * L;
  const { q, k, kb, kbe, qe, vb, G, B2 } = layout(x, P);
  const B = B2 * nC;
  const Tm = inverse(await be.bmm(kb, k, B, L, dk, L, true), G, B);
  const U = await be.bmm(Tm, vb, B, L, L, dv, false);
  const W = await be.bmm(Tm, kbe, B, L, L, dk, false);
  const intra = await be.bmm(q, k, B, L, dk, L, true);
  intraMask(intra, G, B);

  const out = new Float32Array(windows * T * Hv * dv);
  let S: Float32Array = new Float32Array(B2 * dk * dv);
  const X = new Float32Array(B2 * 2 * L * dk); // [W_c ; q_c · exp(G)] per b2
  const vNew = new Float32Array(B2 * L * dv);
  const Ic = new Float32Array(B2 * L * L);
  const kd = new Float32Array(B2 * dk * L); // (k · exp(G_L − G))ᵀ
  for (let c = 0; c < nC; c++) {
    for (let b2 = 0; b2 < B2; b2++) {
      const src = (b2 * P + c * L) * dk;
      X.set(W.subarray(src, src + L * dk), b2 * 2 * L * dk);
      X.set(qe.subarray(src, src + L * dk), (b2 * 2 + 1) * L * dk);
      Ic.set(intra.subarray((b2 * nC + c) * L * L, (b2 * nC + c + 1) * L * L), b2 * L * L);
    }
    const XS = await be.bmm(X, S, B2, 2 * L, dk, dv, false); // [B2, 2L, dv]: W·S, then (q·exp(G))·S
    for (let b2 = 0; b2 < B2; b2++) {
      const u = (b2 * P + c * L) * dv;
      const xs = b2 * 2 * L * dv;
      for (let i = 0; i < L * dv; i++) vNew[b2 * L * dv + i] = U[u + i] - XS[xs + i];
    }
    const O = await be.bmm(Ic, vNew, B2, L, L, dv, false);
    for (let b2 = 0; b2 < B2; b2++) {
      const w = math.floor(b2 / Hv);
      const h = b2 % Hv;
      const xs = (b2 * 2 + 1) * L * dv;
      for (let i = 0; i < L && c * L + i < T; i++) {
        const o = ((w * T + c * L + i) * Hv + h) * dv;
        for (let j = 0; j < dv; j++) out[o + j] = XS[xs + i * dv + j] + O[(b2 * L + i) * dv + j];
      }
      const gl = G[b2 * P + c * L + L - 1];
      for (let i = 0; i < L; i++) {
        const p = b2 * P + c * L + i;
        const e = math.exp(gl - G[p]);
        for (let a = 0; a < dk; a++) kd[(b2 * dk + a) * L + i] = k[p * dk + a] * e;
      }
    }
    const upd = await be.bmm(kd, vNew, B2, dk, L, dv, false);
    for (let b2 = 0; b2 < B2; b2++) {
      const e = math.exp(G[b2 * P + c * L + L - 1]);
      const o = b2 * dk * dv;
      for (let i = 0; i < dk * dv; i++) upd[o + i] += S[o + i] * e;
    }
    S = upd;
  }
  return out;
}

// Flash attention on tensor cores (bf16, sm_80+): forward, dq, dk / dv.
#ifndef SIZESPEC_COMMON_CUH
#include "common.cuh"
#include "attention.cuh"
#endif

// ---- Attention on tensor cores (bf16, sm_80+; FlashAttention-2's scheme) -----------------------
// mma.sync m16n8k16 bf16 -> f32. 4 warps; each warp owns 16 rows of the tile it produces. The
// C fragment of one product is reused in registers as the A fragment of the next (P -> P V);
// operands come from shared memory through ldmatrix (.trans where the product needs the
// transpose). Tiles are stored [rows][D + 8] bf16: the 16-byte row skew makes ldmatrix
// conflict-free. Same visibility rule and lse as attention.cu's; the layout is given by strides:
// row qi of head h of batch row b of q (o, dO, dq) starts at b H TQ D + h QHS + qi QRS, of k (v,
// dk, dv) at b KV TK D + h KHS + j KRS: [B, H, T, D] is (QHS, QRS) = (TQ D, D), [B, T, H, D] is
// (D, H D) — the projections' own layout, no transposes around attention.
#if __CUDA_ARCH__ >= 800
DEV unsigned ld32(const bf16_t* p) { return *(const unsigned*)p; }
DEV unsigned pack2(float lo, float hi) {
    unsigned r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
DEV unsigned saddr(const void* p) {
    unsigned r;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(r) : "l"(p));
    return r;
}
DEV void mma_bf16(float* c, const unsigned* a, unsigned b0, unsigned b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
DEV void ldsm4(unsigned* r, unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr) : "memory");
}
DEV void ldsm4t(unsigned* r, unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr) : "memory");
}
// A fragment (16 x 16, rows m0.., columns k0..) of a [rows][LD] tile.
template <int LD>
DEV void frag_a(unsigned* r, const bf16_t* s, int m0, int k0, int lane) {
    ldsm4(r, saddr(s + (m0 + ((lane >> 3) & 1) * 8 + (lane & 7)) * LD + k0 + (lane >> 4) * 8));
}
// B fragments of two n-tiles (n0.., n0 + 8..) x k0..k0+15 when the tile is stored [n][k]
// (B = tile^T): r[0], r[1] for n0, r[2], r[3] for n0 + 8.
template <int LD>
DEV void frag_b_nk(unsigned* r, const bf16_t* s, int n0, int k0, int lane) {
    ldsm4(r, saddr(s + (n0 + (lane >> 4) * 8 + (lane & 7)) * LD + k0 + ((lane >> 3) & 1) * 8));
}
// The same when the tile is stored [k][n] (B = tile): columns n0.. and n0 + 8.., rows k0..k0+15.
template <int LD>
DEV void frag_b_kn(unsigned* r, const bf16_t* s, int k0, int n0, int lane) {
    ldsm4t(r, saddr(s + (k0 + ((lane >> 3) & 1) * 8 + (lane & 7)) * LD + n0 + (lane >> 4) * 8));
}
// Rows r0 .. r0 + R - 1 of a matrix of nrows rows of D (row stride rs) into a [R][D + 8] tile;
// rows past the end are 0.
template <int D, int R>
DEV void load_tile(bf16_t* s, const bf16_t* g, int r0, int nrows, int rs) {
    constexpr int C = D / 8;
    for (int e = threadIdx.x; e < R * C; e += 128) {
        int r = e / C, c = e % C;
        uint4 v = make_uint4(0u, 0u, 0u, 0u);
        if (r0 + r < nrows) v = *(const uint4*)(g + (u64)(r0 + r) * rs + c * 8);
        *(uint4*)(s + r * (D + 8) + c * 8) = v;
    }
}
// The same with cp.async (16 bytes a copy, zero-filled past the end): the copies run while the
// block computes on the other buffer. Completed by cp_wait + __syncthreads.
template <int D, int R>
DEV void load_tile_async(bf16_t* s, const bf16_t* g, int r0, int nrows, int rs) {
    constexpr int C = D / 8;
    for (int e = threadIdx.x; e < R * C; e += 128) {
        int r = e / C, c = e % C;
        const bool in = r0 + r < nrows;
        const bf16_t* src = g + (u64)(in ? r0 + r : 0) * rs + c * 8;
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;"
                     :: "r"(saddr(s + r * (D + 8) + c * 8)), "l"(src), "r"(in ? 16 : 0) : "memory");
    }
    asm volatile("cp.async.commit_group;" ::: "memory");
}
template <int N>
DEV void cp_wait() { asm volatile("cp.async.wait_group %0;" :: "n"(N) : "memory"); }
// acc (16 x D, C fragments) += a (16 x 16) . tile[k0 .. k0 + 15][0 .. D - 1], the tile stored [k][n].
template <int D, int LD>
DEV void mma_rows(float (*acc)[4], const unsigned* a, const bf16_t* tile, int k0, int lane) {
    #pragma unroll
    for (int n = 0; n < D / 8; n += 2) {
        unsigned bb[4];
        frag_b_kn<LD>(bb, tile, k0, n * 8, lane);
        mma_bf16(acc[n], a, bb[0], bb[1]);
        mma_bf16(acc[n + 1], a, bb[2], bb[3]);
    }
}
// The C fragments of n-tiles 2 kk, 2 kk + 1 as the A fragment of the next product (k = their columns).
DEV void c_to_a(unsigned* a, const float* c0, const float* c1) {
    a[0] = pack2(c0[0], c0[1]);
    a[1] = pack2(c0[2], c0[3]);
    a[2] = pack2(c1[0], c1[1]);
    a[3] = pack2(c1[2], c1[3]);
}
DEV float quad_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
DEV float quad_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}
#endif

// Forward: block = 64 queries of one head (latest blocks first: they have the most keys).
template <int D>
DEV void attn_fwd_tc(const bf16_t* q, const bf16_t* k, const bf16_t* v, bf16_t* o, float* lse,
                     const unsigned* pads, int H, int KV, int TQ, int TK, int off, int win, float scale,
                     int QHS, int QRS, int KHS, int KRS) {
#if __CUDA_ARCH__ >= 800
    constexpr int KT = 64, LD = D + 8;
    extern __shared__ __align__(16) unsigned char tsm[];
    // Two K / V buffers: tile i + 1 streams in (cp.async) while tile i is computed on.
    bf16_t* Kbuf = (bf16_t*)tsm;
    bf16_t* Vbuf = Kbuf + 2 * KT * LD;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int q0 = (gridDim.x - 1 - blockIdx.x) * 64, h = blockIdx.y, b = blockIdx.z, kvh = h / (H / KV);
    const int pad = pads[b];
    const u64 qoff = (u64)b * H * TQ * D + (u64)h * QHS, koff = (u64)b * KV * TK * D + (u64)kvh * KHS;
    const bf16_t* qb = q + qoff;
    const bf16_t* kb = k + koff;
    const bf16_t* vb = v + koff;
    const int r0 = q0 + warp * 16 + g, r1 = r0 + 8;
    unsigned qa[D / 16][4];
    #pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
        int c = kk * 16 + 2 * t;
        qa[kk][0] = r0 < TQ ? ld32(qb + (u64)r0 * QRS + c) : 0u;
        qa[kk][1] = r1 < TQ ? ld32(qb + (u64)r1 * QRS + c) : 0u;
        qa[kk][2] = r0 < TQ ? ld32(qb + (u64)r0 * QRS + c + 8) : 0u;
        qa[kk][3] = r1 < TQ ? ld32(qb + (u64)r1 * QRS + c + 8) : 0u;
    }
    float acc[D / 8][4];
    #pragma unroll
    for (int n = 0; n < D / 8; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;
    const int c_first = off + q0, c_last = off + min(TQ, q0 + 64) - 1;
    int j_begin = 0;
    if (win > 0 && c_first - win > 0) j_begin = ((c_first - win) / KT) * KT;
    const int j_end = min(c_last + 1, TK);
    if (j_begin < j_end) {
        load_tile_async<D, KT>(Kbuf, kb, j_begin, TK, KRS);
        load_tile_async<D, KT>(Vbuf, vb, j_begin, TK, KRS);
    }
    for (int j0 = j_begin, it = 0; j0 < j_end; j0 += KT, it++) {
        bf16_t* Ks = Kbuf + (it & 1) * KT * LD;
        bf16_t* Vs = Vbuf + (it & 1) * KT * LD;
        if (j0 + KT < j_end) {
            load_tile_async<D, KT>(Kbuf + ((it + 1) & 1) * KT * LD, kb, j0 + KT, TK, KRS);
            load_tile_async<D, KT>(Vbuf + ((it + 1) & 1) * KT * LD, vb, j0 + KT, TK, KRS);
            cp_wait<2>();
        } else {
            cp_wait<0>();
        }
        __syncthreads();
        float s[KT / 8][4];
        #pragma unroll
        for (int n = 0; n < KT / 8; n++) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
        #pragma unroll
        for (int kk = 0; kk < D / 16; kk++)
            #pragma unroll
            for (int n = 0; n < KT / 8; n += 2) {
                unsigned bb[4];
                frag_b_nk<LD>(bb, Ks, n * 8, kk * 16, lane);
                mma_bf16(s[n], qa[kk], bb[0], bb[1]);
                mma_bf16(s[n + 1], qa[kk], bb[2], bb[3]);
            }
        const bool full = j0 + KT - 1 <= c_first && j0 >= pad && j0 + KT <= TK && (win == 0 || j0 + win >= c_last);
        float mx0 = -INFINITY, mx1 = -INFINITY;
        #pragma unroll
        for (int n = 0; n < KT / 8; n++)
            #pragma unroll
            for (int e = 0; e < 4; e++) {
                int j = j0 + n * 8 + 2 * t + (e & 1);
                float x = s[n][e] * scale;
                if (!full && (j >= TK || !visible(off + (e < 2 ? r0 : r1), j, pad, win))) x = -INFINITY;
                s[n][e] = x;
                if (e < 2) mx0 = fmaxf(mx0, x); else mx1 = fmaxf(mx1, x);
            }
        mx0 = quad_max(mx0);
        mx1 = quad_max(mx1);
        const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
        const float cr0 = mn0 == -INFINITY ? 1.0f : __expf(m0 - mn0);
        const float cr1 = mn1 == -INFINITY ? 1.0f : __expf(m1 - mn1);
        float sum0 = 0.0f, sum1 = 0.0f;
        #pragma unroll
        for (int n = 0; n < KT / 8; n++)
            #pragma unroll
            for (int e = 0; e < 4; e++) {
                float mn = e < 2 ? mn0 : mn1;
                float p = mn == -INFINITY ? 0.0f : __expf(s[n][e] - mn);
                s[n][e] = p;
                if (e < 2) sum0 += p; else sum1 += p;
            }
        l0 = l0 * cr0 + sum0;
        l1 = l1 * cr1 + sum1;
        m0 = mn0;
        m1 = mn1;
        #pragma unroll
        for (int n = 0; n < D / 8; n++) {
            acc[n][0] *= cr0; acc[n][1] *= cr0;
            acc[n][2] *= cr1; acc[n][3] *= cr1;
        }
        #pragma unroll
        for (int kk = 0; kk < KT / 16; kk++) {
            unsigned pa[4];
            c_to_a(pa, s[2 * kk], s[2 * kk + 1]);
            mma_rows<D, LD>(acc, pa, Vs, kk * 16, lane);
        }
        __syncthreads();  // this buffer is the target of the next iteration's copies
    }
    l0 = quad_sum(l0);
    l1 = quad_sum(l1);
    const float inv0 = l0 > 0.0f ? 1.0f / l0 : 0.0f, inv1 = l1 > 0.0f ? 1.0f / l1 : 0.0f;
    bf16_t* ob = o + qoff;
    #pragma unroll
    for (int n = 0; n < D / 8; n++) {
        int c = n * 8 + 2 * t;
        if (r0 < TQ) *(unsigned*)(ob + (u64)r0 * QRS + c) = pack2(acc[n][0] * inv0, acc[n][1] * inv0);
        if (r1 < TQ) *(unsigned*)(ob + (u64)r1 * QRS + c) = pack2(acc[n][2] * inv1, acc[n][3] * inv1);
    }
    if (t == 0) {
        if (r0 < TQ) lse[(u64)(b * H + h) * TQ + r0] = m0 + logf(l0);
        if (r1 < TQ) lse[(u64)(b * H + h) * TQ + r1] = m1 + logf(l1);
    }
#endif
}

// Di = rowsum(dO o) for every query row (f32 [B, H, TQ]), one warp per row; o, dO in the layout
// (QHS, QRS) of the tensor-core kernels.
extern "C" __global__ void attn_di_bf16(const bf16_t* o, const bf16_t* dout, float* di, int rows, int D,
                                        int H, int TQ, int QHS, int QRS) {
    const int row = (int)((blockIdx.x * (u64)blockDim.x + threadIdx.x) >> 5), lane = threadIdx.x & 31;
    if (row >= rows) return;
    const int qi = row % TQ, h = (row / TQ) % H, b = row / (TQ * H);
    const u64 base = (u64)b * H * TQ * D + (u64)h * QHS + (u64)qi * QRS;
    float s = 0.0f;
    for (int d = lane; d < D; d += 32) s += bf16_to_f32(o[base + d]) * bf16_to_f32(dout[base + d]);
    for (int w = 16; w > 0; w >>= 1) s += __shfl_xor_sync(0xffffffffu, s, w);
    if (lane == 0) di[row] = s;
}

// dq: block = 64 queries of one head; key tiles of KT. P = exp(s - lse), dP = dO V^T,
// dS = P (dP - Di), dq = scale dS K.
template <int D>
DEV void attn_dq_tc(const bf16_t* q, const bf16_t* k, const bf16_t* v, const bf16_t* dout, const float* lse,
                    const float* di, bf16_t* dq, const unsigned* pads, int H, int KV, int TQ, int TK, int off,
                    int win, float scale, int QHS, int QRS, int KHS, int KRS) {
#if __CUDA_ARCH__ >= 800
    constexpr int KT = D == 128 ? 32 : 64, LD = D + 8;
    extern __shared__ __align__(16) unsigned char tsm[];
    bf16_t* Ks = (bf16_t*)tsm;
    bf16_t* Vs = Ks + KT * LD;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int q0 = (gridDim.x - 1 - blockIdx.x) * 64, h = blockIdx.y, b = blockIdx.z, kvh = h / (H / KV);
    const int pad = pads[b];
    const u64 qoff = (u64)b * H * TQ * D + (u64)h * QHS, koff = (u64)b * KV * TK * D + (u64)kvh * KHS;
    const bf16_t* kb = k + koff;
    const bf16_t* vb = v + koff;
    const int r0 = q0 + warp * 16 + g, r1 = r0 + 8;
    unsigned qa[D / 16][4], ga[D / 16][4];
    #pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
        int c = kk * 16 + 2 * t;
        qa[kk][0] = r0 < TQ ? ld32(q + qoff + (u64)r0 * QRS + c) : 0u;
        qa[kk][1] = r1 < TQ ? ld32(q + qoff + (u64)r1 * QRS + c) : 0u;
        qa[kk][2] = r0 < TQ ? ld32(q + qoff + (u64)r0 * QRS + c + 8) : 0u;
        qa[kk][3] = r1 < TQ ? ld32(q + qoff + (u64)r1 * QRS + c + 8) : 0u;
        ga[kk][0] = r0 < TQ ? ld32(dout + qoff + (u64)r0 * QRS + c) : 0u;
        ga[kk][1] = r1 < TQ ? ld32(dout + qoff + (u64)r1 * QRS + c) : 0u;
        ga[kk][2] = r0 < TQ ? ld32(dout + qoff + (u64)r0 * QRS + c + 8) : 0u;
        ga[kk][3] = r1 < TQ ? ld32(dout + qoff + (u64)r1 * QRS + c + 8) : 0u;
    }
    const u64 roff = (u64)(b * H + h) * TQ;
    const float ls0 = r0 < TQ ? lse[roff + r0] : 0.0f, ls1 = r1 < TQ ? lse[roff + r1] : 0.0f;
    const float d0 = r0 < TQ ? di[roff + r0] : 0.0f, d1 = r1 < TQ ? di[roff + r1] : 0.0f;
    float acc[D / 8][4];
    #pragma unroll
    for (int n = 0; n < D / 8; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
    const int c_first = off + q0, c_last = off + min(TQ, q0 + 64) - 1;
    int j_begin = 0;
    if (win > 0 && c_first - win > 0) j_begin = ((c_first - win) / KT) * KT;
    for (int j0 = j_begin; j0 <= c_last && j0 < TK; j0 += KT) {
        __syncthreads();
        load_tile<D, KT>(Ks, kb, j0, TK, KRS);
        load_tile<D, KT>(Vs, vb, j0, TK, KRS);
        __syncthreads();
        float s[KT / 8][4], dp[KT / 8][4];
        #pragma unroll
        for (int n = 0; n < KT / 8; n++)
            #pragma unroll
            for (int e = 0; e < 4; e++) { s[n][e] = 0.0f; dp[n][e] = 0.0f; }
        #pragma unroll
        for (int kk = 0; kk < D / 16; kk++)
            #pragma unroll
            for (int n = 0; n < KT / 8; n += 2) {
                unsigned bb[4];
                frag_b_nk<LD>(bb, Ks, n * 8, kk * 16, lane);
                mma_bf16(s[n], qa[kk], bb[0], bb[1]);
                mma_bf16(s[n + 1], qa[kk], bb[2], bb[3]);
                frag_b_nk<LD>(bb, Vs, n * 8, kk * 16, lane);
                mma_bf16(dp[n], ga[kk], bb[0], bb[1]);
                mma_bf16(dp[n + 1], ga[kk], bb[2], bb[3]);
            }
        const bool full = j0 + KT - 1 <= c_first && j0 >= pad && j0 + KT <= TK && (win == 0 || j0 + win >= c_last);
        #pragma unroll
        for (int n = 0; n < KT / 8; n++)
            #pragma unroll
            for (int e = 0; e < 4; e++) {
                int j = j0 + n * 8 + 2 * t + (e & 1);
                bool ok = full || (j < TK && visible(off + (e < 2 ? r0 : r1), j, pad, win));
                float p = ok ? __expf(s[n][e] * scale - (e < 2 ? ls0 : ls1)) : 0.0f;
                s[n][e] = p * (dp[n][e] - (e < 2 ? d0 : d1));
            }
        #pragma unroll
        for (int kk = 0; kk < KT / 16; kk++) {
            unsigned sa[4];
            c_to_a(sa, s[2 * kk], s[2 * kk + 1]);
            mma_rows<D, LD>(acc, sa, Ks, kk * 16, lane);
        }
    }
    #pragma unroll
    for (int n = 0; n < D / 8; n++) {
        int c = n * 8 + 2 * t;
        if (r0 < TQ) *(unsigned*)(dq + qoff + (u64)r0 * QRS + c) = pack2(acc[n][0] * scale, acc[n][1] * scale);
        if (r1 < TQ) *(unsigned*)(dq + qoff + (u64)r1 * QRS + c) = pack2(acc[n][2] * scale, acc[n][3] * scale);
    }
#endif
}

// dk, dv: block = 64 keys of one KV head, over every query head of its group and query tiles of QT.
// Computed transposed (keys are the rows): S^T = K q^T, dP^T = V dO^T, dS^T = P^T (dP^T - Di);
// dv = P^T dO, dk = scale dS^T q.
template <int D>
DEV void attn_dkdv_tc(const bf16_t* q, const bf16_t* k, const bf16_t* v, const bf16_t* dout, const float* lse,
                      const float* di, bf16_t* dk, bf16_t* dv, const unsigned* pads, int H, int KV, int TQ,
                      int TK, int off, int win, float scale, int QHS, int QRS, int KHS, int KRS) {
#if __CUDA_ARCH__ >= 800
    constexpr int QT = D == 128 ? 32 : 64, LD = D + 8;
    extern __shared__ __align__(16) unsigned char tsm[];
    bf16_t* Ks = (bf16_t*)tsm;
    bf16_t* Vs = Ks + 64 * LD;
    bf16_t* Qs = Vs + 64 * LD;
    bf16_t* Gs = Qs + QT * LD;
    float* Ls = (float*)(Gs + QT * LD);
    float* Ds = Ls + QT;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int j0 = blockIdx.x * 64, kvh = blockIdx.y, b = blockIdx.z, rep = H / KV;
    const int pad = pads[b];
    const u64 koff = (u64)b * KV * TK * D + (u64)kvh * KHS;
    load_tile<D, 64>(Ks, k + koff, j0, TK, KRS);
    load_tile<D, 64>(Vs, v + koff, j0, TK, KRS);
    const int kr0 = j0 + warp * 16 + g, kr1 = kr0 + 8;
    float ak[D / 8][4], av[D / 8][4];
    #pragma unroll
    for (int n = 0; n < D / 8; n++)
        #pragma unroll
        for (int e = 0; e < 4; e++) { ak[n][e] = 0.0f; av[n][e] = 0.0f; }
    const int j_last = min(TK, j0 + 64) - 1;
    int qi_begin = max(0, j0 - off);
    qi_begin = (qi_begin / QT) * QT;
    int qi_end = TQ;
    if (win > 0) qi_end = min(TQ, j_last + win - off + 1);
    for (int hh = 0; hh < rep; hh++) {
        const int h = kvh * rep + hh;
        const u64 qoff = (u64)b * H * TQ * D + (u64)h * QHS, roff = (u64)(b * H + h) * TQ;
        for (int q0 = qi_begin; q0 < qi_end; q0 += QT) {
            __syncthreads();
            load_tile<D, QT>(Qs, q + qoff, q0, TQ, QRS);
            load_tile<D, QT>(Gs, dout + qoff, q0, TQ, QRS);
            for (int i = threadIdx.x; i < QT; i += 128) {
                Ls[i] = q0 + i < TQ ? lse[roff + q0 + i] : 0.0f;
                Ds[i] = q0 + i < TQ ? di[roff + q0 + i] : 0.0f;
            }
            __syncthreads();
            float s[QT / 8][4], dp[QT / 8][4];
            #pragma unroll
            for (int n = 0; n < QT / 8; n++)
                #pragma unroll
                for (int e = 0; e < 4; e++) { s[n][e] = 0.0f; dp[n][e] = 0.0f; }
            #pragma unroll
            for (int kk = 0; kk < D / 16; kk++) {
                unsigned ka[4], va[4];
                frag_a<LD>(ka, Ks, warp * 16, kk * 16, lane);
                frag_a<LD>(va, Vs, warp * 16, kk * 16, lane);
                #pragma unroll
                for (int n = 0; n < QT / 8; n += 2) {
                    unsigned bb[4];
                    frag_b_nk<LD>(bb, Qs, n * 8, kk * 16, lane);
                    mma_bf16(s[n], ka, bb[0], bb[1]);
                    mma_bf16(s[n + 1], ka, bb[2], bb[3]);
                    frag_b_nk<LD>(bb, Gs, n * 8, kk * 16, lane);
                    mma_bf16(dp[n], va, bb[0], bb[1]);
                    mma_bf16(dp[n + 1], va, bb[2], bb[3]);
                }
            }
            const bool full = j0 + 63 <= off + q0 && j0 >= pad && j0 + 64 <= TK && q0 + QT <= TQ &&
                              (win == 0 || j0 + win >= off + q0 + QT - 1);
            #pragma unroll
            for (int n = 0; n < QT / 8; n++)
                #pragma unroll
                for (int e = 0; e < 4; e++) {
                    int i = n * 8 + 2 * t + (e & 1), key = e < 2 ? kr0 : kr1;
                    bool ok = full || (q0 + i < TQ && key < TK && visible(off + q0 + i, key, pad, win));
                    float p = ok ? __expf(s[n][e] * scale - Ls[i]) : 0.0f;
                    s[n][e] = p;
                    dp[n][e] = p * (dp[n][e] - Ds[i]);
                }
            #pragma unroll
            for (int kk = 0; kk < QT / 16; kk++) {
                unsigned pa[4], sa[4];
                c_to_a(pa, s[2 * kk], s[2 * kk + 1]);
                c_to_a(sa, dp[2 * kk], dp[2 * kk + 1]);
                // mma_rows for dv and dk, interleaved per column pair (the measured schedule).
                #pragma unroll
                for (int n = 0; n < D / 8; n += 2) {
                    unsigned bb[4];
                    frag_b_kn<LD>(bb, Gs, kk * 16, n * 8, lane);
                    mma_bf16(av[n], pa, bb[0], bb[1]);
                    mma_bf16(av[n + 1], pa, bb[2], bb[3]);
                    frag_b_kn<LD>(bb, Qs, kk * 16, n * 8, lane);
                    mma_bf16(ak[n], sa, bb[0], bb[1]);
                    mma_bf16(ak[n + 1], sa, bb[2], bb[3]);
                }
            }
        }
    }
    #pragma unroll
    for (int n = 0; n < D / 8; n++) {
        int c = n * 8 + 2 * t;
        if (kr0 < TK) {
            *(unsigned*)(dk + koff + (u64)kr0 * KRS + c) = pack2(ak[n][0] * scale, ak[n][1] * scale);
            *(unsigned*)(dv + koff + (u64)kr0 * KRS + c) = pack2(av[n][0], av[n][1]);
        }
        if (kr1 < TK) {
            *(unsigned*)(dk + koff + (u64)kr1 * KRS + c) = pack2(ak[n][2] * scale, ak[n][3] * scale);
            *(unsigned*)(dv + koff + (u64)kr1 * KRS + c) = pack2(av[n][2], av[n][3]);
        }
    }
#endif
}

#define ATTN_TC(D) \
extern "C" __global__ void attn_fwd_tc_##D(const bf16_t* q, const bf16_t* k, const bf16_t* v, bf16_t* o, float* lse, const unsigned* pads, int H, int KV, int TQ, int TK, int off, int win, float scale, int QHS, int QRS, int KHS, int KRS) \
    { attn_fwd_tc<D>(q, k, v, o, lse, pads, H, KV, TQ, TK, off, win, scale, QHS, QRS, KHS, KRS); } \
extern "C" __global__ void attn_dq_tc_##D(const bf16_t* q, const bf16_t* k, const bf16_t* v, const bf16_t* dout, const float* lse, const float* di, bf16_t* dq, const unsigned* pads, int H, int KV, int TQ, int TK, int off, int win, float scale, int QHS, int QRS, int KHS, int KRS) \
    { attn_dq_tc<D>(q, k, v, dout, lse, di, dq, pads, H, KV, TQ, TK, off, win, scale, QHS, QRS, KHS, KRS); } \
extern "C" __global__ void attn_dkdv_tc_##D(const bf16_t* q, const bf16_t* k, const bf16_t* v, const bf16_t* dout, const float* lse, const float* di, bf16_t* dk, bf16_t* dv, const unsigned* pads, int H, int KV, int TQ, int TK, int off, int win, float scale, int QHS, int QRS, int KHS, int KRS) \
    { attn_dkdv_tc<D>(q, k, v, dout, lse, di, dk, dv, pads, H, KV, TQ, TK, off, win, scale, QHS, QRS, KHS, KRS); }
ATTN_TC(64)
ATTN_TC(128)

//! Attention on our kernels without materialising scores: flash style forward and backward
//! (`engine/kernels/attention_tc.cu` on tensor cores, `attention.cu` on CUDA cores) on
//! `[b, h, t, d]` or, on tensor cores, the projections' own `[b, t, h, d]`; and the decode step
//! (`decode.cu`: one query per row, the KV cache read in place, split over the keys).
use candle_core::{DType, Result, Tensor};

use crate::gpu::switches::switches;

/// Whether the flash attention kernel may be used for these queries.
pub fn flash_supported(q: &Tensor) -> bool {
    q.dims()
        .last()
        .is_some_and(|&d| flash_kernel_for(q.device(), q.dtype(), d))
}

/// Whether attention on `device` in `dtype` with heads of `head_dim` runs in the flash kernel
/// (which computes the mask itself: [`crate::model::AttnCtx`] then builds none).
pub fn flash_kernel_for(device: &candle_core::Device, dtype: DType, head_dim: usize) -> bool {
    cfg!(feature = "cuda")
        && device.is_cuda()
        && matches!(dtype, DType::F32 | DType::BF16)
        && switches().fused
        && switches().flash
        && matches!(head_dim, 64 | 128)
}

/// Left padding per row as the attention kernel reads it (`u32 [b]` on `device`): built once per
/// batch step, not once per layer.
pub fn pads_tensor(pads: &[usize], device: &candle_core::Device) -> Result<Tensor> {
    let v: Vec<u32> = pads.iter().map(|&p| p as u32).collect();
    Tensor::from_vec(v, pads.len(), device)
}

gpu_ops! {
    /// Causal attention over a left-padded batch without materialising scores. `q: [b, h, tq, d]`,
    /// `k`, `v`: `[b, kv, tk, d]` (GQA), `pads[r]` padding columns of row `r`, `offset` columns
    /// before this call's first query (the KV cache), `window` Mistral's sliding window.
    /// The visibility rule is [`crate::model::AttnCtx`]'s mask, computed in the kernel.
    pub fn attention(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        pads: &[usize],
        offset: usize,
        window: Option<usize>,
    ) -> Result<Tensor>;
    /// [`attention`] with the pads already on the device ([`pads_tensor`]).
    pub fn attention_with_pads(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        pads: &Tensor,
        offset: usize,
        window: Option<usize>,
    ) -> Result<Tensor>;
    /// [`attention_with_pads`] on `[b, t, heads, d]` operands (the projections' own layout), the
    /// output `[b, t, h, d]`: the tensor-core kernels read and write that layout in place, so no
    /// transposed copies are made around attention; elsewhere (f32, older GPUs, unaligned views)
    /// it goes through transposes to the `[b, h, t, d]` kernels.
    pub fn attention_thd(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        pads: &Tensor,
        offset: usize,
        window: Option<usize>,
    ) -> Result<Tensor>;
}

#[cfg(feature = "cuda")]
mod cuda {
    use std::sync::{Arc, Mutex};

    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::WrapErr;
    use candle_core::cuda_backend::cudarc::driver::{
        CudaFunction, CudaSlice, CudaView, LaunchConfig, PushKernelArg, sys,
    };
    use candle_core::{
        CpuStorage, CudaDevice, CudaStorage, CustomOp3, DType, Layout, Result, Shape, Tensor,
    };

    use crate::gpu::fused::kernel::{Raw, alloc, by_dtype, emit, launch, range_of, suffix};
    use crate::gpu::nvrtc;
    use crate::gpu::switches::switches;

    const BQ: usize = 64;
    const BK: usize = 32;
    /// The dk/dv kernel's query tile.
    const BQ2: usize = 32;

    fn smem_bytes(kernel: &str, d: usize) -> u32 {
        let floats = match kernel {
            "fwd" => d * (BQ + 1) + d * (BK + 1) + BK * d + BQ * (BK + 1),
            "dq" => 2 * d * (BQ + 1) + 2 * d * (BK + 1) + BQ * (BK + 1) + 2 * BQ,
            _ => 2 * d * (BQ2 + 1) + 2 * d * (BK + 1) + 2 * BQ2 * (BK + 1) + 2 * BQ2,
        };
        (floats * 4) as u32
    }

    fn attn_func(dev: &CudaDevice, name: &str, smem: u32) -> Result<CudaFunction> {
        let f = nvrtc::function(dev, name)?;
        f.set_attribute(
            sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            smem as i32,
        )
        .w()?;
        Ok(f)
    }

    struct Geometry {
        b: usize,
        h: usize,
        kv: usize,
        tq: usize,
        tk: usize,
        d: usize,
        /// `[q head stride, q row stride, k head stride, k row stride]` in elements (the
        /// tensor-core kernels' QHS, QRS, KHS, KRS).
        strides: [i32; 4],
    }

    struct FlashAttn {
        pads: Tensor,
        offset: i32,
        window: i32,
        scale: f32,
        lse: Arc<Mutex<Option<CudaSlice<f32>>>>,
        /// Operands in `[b, t, heads, d]` (the projections' layout; tensor-core kernels only)
        /// instead of `[b, heads, t, d]`.
        thd: bool,
    }

    impl FlashAttn {
        fn geometry(&self, ql: &Layout, kl: &Layout) -> Result<Geometry> {
            let (b, h, tq, d, kv, tk, dk) = if self.thd {
                let (b, tq, h, d) = ql.shape().dims4()?;
                let (_, tk, kv, dk) = kl.shape().dims4()?;
                (b, h, tq, d, kv, tk, dk)
            } else {
                let (b, h, tq, d) = ql.shape().dims4()?;
                let (_, kv, tk, dk) = kl.shape().dims4()?;
                (b, h, tq, d, kv, tk, dk)
            };
            if dk != d || kv == 0 || h % kv != 0 {
                candle_core::bail!("flash attention: q {:?}, k {:?}", ql.dims(), kl.dims());
            }
            let strides = if self.thd {
                [d, h * d, d, kv * d]
            } else {
                [tq * d, d, tk * d, d]
            }
            .map(|s| s as i32);
            Ok(Geometry {
                b,
                h,
                kv,
                tq,
                tk,
                d,
                strides,
            })
        }
    }

    /// Whether the tensor-core kernels (`attn_*_tc_*`) can run: bf16, a device of compute
    /// capability 8.0 or newer, every operand starting on a 16-byte boundary (they load rows as
    /// 16-byte vectors), not switched off (`SIZESPEC_FLASH_TC=0`).
    fn tensor_cores(dev: &CudaDevice, dtype: DType, starts: &[usize]) -> bool {
        dtype == DType::BF16
            && switches().flash_tc
            && starts.iter().all(|s| s.is_multiple_of(8))
            && nvrtc::compute_capability(dev).is_ok_and(|(major, _)| major >= 8)
    }

    /// Shared memory of the tensor-core kernels (bf16 tiles `[rows][d + 8]`, see engine/kernels/attention_tc.cu).
    fn tc_smem_bytes(kernel: &str, d: usize) -> u32 {
        let ld = d + 8;
        let small = if d == 128 { 32 } else { 64 };
        let bytes = match kernel {
            "fwd" => 2 * 2 * 64 * ld * 2,
            "dq" => 2 * small * ld * 2,
            _ => (2 * 64 + 2 * small) * ld * 2 + 2 * small * 4,
        };
        bytes as u32
    }

    /// Query heads per KV head the decode kernel takes (`DEC_MAXR` in engine/kernels/decode.cu).
    const DECODE_MAX_GROUP: usize = 8;

    /// Whether the decode kernel runs: one query per row, at most `DECODE_MAX_GROUP` query heads
    /// per KV head, not switched off (`SIZESPEC_FLASH_DECODE=0`).
    fn decode_kernel(tq: usize, h: usize, kv: usize) -> bool {
        tq == 1 && kv > 0 && h / kv <= DECODE_MAX_GROUP && switches().flash_decode
    }

    /// Whether `t` (`[b, kv, columns, d]`) is contiguous or a view of the first columns of a
    /// contiguous `[b, kv, capacity, d]` KV-cache buffer: what the decode kernel reads in place.
    fn cache_layout(l: &Layout) -> bool {
        let (dims, st) = (l.dims(), l.stride());
        dims.len() == 4
            && st[3] == 1
            && st[2] == dims[3]
            && st[1].is_multiple_of(dims[3])
            && st[1] / dims[3] >= dims[2]
            && (dims[0] == 1 || st[0] == dims[1] * st[1])
    }

    /// The element range and columns per (row, head) of a [`cache_layout`] tensor.
    fn cache_rows(l: &Layout, g: &Geometry) -> Result<(std::ops::Range<usize>, usize)> {
        if !cache_layout(l) {
            candle_core::bail!(
                "flash attention: k/v layout {:?} / {:?}",
                l.dims(),
                l.stride()
            );
        }
        let tks = l.stride()[1] / g.d;
        let start = l.start_offset();
        Ok((start..start + g.b * g.kv * tks * g.d, tks))
    }

    impl FlashAttn {
        /// One query per row (a decode step): `attn_decode_*`, the keys split over enough blocks
        /// to fill the GPU (about 1,024 blocks), then `attn_decode_combine_*` when there is more than one split.
        fn decode(
            &self,
            g: &Geometry,
            dev: &CudaDevice,
            (q, qr, ql): (&CudaStorage, std::ops::Range<usize>, &Layout),
            [(k, kr), (v, vr)]: [(&CudaStorage, std::ops::Range<usize>); 2],
            tks: usize,
        ) -> Result<(CudaStorage, Shape)> {
            let splits = (1024usize.div_ceil(g.b * g.kv)).clamp(1, g.tk.div_ceil(32).max(1));
            let chunk = g.tk.div_ceil(splits);
            let sfx = suffix(q.dtype())?;
            let rows = g.b * g.h;
            let lse = alloc::<f32>(dev, rows)?;
            let part = alloc::<f32>(
                dev,
                if splits > 1 {
                    rows * splits * (g.d + 2)
                } else {
                    1
                },
            )?;
            let rp = Raw::of(&self.pads)?;
            let pads = rp.view::<u32>()?;
            let ints = [
                g.h as i32,
                g.kv as i32,
                g.tk as i32,
                tks as i32,
                self.offset,
                self.window,
            ];
            let chunk_i = chunk as i32;
            let cfg = LaunchConfig {
                grid_dim: (splits as u32, g.kv as u32, g.b as u32),
                block_dim: (128, 1, 1),
                shared_mem_bytes: 0,
            };
            let out = by_dtype!(q.dtype(), T => {
                let o = alloc::<T>(dev, rows * g.d)?;
                let func = nvrtc::function(dev, &format!("attn_decode_{sfx}_{}", g.d))?;
                let stream = dev.cuda_stream();
                let mut b = stream.launch_builder(&func);
                let (qv, kv_, vv) = (
                    q.as_cuda_slice::<T>()?.slice(qr),
                    k.as_cuda_slice::<T>()?.slice(kr),
                    v.as_cuda_slice::<T>()?.slice(vr),
                );
                b.arg(&qv).arg(&kv_).arg(&vv).arg(&o).arg(&lse).arg(&part).arg(&pads);
                for i in &ints {
                    b.arg(i);
                }
                b.arg(&self.scale).arg(&chunk_i);
                // SAFETY: shapes checked in `geometry` (tq = 1, h / kv <= DEC_MAXR); `part` holds
                // (d + 2) floats per row, head and split when there are several splits.
                #[allow(unsafe_code)]
                unsafe { b.launch(cfg) }.w()?;
                if splits > 1 {
                    let (s_i, d_i) = (splits as i32, g.d as i32);
                    let ccfg = LaunchConfig {
                        grid_dim: (rows as u32, 1, 1),
                        block_dim: (g.d as u32, 1, 1),
                        shared_mem_bytes: 0,
                    };
                    launch!(dev, &format!("attn_decode_combine_{sfx}"), ccfg, &part, &o, &lse,
                        &s_i, &d_i);
                }
                CudaStorage::wrap_cuda_slice(o, dev.clone())
            });
            *self.lse.lock().unwrap_or_else(|e| e.into_inner()) = Some(lse);
            Ok((out, ql.shape().clone()))
        }

        /// The backward on tensor cores: Di = rowsum(dO o) once, then dq and dk/dv.
        fn bwd_tc(
            &self,
            g: &Geometry,
            dev: &CudaDevice,
            [q, k, v]: [&Tensor; 3],
            [rq, rk, rv, ro, rd]: [&Raw<'_>; 5],
            lse: &CudaSlice<f32>,
            pads: &CudaView<'_, u32>,
        ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
            type T = half::bf16;
            let (qv, kv_, vv, ov, dov) = (
                rq.view::<T>()?,
                rk.view::<T>()?,
                rv.view::<T>()?,
                ro.view::<T>()?,
                rd.view::<T>()?,
            );
            let rows = g.b * g.h * g.tq;
            let di = alloc::<f32>(dev, rows)?;
            let (rows_i, d_i) = (rows as i32, g.d as i32);
            let di_cfg = LaunchConfig {
                grid_dim: (rows.div_ceil(8) as u32, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            let (h_i, tq_i) = (g.h as i32, g.tq as i32);
            launch!(
                dev,
                "attn_di_bf16",
                di_cfg,
                &ov,
                &dov,
                &di,
                &rows_i,
                &d_i,
                &h_i,
                &tq_i,
                &g.strides[0],
                &g.strides[1]
            );
            let dq = alloc::<T>(dev, g.b * g.h * g.tq * g.d)?;
            let dk = alloc::<T>(dev, g.b * g.kv * g.tk * g.d)?;
            let dv = alloc::<T>(dev, g.b * g.kv * g.tk * g.d)?;
            let ints = [
                g.h as i32,
                g.kv as i32,
                g.tq as i32,
                g.tk as i32,
                self.offset,
                self.window,
            ];
            let stream = dev.cuda_stream();
            // attn_{dq,dkdv}_tc_D: the same operands, then its outputs, then the same scalars.
            let launch =
                |kernel: &str, grid: (u32, u32, u32), outs: &[&CudaSlice<T>]| -> Result<()> {
                    let smem = tc_smem_bytes(kernel, g.d);
                    let func = attn_func(dev, &format!("attn_{kernel}_tc_{}", g.d), smem)?;
                    let cfg = LaunchConfig {
                        grid_dim: grid,
                        block_dim: (128, 1, 1),
                        shared_mem_bytes: smem,
                    };
                    let mut b = stream.launch_builder(&func);
                    b.arg(&qv).arg(&kv_).arg(&vv).arg(&dov).arg(lse).arg(&di);
                    for o in outs {
                        b.arg(*o);
                    }
                    b.arg(pads);
                    for i in &ints {
                        b.arg(i);
                    }
                    b.arg(&self.scale);
                    for st in &g.strides {
                        b.arg(st);
                    }
                    // SAFETY: shapes checked in `geometry`; dq has q's size, dk and dv k's and v's,
                    // di one f32 per query row; the argument order is the kernels' signature.
                    #[allow(unsafe_code)]
                    unsafe { b.launch(cfg) }.w()?;
                    Ok(())
                };
            launch(
                "dq",
                (g.tq.div_ceil(BQ) as u32, g.h as u32, g.b as u32),
                &[&dq],
            )?;
            launch(
                "dkdv",
                (g.tk.div_ceil(64) as u32, g.kv as u32, g.b as u32),
                &[&dk, &dv],
            )?;
            Ok((
                Some(emit(q, dq, dev, q.shape())?),
                Some(emit(k, dk, dev, k.shape())?),
                Some(emit(v, dv, dev, v.shape())?),
            ))
        }
    }

    impl CustomOp3 for FlashAttn {
        fn name(&self) -> &'static str {
            "flash-attention"
        }
        fn cpu_fwd(
            &self,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
        ) -> Result<(CpuStorage, Shape)> {
            Err(crate::gpu::fused::gpu_only("attention"))
        }
        fn cuda_fwd(
            &self,
            q: &CudaStorage,
            ql: &Layout,
            k: &CudaStorage,
            kl: &Layout,
            v: &CudaStorage,
            vl: &Layout,
        ) -> Result<(CudaStorage, Shape)> {
            let g = self.geometry(ql, kl)?;
            let dev = q.device().clone();
            if !self.thd && decode_kernel(g.tq, g.h, g.kv) {
                let (kr, tks) = cache_rows(kl, &g)?;
                let (vr, vtks) = cache_rows(vl, &g)?;
                if vtks != tks {
                    candle_core::bail!("flash attention: k and v of different cache layouts");
                }
                return self.decode(&g, &dev, (q, range_of(ql)?, ql), [(k, kr), (v, vr)], tks);
            }
            let (qr, kr, vr) = (range_of(ql)?, range_of(kl)?, range_of(vl)?);
            let tc = tensor_cores(&dev, q.dtype(), &[qr.start, kr.start, vr.start]);
            if self.thd && !tc {
                candle_core::bail!(
                    "flash attention: [b, t, h, d] operands need the tensor-core kernels"
                );
            }
            let (name, smem) = if tc {
                (format!("attn_fwd_tc_{}", g.d), tc_smem_bytes("fwd", g.d))
            } else {
                (
                    format!("attn_fwd_{}_{}", suffix(q.dtype())?, g.d),
                    smem_bytes("fwd", g.d),
                )
            };
            let func = attn_func(&dev, &name, smem)?;
            let cfg = LaunchConfig {
                grid_dim: (g.tq.div_ceil(BQ) as u32, g.h as u32, g.b as u32),
                block_dim: (128, 1, 1),
                shared_mem_bytes: smem,
            };
            let lse = alloc::<f32>(&dev, g.b * g.h * g.tq)?;
            let rp = Raw::of(&self.pads)?;
            let pads = rp.view::<u32>()?;
            let ints = [
                g.h as i32,
                g.kv as i32,
                g.tq as i32,
                g.tk as i32,
                self.offset,
                self.window,
            ];
            let out = by_dtype!(q.dtype(), T => {
                let o = alloc::<T>(&dev, g.b * g.h * g.tq * g.d)?;
                let stream = dev.cuda_stream();
                let mut b = stream.launch_builder(&func);
                let qv_ = q.as_cuda_slice::<T>()?.slice(qr.clone());
                b.arg(&qv_);
                let kv_ = k.as_cuda_slice::<T>()?.slice(kr.clone());
                let vv_ = v.as_cuda_slice::<T>()?.slice(vr.clone());
                b.arg(&kv_).arg(&vv_).arg(&o).arg(&lse).arg(&pads);
                for i in &ints {
                    b.arg(i);
                }
                b.arg(&self.scale);
                if tc {
                    for st in &g.strides {
                        b.arg(st);
                    }
                }
                // SAFETY: shapes checked in `geometry`; the kernel's signature is attn_fwd_*.
                #[allow(unsafe_code)]
                unsafe { b.launch(cfg) }.w()?;
                CudaStorage::wrap_cuda_slice(o, dev.clone())
            });
            *self.lse.lock().unwrap_or_else(|e| e.into_inner()) = Some(lse);
            Ok((out, ql.shape().clone()))
        }
        fn bwd(
            &self,
            q: &Tensor,
            k: &Tensor,
            v: &Tensor,
            o: &Tensor,
            dout: &Tensor,
        ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
            let dout = dout.contiguous()?;
            let (rq, rk, rv, ro, rd) = (
                Raw::of(q)?,
                Raw::of(k)?,
                Raw::of(v)?,
                Raw::of(o)?,
                Raw::of(&dout)?,
            );
            let g = self.geometry(q.layout(), k.layout())?;
            let dev = rq.cuda().device().clone();
            let guard = self.lse.lock().unwrap_or_else(|e| e.into_inner());
            let Some(lse) = guard.as_ref() else {
                candle_core::bail!("flash attention backward before its forward");
            };
            let rp = Raw::of(&self.pads)?;
            let pads = rp.view::<u32>()?;
            let ints = [
                g.h as i32,
                g.kv as i32,
                g.tq as i32,
                g.tk as i32,
                self.offset,
                self.window,
            ];
            let sfx = suffix(q.dtype())?;
            let starts = [
                rq.range.start,
                rk.range.start,
                rv.range.start,
                ro.range.start,
                rd.range.start,
            ];
            if tensor_cores(&dev, q.dtype(), &starts) {
                return self.bwd_tc(&g, &dev, [q, k, v], [&rq, &rk, &rv, &ro, &rd], lse, &pads);
            }
            if self.thd {
                candle_core::bail!(
                    "flash attention: [b, t, h, d] operands need the tensor-core kernels"
                );
            }
            by_dtype!(q.dtype(), T => {
                let (qv, kv_, vv, ov, dv_) = (rq.view::<T>()?, rk.view::<T>()?, rv.view::<T>()?,
                    ro.view::<T>()?, rd.view::<T>()?);
                let dq = alloc::<T>(&dev, q.elem_count())?;
                let dk = alloc::<T>(&dev, k.elem_count())?;
                let dvv = alloc::<T>(&dev, v.elem_count())?;
                let stream = dev.cuda_stream();
                {
                    let smem = smem_bytes("dq", g.d);
                    let func = attn_func(&dev, &format!("attn_bwd_dq_{sfx}_{}", g.d), smem)?;
                    let cfg = LaunchConfig {
                        grid_dim: (g.tq.div_ceil(BQ) as u32, g.h as u32, g.b as u32),
                        block_dim: (128, 1, 1),
                        shared_mem_bytes: smem,
                    };
                    let mut b = stream.launch_builder(&func);
                    b.arg(&qv).arg(&kv_).arg(&vv).arg(&ov).arg(&dv_).arg(lse).arg(&dq).arg(&pads);
                    for i in &ints {
                        b.arg(i);
                    }
                    b.arg(&self.scale);
                    // SAFETY: as the forward; dq has q's size.
                    #[allow(unsafe_code)]
                    unsafe { b.launch(cfg) }.w()?;
                }
                {
                    let smem = smem_bytes("dkdv", g.d);
                    let func = attn_func(&dev, &format!("attn_bwd_dkdv_{sfx}_{}", g.d), smem)?;
                    let cfg = LaunchConfig {
                        grid_dim: (g.tk.div_ceil(BK) as u32, g.kv as u32, g.b as u32),
                        block_dim: (128, 1, 1),
                        shared_mem_bytes: smem,
                    };
                    let mut b = stream.launch_builder(&func);
                    b.arg(&qv).arg(&kv_).arg(&vv).arg(&ov).arg(&dv_).arg(lse).arg(&dk).arg(&dvv).arg(&pads);
                    for i in &ints {
                        b.arg(i);
                    }
                    b.arg(&self.scale);
                    // SAFETY: as the forward; dk, dv have k's and v's sizes.
                    #[allow(unsafe_code)]
                    unsafe { b.launch(cfg) }.w()?;
                }
                Ok((
                    Some(emit(q, dq, &dev, q.shape())?),
                    Some(emit(k, dk, &dev, k.shape())?),
                    Some(emit(v, dvv, &dev, v.shape())?),
                ))
            })
        }
    }

    pub(super) fn attention(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        pads: &[usize],
        offset: usize,
        window: Option<usize>,
    ) -> Result<Tensor> {
        attention_with_pads(
            q,
            k,
            v,
            &super::pads_tensor(pads, q.device())?,
            offset,
            window,
        )
    }

    pub(super) fn attention_with_pads(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        pads: &Tensor,
        offset: usize,
        window: Option<usize>,
    ) -> Result<Tensor> {
        let d = q.dim(3)?;
        if pads.dims() != [q.dim(0)?] || pads.dtype() != DType::U32 {
            candle_core::bail!(
                "flash attention: pads {:?} for q {:?}",
                pads.dims(),
                q.dims()
            );
        }
        // A decode step reads the KV cache in place (a view of its preallocated buffer).
        let decode = decode_kernel(q.dim(2)?, q.dim(1)?, k.dim(1)?);
        // Its rows are read as 8- or 16-byte vectors: the view must start on 4 elements.
        let kv_in_place = |t: &Tensor| -> Result<Tensor> {
            match (
                decode,
                cache_layout(t.layout()),
                t.layout().start_offset().is_multiple_of(4),
            ) {
                (true, true, true) => Ok(t.clone()),
                (true, _, _) => t.force_contiguous(),
                _ => t.contiguous(),
            }
        };
        let op = FlashAttn {
            pads: pads.clone(),
            offset: offset as i32,
            window: window.unwrap_or(0) as i32,
            scale: (1.0 / (d as f64).sqrt()) as f32,
            lse: Arc::new(Mutex::new(None)),
            thd: false,
        };
        q.contiguous()?
            .apply_op3(&kv_in_place(k)?, &kv_in_place(v)?, op)
    }

    pub(super) fn attention_thd(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        pads: &Tensor,
        offset: usize,
        window: Option<usize>,
    ) -> Result<Tensor> {
        let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
        let starts = [&q, &k, &v].map(|t| t.layout().start_offset());
        let dev = q.device().as_cuda_device()?;
        if !tensor_cores(dev, q.dtype(), &starts) {
            let t = |x: &Tensor| x.transpose(1, 2);
            let y = attention_with_pads(&t(&q)?, &t(&k)?, &t(&v)?, pads, offset, window)?;
            return y.transpose(1, 2)?.contiguous();
        }
        let d = q.dim(3)?;
        if pads.dims() != [q.dim(0)?] || pads.dtype() != DType::U32 {
            candle_core::bail!(
                "flash attention: pads {:?} for q {:?}",
                pads.dims(),
                q.dims()
            );
        }
        let op = FlashAttn {
            pads: pads.clone(),
            offset: offset as i32,
            window: window.unwrap_or(0) as i32,
            scale: (1.0 / (d as f64).sqrt()) as f32,
            lse: Arc::new(Mutex::new(None)),
            thd: true,
        };
        q.apply_op3(&k, &v, op)
    }
}

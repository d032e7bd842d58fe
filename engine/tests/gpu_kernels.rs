//! Our own kernels against their CPU definitions, on the device named by `SIZESPEC_TEST_DEVICE`
//! (`cuda:0` with a binary built `--features cuda`). Dropout has a CPU implementation too: on the
//! CPU its test checks that against an independent reference, so it still fails when that breaks.
//! The fused ops exist on a GPU only: without the `cuda` feature their tests are ignored (never
//! counted as passed), and a `cuda` build run without a GPU test device fails with the instruction.

/// The allocator the engine is tuned for (`engine::alloc`), as in the binaries.
#[global_allocator]
static GLOBAL: engine::alloc::MiMalloc = engine::alloc::MiMalloc;

use candle_core::{DType, Device, Tensor, Var};
use engine::gpu::dropout::{dropout, dropout_as, mix};
use engine::testkit;

fn values(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// The mask from its definition, element by element.
fn reference(x: &[f32], p: f64, seed: u64) -> Vec<f32> {
    let keep = 1.0 - p;
    let threshold = (keep * f64::from(1u32 << 24)).round() as u32;
    x.iter()
        .enumerate()
        .map(|(i, &v)| {
            if ((mix(seed ^ mix(i as u64)) >> 40) as u32) < threshold {
                v * (1.0 / keep) as f32
            } else {
                0.0
            }
        })
        .collect()
}

#[test]
fn dropout_forward_and_backward_match_the_definition() {
    let dev = testkit::test_device();
    let n = 3 * 1000 + 7; // not a multiple of any block size
    let host: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
    for dtype in [DType::F32, DType::BF16] {
        let x = Tensor::from_vec(host.clone(), n, &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let xs = values(&x);
        let want = reference(&xs, 0.1, 42);
        let x = Var::from_tensor(&x.to_device(&dev).unwrap()).unwrap();
        let y = dropout(x.as_tensor(), 0.1, 42).unwrap();
        assert_eq!(y.dtype(), DType::F32);
        let got = values(&y);
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            worst < 1e-6,
            "{dtype:?} on {dev:?}: forward differs by {worst}"
        );
        // The same mask straight into bf16 (the GPU LoRA branch's form).
        let yb = dropout_as(x.as_tensor(), 0.1, 42, DType::BF16).unwrap();
        assert_eq!(yb.dtype(), DType::BF16);
        let worst_b = values(&yb)
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs() - 1e-2 * b.abs())
            .fold(0f32, f32::max);
        assert!(
            worst_b <= 1e-6,
            "{dtype:?} -> bf16 on {dev:?}: differs beyond bf16 rounding"
        );
        // d(sum(y · w))/dx = w · mask / keep, returned in x's dtype.
        let w = Tensor::from_vec(
            (0..n).map(|i| 1.0 + (i % 5) as f32).collect::<Vec<f32>>(),
            y.shape(),
            &dev,
        )
        .unwrap();
        let grads = (y * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let g = grads.get(x.as_tensor()).unwrap();
        assert_eq!(g.dtype(), dtype);
        let want_g = reference(&values(&w), 0.1, 42);
        let got_g = values(g);
        for (i, (a, b)) in got_g.iter().zip(&want_g).enumerate() {
            let tol = if dtype == DType::BF16 {
                1e-2 * b.abs()
            } else {
                1e-6
            };
            assert!(
                (a - b).abs() <= tol,
                "{dtype:?} on {dev:?}: grad[{i}] {a} vs {b}"
            );
        }
    }
}

// ---- fused ops (GPU only) vs the basic-ops path on the CPU in f32 ---------------------------------

use engine::gpu::fused;
use engine::model::OpPath;
use engine::model::ops;

/// The GPU the fused-op tests run on; panics when `SIZESPEC_TEST_DEVICE` does not name one.
fn gpu() -> Device {
    let dev = testkit::test_device();
    assert!(!dev.is_cpu(), "{NEEDS_GPU}");
    dev
}

/// Why the fused-op tests are ignored without `cuda`, and what a `cuda` build needs to run them.
const NEEDS_GPU: &str =
    "needs a GPU: build with --features cuda and set SIZESPEC_TEST_DEVICE=cuda:N";

fn rand(shape: &[usize], seed: u64) -> Tensor {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// Relative max error `max|a - b| / max|b|`.
fn rel(a: &Tensor, b: &Tensor) -> f32 {
    let a = values(a);
    let b = values(b);
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
        / scale
}

/// Runs `f` on CPU f32 inputs (reference, basic ops) and on the GPU in `dtype` (fused); compares
/// the output and the gradients of `sum(out · w)` with respect to every input.
fn check(
    name: &str,
    inputs: &[Tensor],
    dtype: DType,
    tol: f32,
    f: impl Fn(&[Tensor], bool) -> Tensor,
) {
    let dev = gpu();
    let run = |dev: &Device, dt: DType, fused_path: bool| {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|t| Var::from_tensor(&t.to_dtype(dt).unwrap().to_device(dev).unwrap()).unwrap())
            .collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let out = f(&ts, fused_path);
        let w = rand(out.dims(), 99)
            .to_dtype(out.dtype())
            .unwrap()
            .to_device(dev)
            .unwrap();
        let g = (out.to_dtype(DType::F32).unwrap() * w.to_dtype(DType::F32).unwrap())
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let grads: Vec<Tensor> = vars
            .iter()
            .map(|v| {
                g.get(v.as_tensor())
                    .expect("gradient reaches every input")
                    .clone()
            })
            .collect();
        (out, grads)
    };
    let (want, want_g) = run(&Device::Cpu, DType::F32, false);
    let (got, got_g) = run(&dev, dtype, true);
    let e = rel(&got, &want);
    assert!(e < tol, "{name} {dtype:?}: output rel. err {e}");
    for (i, (a, b)) in got_g.iter().zip(&want_g).enumerate() {
        let e = rel(a, b);
        assert!(e < tol, "{name} {dtype:?}: grad of input {i} rel. err {e}");
    }
}

const TOL: [(DType, f32); 2] = [(DType::F32, 1e-4), (DType::BF16, 5e-2)];

#[test]
#[cfg_attr(
    not(feature = "cuda"),
    ignore = "needs a GPU: build with --features cuda and set SIZESPEC_TEST_DEVICE=cuda:N"
)]
fn fused_rms_norm_rope_swiglu_match_basic_ops() {
    let dev = gpu();
    for (dt, tol) in TOL {
        // 96: our kernel (pairs of elements); 95: the odd row falls back to candle's forward.
        for h in [96, 95] {
            let w = rand(&[h], 3).affine(0.5, 1.0).unwrap();
            check(
                &format!("rms_norm {h}"),
                &[rand(&[3, 5, h], 1)],
                dt,
                tol,
                |t, fz| {
                    // The same call both sides: on the GPU it dispatches to the fused kernel.
                    let _ = fz;
                    let w = w
                        .to_dtype(t[0].dtype())
                        .unwrap()
                        .to_device(t[0].device())
                        .unwrap();
                    ops::rms_norm(&t[0], &w, 1e-5, OpPath::Differentiable).unwrap()
                },
            );
        }
        // The inference path (no graph) runs the same forward kernel.
        let x = rand(&[4, 96], 11).to_dtype(dt).unwrap();
        let w = rand(&[96], 12)
            .affine(0.5, 1.0)
            .unwrap()
            .to_dtype(dt)
            .unwrap();
        let on = |t: &Tensor| t.to_device(&dev).unwrap();
        let got = ops::rms_norm(&on(&x), &on(&w), 1e-5, OpPath::Fused).unwrap();
        let want = ops::rms_norm(&x, &w, 1e-5, OpPath::Differentiable).unwrap();
        let e = rel(&got, &want);
        assert!(e < tol, "rms_norm inference path {dt:?}: rel. err {e}");
        check(
            "swiglu odd",
            &[rand(&[3, 7], 9), rand(&[3, 7], 10)],
            dt,
            tol,
            |t, _| ops::swiglu(&t[0], &t[1]).unwrap(),
        );
        let cos = rand(&[2, 7, 32], 4);
        let sin = rand(&[2, 7, 32], 5);
        check("rope", &[rand(&[2, 3, 7, 64], 6)], dt, tol, |t, _| {
            let dev = t[0].device();
            let dt = t[0].dtype();
            let c = cos.to_dtype(dt).unwrap().to_device(dev).unwrap();
            let s = sin.to_dtype(dt).unwrap().to_device(dev).unwrap();
            ops::rope(&t[0], &c, &s, OpPath::Differentiable).unwrap()
        });
        check(
            "swiglu",
            &[
                rand(&[4, 300], 7).affine(4.0, 0.0).unwrap(),
                rand(&[4, 300], 8),
            ],
            dt,
            tol,
            |t, _| ops::swiglu(&t[0], &t[1]).unwrap(),
        );
    }
}

#[test]
#[cfg_attr(
    not(feature = "cuda"),
    ignore = "needs a GPU: build with --features cuda and set SIZESPEC_TEST_DEVICE=cuda:N"
)]
fn fused_cross_entropy_matches_basic_ops() {
    let targets: Vec<u32> = vec![3, 999, 0, 517, 42];
    for (dt, tol) in TOL {
        check(
            "cross_entropy",
            &[rand(&[5, 1000], 11).affine(8.0, 0.0).unwrap()],
            dt,
            tol,
            |t, _| {
                let tg = Tensor::new(targets.as_slice(), t[0].device()).unwrap();
                engine::train::step::cross_entropy_sum(&t[0], &tg)
                    .unwrap()
                    .reshape(1)
                    .unwrap()
            },
        );
    }
}

/// The visibility rule, written out: key `j` is visible from query column `c` when
/// `(j <= c && j + win >= c && j >= pad) || j == c`.
fn mask(pads: &[usize], offset: usize, tq: usize, window: Option<usize>) -> Tensor {
    let tk = offset + tq;
    let mut m = vec![f32::NEG_INFINITY; pads.len() * tq * tk];
    for (r, &pad) in pads.iter().enumerate() {
        for i in 0..tq {
            let c = offset + i;
            for j in 0..tk {
                let near = window.is_none_or(|w| j + w >= c);
                if (j <= c && near && j >= pad) || j == c {
                    m[(r * tq + i) * tk + j] = 0.0;
                }
            }
        }
    }
    Tensor::from_vec(m, (pads.len(), 1, tq, tk), &Device::Cpu).unwrap()
}

#[test]
#[cfg_attr(
    not(feature = "cuda"),
    ignore = "needs a GPU: build with --features cuda and set SIZESPEC_TEST_DEVICE=cuda:N"
)]
fn flash_attention_matches_the_score_matrix_path() {
    // (d, pads, offset, tq, window): ragged sizes (not multiples of the 64 x 32 tiles), padding,
    // GQA, a sliding window, and queries after cached columns (prefill in chunks).
    type Case = (usize, [usize; 2], usize, usize, Option<usize>);
    // The last two span several 64-key tiles, so whole tiles take the unmasked path of the
    // tensor-core kernels (bf16) while the diagonal, padded and windowed ones are masked.
    let cases: [Case; 9] = [
        (64, [0, 0], 0, 70, None),
        (128, [0, 9], 0, 70, None),
        (128, [3, 40], 0, 97, Some(20)),
        (64, [0, 5], 50, 20, None),
        (128, [0, 0], 31, 33, Some(16)),
        (128, [0, 70], 0, 300, None),
        (64, [5, 0], 0, 260, Some(100)),
        // Decode steps: one query per row after cached columns.
        (128, [0, 7], 90, 1, None),
        (64, [3, 0], 40, 1, Some(16)),
    ];
    for (d, pads, offset, tq, window) in cases {
        let (b, h, kv) = (2, 4, 2);
        let tk = offset + tq;
        let m = mask(&pads, offset, tq, window);
        for (dt, tol) in TOL {
            let name =
                format!("attention d={d} pads={pads:?} offset={offset} tq={tq} window={window:?}");
            check(
                &name,
                &[
                    rand(&[b, h, tq, d], 21).affine(2.0, 0.0).unwrap(),
                    rand(&[b, kv, tk, d], 22),
                    rand(&[b, kv, tk, d], 23),
                ],
                dt,
                tol,
                |t, fz| {
                    if fz {
                        fused::attention(&t[0], &t[1], &t[2], &pads, offset, window).unwrap()
                    } else {
                        ops::attention(&t[0], &t[1], &t[2], Some(&m), OpPath::Differentiable)
                            .unwrap()
                    }
                },
            );
        }
    }
}

/// Attention on `[b, t, heads, d]` operands (the projections' layout: bf16 reads and writes it in
/// place on tensor cores, f32 goes through transposes) against the score-matrix path, forward and
/// backward.
#[test]
#[cfg_attr(
    not(feature = "cuda"),
    ignore = "needs a GPU: build with --features cuda and set SIZESPEC_TEST_DEVICE=cuda:N"
)]
fn flash_attention_on_the_projection_layout_matches() {
    let dev = gpu();
    type Case = (usize, [usize; 2], usize, Option<usize>);
    let cases: [Case; 3] = [
        (128, [0, 9], 150, None),
        (64, [4, 0], 97, Some(30)),
        (128, [2, 0], 64, Some(16)),
    ];
    for (d, pads, tq, window) in cases {
        let (b, h, kv) = (2, 6, 2);
        let m = mask(&pads, 0, tq, window);
        let pads_t = fused::pads_tensor(&pads, &dev).unwrap();
        for (dt, tol) in TOL {
            check(
                &format!("attention thd d={d} pads={pads:?} tq={tq} window={window:?}"),
                &[
                    rand(&[b, tq, h, d], 51).affine(2.0, 0.0).unwrap(),
                    rand(&[b, tq, kv, d], 52),
                    rand(&[b, tq, kv, d], 53),
                ],
                dt,
                tol,
                |t, fz| {
                    if fz {
                        fused::attention_thd(&t[0], &t[1], &t[2], &pads_t, 0, window).unwrap()
                    } else {
                        let tr = |x: &Tensor| x.transpose(1, 2).unwrap();
                        ops::attention(
                            &tr(&t[0]),
                            &tr(&t[1]),
                            &tr(&t[2]),
                            Some(&m),
                            OpPath::Differentiable,
                        )
                        .unwrap()
                        .transpose(1, 2)
                        .unwrap()
                    }
                },
            );
        }
    }
}

/// A decode step reads a preallocated KV-cache buffer in place (a view of its first columns, as
/// `LayerCache` hands it over): the same output as from contiguous keys and values.
#[test]
#[cfg_attr(
    not(feature = "cuda"),
    ignore = "needs a GPU: build with --features cuda and set SIZESPEC_TEST_DEVICE=cuda:N"
)]
fn decode_attention_reads_a_cache_view_like_contiguous_keys() {
    let dev = gpu();
    for dt in [DType::F32, DType::BF16] {
        let (b, h, kv, d, len, cap) = (3, 8, 2, 128, 77, 120);
        let on = |t: Tensor| t.to_dtype(dt).unwrap().to_device(&dev).unwrap();
        let q = on(rand(&[b, h, 1, d], 41));
        let kb = on(rand(&[b, kv, cap, d], 42));
        let vb = on(rand(&[b, kv, cap, d], 43));
        let (k, v) = (kb.narrow(2, 0, len).unwrap(), vb.narrow(2, 0, len).unwrap());
        let pads = [0, 5, 30];
        let got = fused::attention(&q, &k, &v, &pads, len - 1, None).unwrap();
        let want = fused::attention(
            &q,
            &k.contiguous().unwrap(),
            &v.contiguous().unwrap(),
            &pads,
            len - 1,
            None,
        )
        .unwrap();
        assert_eq!(values(&got), values(&want), "{dt:?}");
        let m = mask(&pads, len - 1, 1, None);
        let reference = ops::attention(
            &q.to_dtype(DType::F32)
                .unwrap()
                .to_device(&Device::Cpu)
                .unwrap(),
            &k.to_dtype(DType::F32)
                .unwrap()
                .to_device(&Device::Cpu)
                .unwrap(),
            &v.to_dtype(DType::F32)
                .unwrap()
                .to_device(&Device::Cpu)
                .unwrap(),
            Some(&m),
            OpPath::Differentiable,
        )
        .unwrap();
        let e = rel(&got, &reference);
        assert!(
            e < if dt == DType::BF16 { 2e-2 } else { 1e-4 },
            "{dt:?}: rel. err {e}"
        );
    }
}

/// The one-op LoRA projection against `x·Wᵀ + dropout(x)·Aᵀ·Bᵀ` written with candle ops (the
/// CPU's hash dropout is the same mask): output and the gradients of x, A and B, with and
/// without dropout, over ragged sizes.
#[test]
#[cfg_attr(
    not(feature = "cuda"),
    ignore = "needs a GPU: build with --features cuda and set SIZESPEC_TEST_DEVICE=cuda:N"
)]
fn fused_lora_projection_matches_basic_ops() {
    for (p, seed) in [(0.0, 0u64), (0.1, 77)] {
        for (dt, tol) in TOL {
            let w = rand(&[40, 72], 31).affine(0.2, 0.0).unwrap();
            check(
                &format!("lora p={p}"),
                &[
                    rand(&[2, 13, 72], 32),
                    rand(&[8, 72], 33),
                    rand(&[40, 8], 34),
                ],
                dt,
                tol,
                |t, fz| {
                    let w = w
                        .to_dtype(t[0].dtype())
                        .unwrap()
                        .to_device(t[0].device())
                        .unwrap();
                    let x = t[0].reshape((26, 72)).unwrap();
                    let y = if fz {
                        let drop = fused::LoraDropout::new(p, seed);
                        fused::lora_linear(&x, &w, &t[1], &t[2], drop).unwrap()
                    } else {
                        let xd = if p > 0.0 {
                            dropout_as(&x, p, seed, x.dtype()).unwrap()
                        } else {
                            x.clone()
                        };
                        let base = x.matmul(&w.t().unwrap()).unwrap();
                        let h = xd.matmul(&t[1].t().unwrap()).unwrap();
                        (base + h.matmul(&t[2].t().unwrap()).unwrap()).unwrap()
                    };
                    y.reshape((2, 13, 40)).unwrap()
                },
            );
        }
    }
}

#[test]
#[cfg_attr(
    not(feature = "cuda"),
    ignore = "needs a GPU: build with --features cuda and set SIZESPEC_TEST_DEVICE=cuda:N"
)]
fn fused_adamw_and_norm_match_the_candle_ops_path() {
    use engine::train::optim::{AdamW, AdamWParams, global_norm};
    let dev = gpu();
    let p = AdamWParams {
        weight_decay: 0.01,
        ..Default::default()
    };
    let shapes: [&[usize]; 3] = [&[16, 300], &[300, 16], &[7]];
    let run = |dev: &Device| {
        let vars: Vec<Var> = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| Var::from_tensor(&rand(s, i as u64).to_device(dev).unwrap()).unwrap())
            .collect();
        let mut opt = AdamW::new(vars.clone(), p).unwrap();
        let mut norms = Vec::new();
        for step in 0..3u64 {
            let grads: Vec<Option<Tensor>> = shapes
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    // the last tensor gets no gradient in step 1 (it must stay unchanged)
                    (step != 1 || i != 2)
                        .then(|| rand(s, 100 + 10 * step + i as u64).to_device(dev).unwrap())
                })
                .collect();
            norms.push(global_norm(&grads).unwrap());
            opt.step_scaled(&grads, 0.05, 0.5).unwrap();
        }
        let out: Vec<Vec<f32>> = vars.iter().map(|v| values(v.as_tensor())).collect();
        (out, norms)
    };
    let (want, want_n) = run(&Device::Cpu);
    let (got, got_n) = run(&dev);
    for (a, b) in got_n.iter().zip(&want_n) {
        assert!((a - b).abs() < 1e-4 * b, "norm {a} vs {b}");
    }
    for (t, (a, b)) in got.iter().zip(&want).enumerate() {
        let worst = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-5, "tensor {t}: fused AdamW differs by {worst}");
    }
}

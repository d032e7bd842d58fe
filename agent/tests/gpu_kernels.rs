//! Our own kernels against their CPU definitions, on the device named by `SIZESPEC_TEST_DEVICE`
//! (`cuda:0` with a binary built `--features cuda`). On the CPU (CI) each test checks the CPU
//! implementation against an independent reference instead, so it still fails when that breaks.
mod common;

use agent::gpu::dropout::{dropout, mix};
use candle_core::{DType, Device, Tensor, Var};

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
    let dev = common::test_device();
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

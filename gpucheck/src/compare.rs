//! Comparing a tensor of ours with the reference's: relative error `‖a − b‖ / ‖b‖`, the largest
//! absolute difference, and (for logits) how often the two agree on the argmax of a row.
use candle_core::{D, DType, Tensor};
use serde::Serialize;

use super::{GpucheckError, Result};

/// One compared tensor.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Check {
    pub check: String,
    pub rel_err: f64,
    pub max_abs_diff: f64,
    /// Share of rows (last dimension) whose argmax agrees; `None` for tensors that are not logits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub argmax_agree: Option<f64>,
    pub tol: f64,
    pub pass: bool,
}

/// Whether the argmax agreement rate is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Argmax {
    Rows,
    Skip,
}

fn host(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?)
}

/// Compare `ours` with `reference` (same shape). Passes when the relative error is at most `tol`
/// and nothing is NaN.
pub fn compare(
    name: &str,
    ours: &Tensor,
    reference: &Tensor,
    tol: f64,
    argmax: Argmax,
) -> Result<Check> {
    if ours.dims() != reference.dims() {
        return Err(GpucheckError::Reference {
            path: "-".into(),
            name: name.into(),
            reason: format!(
                "shape {:?} in the reference, ours is {:?}",
                reference.dims(),
                ours.dims()
            ),
        });
    }
    let (a, b) = (host(ours)?, host(reference)?);
    let (mut diff2, mut ref2, mut max_abs) = (0f64, 0f64, 0f64);
    let mut nan = false;
    for (x, y) in a.iter().zip(&b) {
        let d = x - y;
        nan |= d.is_nan();
        diff2 += d * d;
        ref2 += y * y;
        max_abs = max_abs.max(d.abs());
    }
    let rel_err = if ref2 > 0.0 {
        (diff2 / ref2).sqrt()
    } else {
        diff2.sqrt()
    };
    let argmax_agree = match argmax {
        Argmax::Skip => None,
        Argmax::Rows => {
            let am = |t: &Tensor| -> Result<Vec<u32>> {
                Ok(t.to_dtype(DType::F32)?
                    .argmax(D::Minus1)?
                    .flatten_all()?
                    .to_vec1::<u32>()?)
            };
            let (x, y) = (am(ours)?, am(reference)?);
            let same = x.iter().zip(&y).filter(|(p, q)| p == q).count();
            Some(same as f64 / x.len().max(1) as f64)
        }
    };
    let rel_err = if nan { f64::NAN } else { rel_err };
    Ok(Check {
        check: name.into(),
        rel_err,
        max_abs_diff: if nan { f64::NAN } else { max_abs },
        argmax_agree,
        tol,
        // NaN compares false, so a NaN result fails.
        pass: rel_err <= tol,
    })
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn relative_error_max_diff_and_argmax_are_computed() {
        let b = Tensor::new(&[[3f32, 4.0, 0.0], [0.0, 0.0, 1.0]], &Device::Cpu).unwrap();
        let a = Tensor::new(&[[3f32, 4.0, 0.0], [0.0, 2.0, 1.0]], &Device::Cpu).unwrap();
        let c = compare("x", &a, &b, 0.1, Argmax::Rows).unwrap();
        // ‖a − b‖ = 2, ‖b‖ = sqrt(26)
        assert!((c.rel_err - 2.0 / 26f64.sqrt()).abs() < 1e-12);
        assert_eq!(c.max_abs_diff, 2.0);
        assert_eq!(c.argmax_agree, Some(0.5));
        assert!(!c.pass);
        let same = compare("y", &b, &b, 1e-6, Argmax::Skip).unwrap();
        assert!(same.pass && same.rel_err == 0.0 && same.argmax_agree.is_none());
    }

    #[test]
    fn nan_fails_and_shape_mismatch_is_an_error() {
        let b = Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap();
        let a = Tensor::new(&[f32::NAN, 2.0], &Device::Cpu).unwrap();
        assert!(!compare("n", &a, &b, 1.0, Argmax::Skip).unwrap().pass);
        let c = Tensor::new(&[1f32, 2.0, 3.0], &Device::Cpu).unwrap();
        let e = compare("s", &c, &b, 1.0, Argmax::Skip).unwrap_err();
        assert!(e.to_string().contains("`s`"), "{e}");
    }
}

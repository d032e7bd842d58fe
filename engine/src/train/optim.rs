//! AdamW over the LoRA tensors, with state that can be saved and restored (for resuming a run), and
//! global-norm gradient clipping.
//!
//! The update is torch's / candle_nn's AdamW (decoupled weight decay, bias-corrected moments).
//! Gradients come in as a list aligned with the parameter list, because the layer-by-layer step
//! collects them from several backward passes rather than one `GradStore`.
use candle_core::{DType, Tensor, Var};

use crate::gpu::fused;

/// AdamW hyper-parameters (betas and eps are torch's defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWParams {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWParams {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// The optimiser: parameters, their moments, and the number of updates done.
#[derive(Debug)]
pub struct AdamW {
    params: AdamWParams,
    vars: Vec<Var>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    t: u64,
}

impl AdamW {
    /// Zero moments for every parameter (f32 state whatever the parameter dtype).
    pub fn new(vars: Vec<Var>, params: AdamWParams) -> candle_core::Result<Self> {
        // Two separate allocations: the fused GPU update writes the moments in place.
        let zeros = || {
            vars.iter()
                .map(|v| Tensor::zeros(v.shape(), DType::F32, v.device()))
                .collect::<Result<Vec<_>, _>>()
        };
        let (m, v) = (zeros()?, zeros()?);
        Ok(Self {
            params,
            vars,
            m,
            v,
            t: 0,
        })
    }

    /// Updates done so far.
    pub fn steps(&self) -> u64 {
        self.t
    }

    /// One update with learning rate `lr`. `grads[i]` is the gradient of parameter `i`
    /// (`None`: the parameter did not take part in the loss; it is left unchanged, as torch does).
    pub fn step(&mut self, grads: &[Option<Tensor>], lr: f64) -> candle_core::Result<()> {
        self.step_scaled(grads, lr, 1.0)
    }

    /// [`AdamW::step`] on `grad_scale ·` the gradients (global-norm clipping's factor, see
    /// [`clip_factor`]). On a GPU one fused kernel updates every tensor in place.
    pub fn step_scaled(
        &mut self,
        grads: &[Option<Tensor>],
        lr: f64,
        grad_scale: f64,
    ) -> candle_core::Result<()> {
        if grads.len() != self.vars.len() {
            candle_core::bail!(
                "AdamW: {} gradients for {} parameters",
                grads.len(),
                self.vars.len()
            );
        }
        self.t += 1;
        let AdamWParams {
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.params;
        let scale_m = 1.0 / (1.0 - beta1.powi(self.t as i32));
        let scale_v = 1.0 / (1.0 - beta2.powi(self.t as i32));
        let live: Vec<usize> = (0..grads.len()).filter(|&i| grads[i].is_some()).collect();
        let grads_live: Vec<Tensor> = live
            .iter()
            .map(|&i| grads[i].as_ref().expect("live").contiguous())
            .collect::<candle_core::Result<_>>()?;
        let params: Vec<&Tensor> = live.iter().map(|&i| self.vars[i].as_tensor()).collect();
        let gs: Vec<&Tensor> = grads_live.iter().collect();
        let ms: Vec<&Tensor> = live.iter().map(|&i| &self.m[i]).collect();
        let vs: Vec<&Tensor> = live.iter().map(|&i| &self.v[i]).collect();
        let all: Vec<&Tensor> = params
            .iter()
            .chain(&gs)
            .chain(&ms)
            .chain(&vs)
            .copied()
            .collect();
        if fused::multi_supported(&all) && params.iter().all(|p| p.is_contiguous()) {
            let h = [
                lr,
                beta1,
                beta2,
                eps,
                weight_decay,
                scale_m,
                scale_v,
                grad_scale,
            ];
            return fused::adamw_multi(&params, &gs, &ms, &vs, h.map(|x| x as f32));
        }
        for (i, g) in grads.iter().enumerate() {
            let Some(g) = g else { continue };
            let g = g.to_dtype(DType::F32)?;
            let g = if grad_scale != 1.0 {
                (g * grad_scale)?
            } else {
                g
            };
            let m = ((&self.m[i] * beta1)? + (&g * (1.0 - beta1))?)?;
            let v = ((&self.v[i] * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
            let theta = self.vars[i].as_tensor().to_dtype(DType::F32)?;
            let update = ((&m * scale_m)? / ((&v * scale_v)?.sqrt()? + eps)?)?;
            let next = ((theta * (1.0 - lr * weight_decay))? - (update * lr)?)?;
            self.vars[i].set(&next.to_dtype(self.vars[i].dtype())?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    /// The moments, named `m.{i}` / `v.{i}`, plus the step count (for a checkpoint).
    /// Copies, not views: the fused GPU update writes the moments in place.
    pub fn state(&self) -> candle_core::Result<(Vec<(String, Tensor)>, u64)> {
        let mut out = Vec::with_capacity(2 * self.m.len());
        for (i, (m, v)) in self.m.iter().zip(&self.v).enumerate() {
            out.push((format!("m.{i}"), m.copy()?));
            out.push((format!("v.{i}"), v.copy()?));
        }
        Ok((out, self.t))
    }

    /// Restores moments saved by [`AdamW::state`]; shapes must match the parameters.
    pub fn restore(
        &mut self,
        mut get: impl FnMut(&str) -> Option<Tensor>,
        steps: u64,
    ) -> Result<(), String> {
        for i in 0..self.vars.len() {
            for (key, slot) in [("m", &mut self.m[i]), ("v", &mut self.v[i])] {
                let name = format!("{key}.{i}");
                let t = get(&name).ok_or_else(|| format!("optimizer state `{name}` is missing"))?;
                if t.dims() != slot.dims() {
                    return Err(format!(
                        "optimizer state `{name}` has shape {:?}, expected {:?}",
                        t.dims(),
                        slot.dims()
                    ));
                }
                // A copy of its own: the fused GPU update writes the moments in place.
                *slot = t
                    .to_dtype(DType::F32)
                    .and_then(|t| t.to_device(self.vars[i].device()))
                    .and_then(|t| t.copy())
                    .map_err(|e| format!("optimizer state `{name}`: {e}"))?;
            }
        }
        self.t = steps;
        Ok(())
    }
}

/// The global L2 norm of all gradients (computed in f32 on the device, one scalar read back).
pub fn global_norm(grads: &[Option<Tensor>]) -> candle_core::Result<f64> {
    let live: Vec<Tensor> = grads
        .iter()
        .flatten()
        .map(|g| g.contiguous())
        .collect::<candle_core::Result<_>>()?;
    let refs: Vec<&Tensor> = live.iter().collect();
    if fused::multi_supported(&refs) {
        return Ok(fused::sum_squares(&refs)?.sqrt());
    }
    let mut total: Option<Tensor> = None;
    for g in grads.iter().flatten() {
        let s = g.to_dtype(DType::F32)?.sqr()?.sum_all()?;
        total = Some(match total {
            Some(t) => (t + s)?,
            None => s,
        });
    }
    match total {
        Some(t) => Ok(f64::from(t.to_scalar::<f32>()?).sqrt()),
        None => Ok(0.0),
    }
}

/// Scales gradients so their global norm is at most `max_norm` (torch's `clip_grad_norm_`:
/// factor `max_norm / (norm + 1e-6)` when it is below 1). Returns the norm before clipping.
/// Global-norm clipping's factor for a gradient norm: `max_norm / (norm + 1e-6)` when that is below
/// 1, else 1 (also when clipping is off, `max_norm <= 0`, or the norm is not finite).
pub fn clip_factor(norm: f64, max_norm: f64) -> f64 {
    if max_norm > 0.0 && norm.is_finite() {
        (max_norm / (norm + 1e-6)).min(1.0)
    } else {
        1.0
    }
}

pub fn clip_global_norm(grads: &mut [Option<Tensor>], max_norm: f64) -> candle_core::Result<f64> {
    let norm = global_norm(grads)?;
    let factor = clip_factor(norm, max_norm);
    if factor < 1.0 {
        for g in grads.iter_mut().flatten() {
            *g = (&*g * factor)?;
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_candle_nn_adamw() {
        use candle_nn::Optimizer;
        let dev = Device::Cpu;
        let init = Tensor::new(&[[0.5f32, -1.0], [2.0, 0.25]], &dev).unwrap();
        let ours_var = Var::from_tensor(&init).unwrap();
        let ref_var = Var::from_tensor(&init).unwrap();
        let p = AdamWParams {
            weight_decay: 0.01,
            ..Default::default()
        };
        let mut ours = AdamW::new(vec![ours_var.clone()], p).unwrap();
        let mut reference = candle_nn::AdamW::new(
            vec![ref_var.clone()],
            candle_nn::ParamsAdamW {
                lr: 0.1,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.01,
            },
        )
        .unwrap();
        for _ in 0..3 {
            let loss = ours_var.as_tensor().sqr().unwrap().sum_all().unwrap();
            let g = loss
                .backward()
                .unwrap()
                .get(ours_var.as_tensor())
                .unwrap()
                .clone();
            ours.step(&[Some(g)], 0.1).unwrap();
            let loss = ref_var.as_tensor().sqr().unwrap().sum_all().unwrap();
            reference.backward_step(&loss).unwrap();
        }
        let a: Vec<f32> = ours_var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let b: Vec<f32> = ref_var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-6, "{a:?} vs {b:?}");
        }
        assert_ne!(
            a,
            init.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            "parameters moved"
        );
        assert_eq!(ours.steps(), 3);
    }

    #[test]
    fn clipping_caps_the_global_norm() {
        let dev = Device::Cpu;
        let mut g = vec![
            Some(Tensor::new(&[3f32, 0.0], &dev).unwrap()),
            None,
            Some(Tensor::new(&[4f32], &dev).unwrap()),
        ];
        let before = clip_global_norm(&mut g, 1.0).unwrap();
        assert!((before - 5.0).abs() < 1e-6);
        assert!((global_norm(&g).unwrap() - 1.0).abs() < 1e-5);
        let mut small = vec![Some(Tensor::new(&[0.3f32], &dev).unwrap())];
        clip_global_norm(&mut small, 1.0).unwrap();
        assert_eq!(
            small[0].as_ref().unwrap().to_vec1::<f32>().unwrap(),
            vec![0.3]
        );
    }

    #[test]
    fn state_round_trips() {
        let dev = Device::Cpu;
        let var = Var::from_tensor(&Tensor::new(&[1f32, 2.0], &dev).unwrap()).unwrap();
        let mut a = AdamW::new(vec![var.clone()], AdamWParams::default()).unwrap();
        a.step(&[Some(Tensor::new(&[0.5f32, -0.5], &dev).unwrap())], 0.01)
            .unwrap();
        let (state, t) = a.state().unwrap();
        let mut b = AdamW::new(vec![var], AdamWParams::default()).unwrap();
        b.restore(
            |n| state.iter().find(|(k, _)| k == n).map(|(_, t)| t.clone()),
            t,
        )
        .unwrap();
        assert_eq!(b.steps(), 1);
        assert_eq!(
            b.m[0].to_vec1::<f32>().unwrap(),
            a.m[0].to_vec1::<f32>().unwrap()
        );
        assert_eq!(
            b.v[0].to_vec1::<f32>().unwrap(),
            a.v[0].to_vec1::<f32>().unwrap()
        );
        let err = b.restore(|_| None, 1).unwrap_err();
        assert!(err.contains("`m.0`"), "{err}");
    }
}

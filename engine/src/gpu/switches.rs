//! The GPU code's environment switches, for A/B benchmarks, bisecting and profiling only: every
//! default is the product's path. Read once per process ([`switches`]); changing the environment
//! afterwards has no effect.
//!
//! | variable | default | set to | effect |
//! |---|---|---|---|
//! | `SIZESPEC_FUSED` | on | `0` | no fused kernels: the basic-ops path, as on the CPU |
//! | `SIZESPEC_FLASH` | on | `0` | score-matrix attention only (no flash or decode kernel) |
//! | `SIZESPEC_FLASH_TC` | on | `0` | CUDA-core attention kernels instead of tensor cores |
//! | `SIZESPEC_FLASH_DECODE` | on | `0` | decode steps through the flash kernel, not the decode kernel |
//! | `SIZESPEC_FUSED_LORA` | on | `0` | the LoRA projection composed of candle ops |
//! | `SIZESPEC_FUSED_ADAMW` | on | `0` | the optimiser and gradient norm of candle ops |
//! | `SIZESPEC_CUDA_EVENTS` | off | `1` or `true` | cudarc's per-launch event tracking back on |
//! | `SIZESPEC_CUDA_POOL_RELEASE` | off | `1` or `true` | the memory pool releases at every sync |
//! | `SIZESPEC_PROFILE` | off | `1` | per-phase step timings ([`super::prof`]) |
//!
//! `SIZESPEC_FUSED_LORA=0` (or `SIZESPEC_FUSED=0`) keeps about twice the activation memory a layer
//! that the training step's memory estimate assumes (`train::step::layer_graph_bytes` follows the
//! product's path only): whoever switches it off accepts the risk of running out of memory.
use std::sync::LazyLock;

/// The switches' values for this process (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Switches {
    /// `SIZESPEC_FUSED`: the fused kernels at all.
    pub fused: bool,
    /// `SIZESPEC_FLASH`: the attention kernels (flash and decode).
    pub flash: bool,
    /// `SIZESPEC_FLASH_TC`: the tensor-core attention kernels.
    pub flash_tc: bool,
    /// `SIZESPEC_FLASH_DECODE`: the decode-step attention kernel.
    pub flash_decode: bool,
    /// `SIZESPEC_FUSED_LORA`: the LoRA projection as one op.
    pub fused_lora: bool,
    /// `SIZESPEC_FUSED_ADAMW`: the one-launch optimiser and gradient norm.
    pub fused_adamw: bool,
    /// `SIZESPEC_CUDA_EVENTS`: cudarc's per-launch event tracking.
    pub cuda_events: bool,
    /// `SIZESPEC_CUDA_POOL_RELEASE`: the driver's default pool release at every sync.
    pub cuda_pool_release: bool,
    /// `SIZESPEC_PROFILE`: per-phase timings.
    pub profile: bool,
}

impl Switches {
    /// The switches from `var` (an environment lookup: `None` when unset).
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Switches {
        // On unless set to exactly `0`.
        let default_on = |name: &str| var(name).is_none_or(|v| v != "0");
        // Off unless set to `1` or `true` (any case).
        let default_off =
            |name: &str| var(name).is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
        Switches {
            fused: default_on("SIZESPEC_FUSED"),
            flash: default_on("SIZESPEC_FLASH"),
            flash_tc: default_on("SIZESPEC_FLASH_TC"),
            flash_decode: default_on("SIZESPEC_FLASH_DECODE"),
            fused_lora: default_on("SIZESPEC_FUSED_LORA"),
            fused_adamw: default_on("SIZESPEC_FUSED_ADAMW"),
            cuda_events: default_off("SIZESPEC_CUDA_EVENTS"),
            cuda_pool_release: default_off("SIZESPEC_CUDA_POOL_RELEASE"),
            profile: var("SIZESPEC_PROFILE").is_some_and(|v| v == "1"),
        }
    }
}

/// This process's switches, read from the environment at the first call.
pub fn switches() -> &'static Switches {
    static SWITCHES: LazyLock<Switches> =
        LazyLock::new(|| Switches::from_lookup(|name| std::env::var(name).ok()));
    &SWITCHES
}

#[cfg(test)]
mod tests {
    use super::Switches;

    fn with(vars: &[(&str, &str)]) -> Switches {
        Switches::from_lookup(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn defaults_are_the_product_path() {
        let s = with(&[]);
        assert!(s.fused && s.flash && s.flash_tc && s.flash_decode && s.fused_lora);
        assert!(s.fused_adamw);
        assert!(!s.cuda_events && !s.cuda_pool_release && !s.profile);
    }

    #[test]
    fn each_variable_sets_its_own_switch() {
        let off = with(&[("SIZESPEC_FLASH_TC", "0"), ("SIZESPEC_FUSED_LORA", "0")]);
        assert!(!off.flash_tc && !off.fused_lora);
        assert!(off.fused && off.flash && off.flash_decode && off.fused_adamw);
        // Only exactly `0` turns a default-on switch off.
        assert!(with(&[("SIZESPEC_FUSED", "false")]).fused);
        assert!(!with(&[("SIZESPEC_FUSED", "0")]).fused);
        assert!(!with(&[("SIZESPEC_FLASH", "0")]).flash);
        assert!(!with(&[("SIZESPEC_FLASH_DECODE", "0")]).flash_decode);
        assert!(!with(&[("SIZESPEC_FUSED_ADAMW", "0")]).fused_adamw);
        let on = with(&[
            ("SIZESPEC_CUDA_EVENTS", "TRUE"),
            ("SIZESPEC_CUDA_POOL_RELEASE", "1"),
            ("SIZESPEC_PROFILE", "1"),
        ]);
        assert!(on.cuda_events && on.cuda_pool_release && on.profile);
        assert!(!with(&[("SIZESPEC_CUDA_EVENTS", "yes")]).cuda_events);
        // The profile switch takes `1` only.
        assert!(!with(&[("SIZESPEC_PROFILE", "true")]).profile);
    }
}

//! The process allocator the engine is tuned for: mimalloc, told to keep freed memory for reuse.
//!
//! candle allocates a fresh buffer for every op's output. With glibc's allocator, or mimalloc's
//! defaults, the multi-MiB activations of a training step go back to the kernel as soon as they are
//! dropped and are page-faulted in again by the next op: a CPU profile of one SmolLM2 LoRA step
//! (2 cores) spent ~25% of its time in page faults, zeroing and TLB shootdowns, and only 30% in
//! the matmul kernel. With freed memory kept, the same step runs ~2× faster (bench/RESULTS.md).
//! The cost: the resident size stays at the step's peak until the process exits, which is what a
//! worker that runs one step after another needs anyway.
//!
//! A library cannot choose the process allocator for its users: each binary that runs the engine
//! (agent, bench, gpucheck, the engine's test binaries) declares
//! `#[global_allocator] static GLOBAL: engine::alloc::MiMalloc = engine::alloc::MiMalloc;` and
//! calls [`keep_freed_memory`] before its first tensor (the agent's compute thread calls it too).
use std::sync::Once;

pub use mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc's `mi_option_e` (the same position in its v2 and v3
/// headers; libmimalloc-sys does not export the constant).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Never hand freed pages back to the OS (mimalloc's `purge_delay = -1`). Idempotent.
pub fn keep_freed_memory() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: `mi_option_set` is not thread-safe; `Once` serialises the only writer, and the
        // option is a plain integer mimalloc reads when it considers purging.
        #[allow(unsafe_code)]
        unsafe {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1)
        }
    });
}

/// The current purge delay, as mimalloc reads it.
pub fn purge_delay() -> i64 {
    // SAFETY: reads one option (initialising it from the environment on first use).
    #[allow(unsafe_code)]
    let v = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
    // `c_long` is i64 here but i32 on other targets.
    #[allow(clippy::useless_conversion)]
    i64::from(v)
}

#[cfg(test)]
mod tests {
    #[test]
    fn freed_memory_is_kept() {
        super::keep_freed_memory();
        assert_eq!(super::purge_delay(), -1);
    }
}

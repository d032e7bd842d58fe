//! Our CUDA kernels: one CUDA C source ([`SOURCE`], from `engine/kernels/`), compiled with NVRTC
//! to a CUBIN for the device's exact architecture (`sm_XY`), kept in the on-disk kernel cache
//! ([`super::kernel_cache`]: a fresh process loads it instead of compiling), and loaded once per
//! CUDA context; [`function`] hands out its kernels.
//!
//! The source includes no system headers (NVRTC's built-in header set differs between CUDA
//! versions): bf16 values are handled as their 16-bit patterns.
use std::ffi::CString;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use candle_core::cuda_backend::cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, LaunchConfig, sys as driver_sys,
};
use candle_core::cuda_backend::cudarc::nvrtc::{Ptx, result as nvrtc_result, sys as nvrtc_sys};
use candle_core::{CudaDevice, Result};

use super::kernel_cache::{self, KernelCache, KeyInputs, Origin};

/// The compilation unit's name (it appears in NVRTC's messages).
const UNIT: &str = "sizespec_kernels.cu";

/// The kernels' CUDA C, one compilation unit assembled from `engine/kernels/` (each file opens
/// with its `#include`s guarded by `SIZESPEC_COMMON_CUH`, which `common.cuh` defines first, so the
/// includes are skipped here and each file still compiles on its own with nvcc, as CI does).
/// The order is the kernels' order in the compiled module.
pub(crate) const SOURCE: &str = concat!(
    include_str!("../../kernels/common.cuh"),
    include_str!("../../kernels/dropout.cu"),
    include_str!("../../kernels/norm.cu"),
    include_str!("../../kernels/swiglu.cu"),
    include_str!("../../kernels/cross_entropy.cu"),
    include_str!("../../kernels/adamw.cu"),
    include_str!("../../kernels/attention.cuh"),
    include_str!("../../kernels/attention_tc.cu"),
    include_str!("../../kernels/decode.cu"),
    include_str!("../../kernels/attention.cu"),
);

static CC: OnceLock<std::result::Result<(i32, i32), String>> = OnceLock::new();
static SMS: OnceLock<std::result::Result<u32, String>> = OnceLock::new();

/// The device's compute capability (major, minor), asked once per process (one GPU model per
/// process, as the compiled module assumes).
pub(crate) fn compute_capability(dev: &CudaDevice) -> Result<(i32, i32)> {
    CC.get_or_init(|| {
        dev.cuda_stream()
            .context()
            .compute_capability()
            .map_err(|e| format!("compute capability: {e}"))
    })
    .clone()
    .map_err(candle_core::Error::Msg)
}

/// The device's number of multiprocessors, asked once per process (as [`compute_capability`]).
pub(crate) fn multiprocessors(dev: &CudaDevice) -> Result<u32> {
    SMS.get_or_init(|| {
        dev.cuda_stream()
            .context()
            .attribute(driver_sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map(|n| n.max(1) as u32)
            .map_err(|e| format!("multiprocessor count: {e}"))
    })
    .clone()
    .map_err(candle_core::Error::Msg)
}

/// The compiled image (or why there is none), once per process, and the module loaded in each
/// CUDA context of the process, by the context's handle (a module holds its context, so a handle
/// is never a destroyed context's reused address).
struct Loaded {
    image: Option<std::result::Result<Arc<Vec<u8>>, String>>,
    modules: Vec<(usize, Arc<CudaModule>)>,
}

static LOADED: RwLock<Loaded> = RwLock::new(Loaded {
    image: None,
    modules: Vec::new(),
});
/// Held while compiling or loading, so that threads do it once.
static LOADING: Mutex<()> = Mutex::new(());

/// A kernel of [`SOURCE`] by name; the first call in a CUDA context loads the module
/// ([`load`]).
pub(crate) fn function(dev: &CudaDevice, name: &str) -> Result<CudaFunction> {
    let module = load(dev)?;
    module
        .load_function(name)
        .map_err(|e| candle_core::Error::Msg(format!("kernel {name} of {UNIT}: {e}")))
}

/// Our module in `dev`'s CUDA context: compiled (or read from the kernel cache) at the first call
/// of the process, loaded at the first call in each context. A cached image the driver refuses is
/// compiled again and replaced; a failed compile is reported again without retrying.
pub(crate) fn load(dev: &CudaDevice) -> Result<Arc<CudaModule>> {
    let ctx = dev.cuda_stream().context().clone();
    let key = ctx.cu_ctx() as usize;
    let find = || {
        let l = LOADED.read().unwrap_or_else(|e| e.into_inner());
        l.modules
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, m)| m.clone())
    };
    if let Some(m) = find() {
        return Ok(m);
    }
    let _loading = LOADING.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(m) = find() {
        return Ok(m);
    }
    let image = LOADED
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .image
        .clone();
    let (module, image) = match image {
        Some(Err(e)) => return Err(candle_core::Error::Msg(e)),
        Some(Ok(image)) => (load_image(&ctx, &image)?, image),
        None => match Compiled::for_device(dev) {
            Ok(compiled) => compiled.load(&ctx)?,
            Err(e) => {
                LOADED.write().unwrap_or_else(|e| e.into_inner()).image = Some(Err(e.clone()));
                return Err(candle_core::Error::Msg(e));
            }
        },
    };
    let mut l = LOADED.write().unwrap_or_else(|e| e.into_inner());
    l.image = Some(Ok(image));
    l.modules.push((key, module.clone()));
    Ok(module)
}

/// The image for this process's GPU architecture, from the kernel cache or NVRTC.
struct Compiled {
    cache: KernelCache,
    /// The cache entry's name.
    name: String,
    arch: String,
    image: Arc<Vec<u8>>,
    origin: Origin,
    started: std::time::Instant,
}

impl Compiled {
    fn for_device(dev: &CudaDevice) -> std::result::Result<Compiled, String> {
        let started = std::time::Instant::now();
        let (major, minor) = compute_capability(dev).map_err(|e| e.to_string())?;
        let arch = format!("sm_{major}{minor}");
        let inputs = KeyInputs {
            source: SOURCE,
            arch: &arch,
            nvrtc: nvrtc_version()?,
            driver: driver_version()?,
        };
        let name = format!("{arch}-{}", kernel_cache::cache_key(&inputs));
        let cache = KernelCache::new(kernel_cache::cache_dir());
        let (image, origin) = cache.get_or_compile(&name, || compile(&arch))?;
        Ok(Compiled {
            cache,
            name,
            arch,
            image: Arc::new(image),
            origin,
            started,
        })
    }

    /// The module in `ctx`; a cached image the driver refuses is compiled again and replaced.
    fn load(self, ctx: &Arc<CudaContext>) -> Result<(Arc<CudaModule>, Arc<Vec<u8>>)> {
        let (module, image, origin) = match (load_image(ctx, &self.image), self.origin) {
            (Ok(m), origin) => (m, self.image, origin),
            (Err(e), Origin::Cache) => {
                tracing::warn!("cached kernels refused by the driver ({e}): compiling again");
                let image = self
                    .cache
                    .recompile(&self.name, || compile(&self.arch))
                    .map_err(candle_core::Error::Msg)?;
                let image = Arc::new(image);
                (load_image(ctx, &image)?, image, Origin::Compiled)
            }
            (Err(e), Origin::Compiled) => return Err(e),
        };
        let how = match origin {
            Origin::Cache => "read from the kernel cache",
            Origin::Compiled => "compiled with NVRTC",
        };
        tracing::info!(
            "sizespec kernels for {} {how} and loaded in {:.1} s",
            self.arch,
            self.started.elapsed().as_secs_f64()
        );
        Ok((module, image))
    }
}

fn load_image(ctx: &Arc<CudaContext>, image: &[u8]) -> Result<Arc<CudaModule>> {
    ctx.load_module(Ptx::from_binary(image.to_vec()))
        .map_err(|e| candle_core::Error::Msg(format!("loading {UNIT}'s CUBIN: {e}")))
}

/// [`SOURCE`] compiled by NVRTC to a CUBIN for `arch` (`sm_XY`); the error carries NVRTC's log.
fn compile(arch: &str) -> std::result::Result<Vec<u8>, String> {
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        format!("NVRTC could not {what} sizespec's kernels for {arch}: {e}")
    };
    let src = CString::new(SOURCE).map_err(|e| fail("read", &e))?;
    let unit = CString::new(UNIT).map_err(|e| fail("read", &e))?;
    let prog =
        nvrtc_result::create_program(&src, Some(unit.as_c_str())).map_err(|e| fail("load", &e))?;
    // SAFETY: `prog` comes from create_program above and is destroyed once, at the end; `src` and
    // `unit` outlive it.
    #[allow(unsafe_code)]
    let out = unsafe {
        match nvrtc_result::compile_program(prog, &[format!("--gpu-architecture={arch}")]) {
            Ok(()) => cubin(prog).map_err(|e| fail("fetch the CUBIN of", &e)),
            Err(e) => {
                let log = nvrtc_result::get_program_log(prog)
                    .map(|l| {
                        let bytes: Vec<u8> = l.iter().map(|&c| c as u8).collect();
                        String::from_utf8_lossy(&bytes)
                            .trim_end_matches('\0')
                            .to_string()
                    })
                    .unwrap_or_default();
                Err(fail("compile", &format!("{e}\n{log}")))
            }
        }
    };
    // SAFETY: as above; nothing uses `prog` after this.
    #[allow(unsafe_code)]
    let _ = unsafe { nvrtc_result::destroy_program(prog) };
    out
}

/// The CUBIN of a compiled program.
///
/// # Safety
/// `prog` is a live program that compiled.
#[allow(unsafe_code)]
unsafe fn cubin(prog: nvrtc_sys::nvrtcProgram) -> std::result::Result<Vec<u8>, String> {
    let mut size = 0usize;
    // SAFETY: per the caller; `size` is a valid out-pointer.
    unsafe { nvrtc_sys::nvrtcGetCUBINSize(prog, &mut size) }
        .result()
        .map_err(|e| e.to_string())?;
    let mut image = vec![0u8; size];
    // SAFETY: `image` holds the `size` bytes NVRTC writes.
    unsafe { nvrtc_sys::nvrtcGetCUBIN(prog, image.as_mut_ptr().cast()) }
        .result()
        .map_err(|e| e.to_string())?;
    if image.is_empty() {
        return Err("empty CUBIN".into());
    }
    Ok(image)
}

fn nvrtc_version() -> std::result::Result<(i32, i32), String> {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: two valid out-pointers.
    #[allow(unsafe_code)]
    unsafe { nvrtc_sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| format!("NVRTC version: {e}"))?;
    Ok((major, minor))
}

fn driver_version() -> std::result::Result<i32, String> {
    let mut v = 0;
    // SAFETY: a valid out-pointer; the driver is initialised (a device is open).
    #[allow(unsafe_code)]
    unsafe { driver_sys::cuDriverGetVersion(&mut v) }
        .result()
        .map_err(|e| format!("CUDA driver version: {e}"))?;
    Ok(v)
}

/// A grid-stride launch over `n` elements: 256 threads a block, at most 32 blocks a multiprocessor.
pub(crate) fn elementwise(dev: &CudaDevice, n: usize) -> Result<LaunchConfig> {
    let threads = 256u32;
    let cap = multiprocessors(dev)? as usize * 32;
    let blocks = n.div_ceil(threads as usize).clamp(1, cap) as u32;
    Ok(LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    })
}

//! The on-disk cache of our compiled kernels, so that a fresh process loads them in milliseconds
//! instead of compiling them with NVRTC; and the defaults for the CUDA driver's own JIT cache
//! (candle's kernels are PTX, compiled by the driver at their first use).
//!
//! Where: `$SIZESPEC_KERNEL_CACHE`, else `$XDG_CACHE_HOME/sizespec/kernels`, else
//! `~/.cache/sizespec/kernels` ([`cache_dir`]). An entry is named by the sha256 of everything the
//! compiled image depends on ([`cache_key`]: the source, the GPU architecture, the NVRTC and driver
//! versions), holds a digest of its payload, and is written atomically (temp file + rename). An
//! entry that is missing, unreadable, corrupt or that the driver refuses is compiled again and
//! rewritten; a cache that cannot be written costs only the compile. The logic here is generic
//! over the compile step (the GPU side lives in [`super::nvrtc`]), so it is tested on the CPU.
// Only the CUDA build compiles kernels; the CPU build keeps this module for its tests.
#![cfg_attr(not(feature = "cuda"), allow(dead_code))]

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The first bytes of every entry (format version 1).
const MAGIC: &[u8; 8] = b"SZKERN1\n";

/// Everything a compiled image depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyInputs<'a> {
    /// The CUDA C compiled.
    pub source: &'a str,
    /// NVRTC's target, e.g. `sm_90`.
    pub arch: &'a str,
    /// NVRTC's version (major, minor).
    pub nvrtc: (i32, i32),
    /// The driver's version (`cuDriverGetVersion`, e.g. 13000).
    pub driver: i32,
}

/// The entry name for `k`: hex sha256 over every input, each length-prefixed (no two input sets
/// hash the same bytes).
pub fn cache_key(k: &KeyInputs<'_>) -> String {
    let mut h = Sha256::new();
    for part in [
        k.source.as_bytes(),
        k.arch.as_bytes(),
        format!("nvrtc {}.{}", k.nvrtc.0, k.nvrtc.1).as_bytes(),
        format!("driver {}", k.driver).as_bytes(),
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    hex::encode(h.finalize())
}

/// The cache folder from `var` (an environment lookup), `None` when neither a cache variable nor
/// `HOME` is set.
pub fn cache_dir_from(var: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let set = |name: &str| var(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    set("SIZESPEC_KERNEL_CACHE")
        .or_else(|| set("XDG_CACHE_HOME").map(|d| d.join("sizespec").join("kernels")))
        .or_else(|| set("HOME").map(|d| d.join(".cache").join("sizespec").join("kernels")))
}

/// This process's kernel cache folder (see the module docs).
pub fn cache_dir() -> Option<PathBuf> {
    cache_dir_from(|name| std::env::var_os(name))
}

/// The size given to the driver's JIT cache when the user has not chosen one: 4 GiB, the largest
/// value CUDA's documentation allows (the default is smaller), so that the JIT output of every
/// model's kernels fits and none is evicted between tasks.
pub const DRIVER_CACHE_MAXSIZE: u64 = 4 << 30;

/// The driver JIT cache variables to set, from `var` (an environment lookup), for those the user has
/// not set: `CUDA_CACHE_PATH` (`driver/` in the kernel cache folder) and `CUDA_CACHE_MAXSIZE`
/// ([`DRIVER_CACHE_MAXSIZE`]). The driver reads them when CUDA initialises, so they are set before.
pub fn driver_cache_defaults_from(
    var: impl Fn(&str) -> Option<OsString>,
) -> Vec<(&'static str, OsString)> {
    let mut out = Vec::new();
    if var("CUDA_CACHE_PATH").is_none()
        && let Some(dir) = cache_dir_from(&var)
    {
        out.push(("CUDA_CACHE_PATH", dir.join("driver").into_os_string()));
    }
    if var("CUDA_CACHE_MAXSIZE").is_none() {
        out.push((
            "CUDA_CACHE_MAXSIZE",
            DRIVER_CACHE_MAXSIZE.to_string().into(),
        ));
    }
    out
}

/// [`driver_cache_defaults_from`] this process's environment.
pub fn driver_cache_defaults() -> Vec<(&'static str, OsString)> {
    driver_cache_defaults_from(|name| std::env::var_os(name))
}

/// Where an image came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A valid cache entry.
    Cache,
    /// Compiled now (and stored, when the cache is writable).
    Compiled,
}

/// The kernel cache in one folder (or none: then every image is compiled).
#[derive(Debug, Clone)]
pub struct KernelCache {
    dir: Option<PathBuf>,
}

impl KernelCache {
    pub fn new(dir: Option<PathBuf>) -> KernelCache {
        KernelCache { dir }
    }

    /// The entry file of `name` (a [`cache_key`], possibly with a readable prefix).
    pub fn path(&self, name: &str) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(format!("{name}.bin")))
    }

    /// The image of entry `name`: the cached one when the entry is valid, else `compile()`'s
    /// output, which is then stored.
    pub fn get_or_compile(
        &self,
        name: &str,
        compile: impl FnOnce() -> Result<Vec<u8>, String>,
    ) -> Result<(Vec<u8>, Origin), String> {
        if let Some(path) = self.path(name) {
            match std::fs::read(&path) {
                Ok(bytes) => match decode(&bytes) {
                    Some(image) => return Ok((image.to_vec(), Origin::Cache)),
                    None => tracing::warn!(
                        "kernel cache entry {} is corrupt: compiling again",
                        path.display()
                    ),
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(
                    "kernel cache entry {} unreadable ({e}): compiling again",
                    path.display()
                ),
            }
        }
        Ok((self.recompile(name, compile)?, Origin::Compiled))
    }

    /// `compile()`'s output, stored as entry `name` whatever the entry held (the driver refused a
    /// cached image, or there was none).
    pub fn recompile(
        &self,
        name: &str,
        compile: impl FnOnce() -> Result<Vec<u8>, String>,
    ) -> Result<Vec<u8>, String> {
        let image = compile()?;
        if let Some(path) = self.path(name)
            && let Err(e) = store(&path, &image)
        {
            tracing::warn!(
                "kernel cache: could not write {} ({e}); the next process compiles again",
                path.display()
            );
        }
        Ok(image)
    }
}

fn store(path: &Path, image: &[u8]) -> std::io::Result<()> {
    let mut bytes = Vec::with_capacity(MAGIC.len() + 32 + image.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&Sha256::digest(image));
    bytes.extend_from_slice(image);
    shared::fsutil::write_atomic(path, &bytes)
}

/// The payload of an entry, `None` unless its header and digest are intact.
fn decode(bytes: &[u8]) -> Option<&[u8]> {
    let rest = bytes.strip_prefix(MAGIC.as_slice())?;
    if rest.len() < 32 {
        return None;
    }
    let (digest, image) = rest.split_at(32);
    (!image.is_empty() && Sha256::digest(image).as_slice() == digest).then_some(image)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    const INPUTS: KeyInputs<'static> = KeyInputs {
        source: "extern \"C\" __global__ void k() {}",
        arch: "sm_90",
        nvrtc: (13, 0),
        driver: 13000,
    };

    #[test]
    fn the_key_changes_with_each_input() {
        let base = cache_key(&INPUTS);
        assert_eq!(base.len(), 64);
        assert_eq!(
            base,
            cache_key(&INPUTS),
            "the key is a function of its inputs"
        );
        let changed = [
            KeyInputs {
                source: "extern \"C\" __global__ void k2() {}",
                ..INPUTS
            },
            KeyInputs {
                arch: "sm_80",
                ..INPUTS
            },
            KeyInputs {
                nvrtc: (13, 1),
                ..INPUTS
            },
            KeyInputs {
                nvrtc: (12, 0),
                ..INPUTS
            },
            KeyInputs {
                driver: 12080,
                ..INPUTS
            },
        ];
        let mut keys: Vec<String> = changed.iter().map(cache_key).collect();
        keys.push(base);
        let n = keys.len();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), n, "every input set has its own key");
        // Length prefixes: moving bytes between source and arch changes the key.
        let a = KeyInputs {
            source: "ab",
            arch: "c",
            ..INPUTS
        };
        let b = KeyInputs {
            source: "a",
            arch: "bc",
            ..INPUTS
        };
        assert_ne!(cache_key(&a), cache_key(&b));
    }

    #[test]
    fn compiles_once_then_reads_the_entry() {
        let dir = tempfile::tempdir().unwrap();
        let cache = KernelCache::new(Some(dir.path().join("kernels")));
        let calls = Cell::new(0);
        let compile = || {
            calls.set(calls.get() + 1);
            Ok(b"cubin bytes".to_vec())
        };
        let (img, origin) = cache.get_or_compile("sm_90-k", compile).unwrap();
        assert_eq!(
            (img.as_slice(), origin),
            (&b"cubin bytes"[..], Origin::Compiled)
        );
        let (img, origin) = cache.get_or_compile("sm_90-k", compile).unwrap();
        assert_eq!(
            (img.as_slice(), origin),
            (&b"cubin bytes"[..], Origin::Cache)
        );
        assert_eq!(calls.get(), 1);
        // No temp file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("kernels"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["sm_90-k.bin"]);
    }

    #[test]
    fn a_corrupt_entry_is_compiled_again_and_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let cache = KernelCache::new(Some(dir.path().to_path_buf()));
        let path = cache.path("k").unwrap();
        let good = || Ok(b"the image".to_vec());
        cache.get_or_compile("k", good).unwrap();
        let whole = std::fs::read(&path).unwrap();
        let mut flipped = whole.clone();
        *flipped.last_mut().unwrap() ^= 1;
        for bad in [
            flipped,
            whole[..whole.len() - 1].to_vec(),
            whole[..20].to_vec(),
            Vec::new(),
            b"not an entry at all".to_vec(),
        ] {
            std::fs::write(&path, &bad).unwrap();
            let compiled = Cell::new(false);
            let (img, origin) = cache
                .get_or_compile("k", || {
                    compiled.set(true);
                    Ok(b"the image".to_vec())
                })
                .unwrap();
            assert!(compiled.get(), "{bad:?} was taken as valid");
            assert_eq!(
                (img.as_slice(), origin),
                (&b"the image"[..], Origin::Compiled)
            );
            assert_eq!(
                std::fs::read(&path).unwrap(),
                whole,
                "the entry is rewritten"
            );
        }
    }

    #[test]
    fn a_refused_entry_is_replaced_and_errors_pass_through() {
        let dir = tempfile::tempdir().unwrap();
        let cache = KernelCache::new(Some(dir.path().to_path_buf()));
        cache.get_or_compile("k", || Ok(b"old".to_vec())).unwrap();
        assert_eq!(
            cache.recompile("k", || Ok(b"new".to_vec())).unwrap(),
            b"new"
        );
        let (img, origin) = cache.get_or_compile("k", || unreachable!()).unwrap();
        assert_eq!((img.as_slice(), origin), (&b"new"[..], Origin::Cache));
        let err = cache
            .get_or_compile("other", || Err("NVRTC said no".into()))
            .unwrap_err();
        assert_eq!(err, "NVRTC said no");
        assert!(!cache.path("other").unwrap().exists());
    }

    #[test]
    fn an_unwritable_or_absent_cache_still_compiles() {
        let dir = tempfile::tempdir().unwrap();
        // A file where the folder should be: every write fails.
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, b"x").unwrap();
        for cache in [
            KernelCache::new(Some(blocker.join("kernels"))),
            KernelCache::new(None),
        ] {
            let calls = Cell::new(0);
            for _ in 0..2 {
                let (img, origin) = cache
                    .get_or_compile("k", || {
                        calls.set(calls.get() + 1);
                        Ok(b"img".to_vec())
                    })
                    .unwrap();
                assert_eq!((img.as_slice(), origin), (&b"img"[..], Origin::Compiled));
            }
            assert_eq!(calls.get(), 2);
        }
    }

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| {
            vars.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn the_folder_follows_the_variables_in_order() {
        let all = [
            ("SIZESPEC_KERNEL_CACHE", "/k"),
            ("XDG_CACHE_HOME", "/x"),
            ("HOME", "/h"),
        ];
        assert_eq!(cache_dir_from(env(&all)), Some(PathBuf::from("/k")));
        assert_eq!(
            cache_dir_from(env(&all[1..])),
            Some(PathBuf::from("/x/sizespec/kernels"))
        );
        assert_eq!(
            cache_dir_from(env(&all[2..])),
            Some(PathBuf::from("/h/.cache/sizespec/kernels"))
        );
        assert_eq!(
            cache_dir_from(env(&[("SIZESPEC_KERNEL_CACHE", ""), ("HOME", "/h")])),
            Some(PathBuf::from("/h/.cache/sizespec/kernels")),
            "an empty variable counts as unset"
        );
        assert_eq!(cache_dir_from(env(&[])), None);
    }

    #[test]
    fn driver_cache_defaults_keep_the_users_choice() {
        let set = driver_cache_defaults_from(env(&[("HOME", "/h")]));
        assert_eq!(
            set,
            [
                (
                    "CUDA_CACHE_PATH",
                    OsString::from("/h/.cache/sizespec/kernels/driver")
                ),
                ("CUDA_CACHE_MAXSIZE", OsString::from("4294967296")),
            ]
        );
        let set = driver_cache_defaults_from(env(&[
            ("HOME", "/h"),
            ("CUDA_CACHE_PATH", "/mine"),
            ("CUDA_CACHE_MAXSIZE", "1"),
        ]));
        assert!(set.is_empty(), "{set:?}");
        let set = driver_cache_defaults_from(env(&[]));
        assert_eq!(set, [("CUDA_CACHE_MAXSIZE", OsString::from("4294967296"))]);
    }
}

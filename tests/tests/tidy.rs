//! Workspace tidiness, checked by every `cargo test`: the crate-dependency invariants of
//! ARCHITECTURE.md on the graph cargo resolves (`cargo metadata`, normal dependencies only, the
//! "never depends on" rules transitively), and no Rust source file over [`MAX_LINES`] lines.
use serde_json::Value;
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The longest a `.rs` file of the workspace may be.
const MAX_LINES: usize = 800;

/// Directories never scanned for Rust sources: build output, vendored code, VCS data. Build output
/// also goes to `target-*` folders (other target dirs, ignored by git as well).
const SKIPPED_DIRS: &[&str] = &["target", "third_party", ".git"];

/// tokio features that bring in its runtime (`full` includes them).
const TOKIO_RUNTIME_FEATURES: &[&str] = &["rt", "rt-multi-thread", "full"];

/// The workspace as `cargo metadata` resolves it for the host.
struct Graph {
    root: PathBuf,
    /// Package id -> package object of the metadata.
    packages: HashMap<String, Value>,
    /// Package id -> ids of its normal (not dev, not build) dependencies.
    normal: HashMap<String, Vec<String>>,
    /// Package id -> its enabled features (unified over the workspace).
    features: HashMap<String, Vec<String>>,
    /// Workspace member name -> package id.
    members: HashMap<String, String>,
}

/// `host: ...` of `cargo -vV`: the platform the graph is resolved for (other platforms'
/// dependencies are never built here, and may not even be downloaded).
fn host_triple(cargo: &str) -> String {
    let out = Command::new(cargo)
        .arg("-vV")
        .output()
        .unwrap_or_else(|e| panic!("running `{cargo} -vV`: {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("host: "))
        .unwrap_or_else(|| panic!("`{cargo} -vV` printed no `host:` line:\n{text}"))
        .trim()
        .to_string()
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("cargo metadata: `{key}` is not a string in {v}"))
}

fn array_of<'a>(v: &'a Value, key: &str) -> &'a Vec<Value> {
    v[key]
        .as_array()
        .unwrap_or_else(|| panic!("cargo metadata: `{key}` is not an array in {v}"))
}

fn graph() -> Graph {
    let cargo = env!("CARGO");
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--filter-platform"])
        .arg(host_triple(cargo))
        .arg("--manifest-path")
        .arg(&manifest)
        .output()
        .unwrap_or_else(|e| panic!("running `{cargo} metadata`: {e}"));
    assert!(
        out.status.success(),
        "`cargo metadata --manifest-path {}` failed: {}",
        manifest.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON");
    let packages: HashMap<String, Value> = array_of(&meta, "packages")
        .iter()
        .map(|p| (str_of(p, "id").to_string(), p.clone()))
        .collect();
    let mut normal = HashMap::new();
    let mut features = HashMap::new();
    for node in array_of(&meta["resolve"], "nodes") {
        let id = str_of(node, "id").to_string();
        let deps = array_of(node, "deps")
            .iter()
            .filter(|d| array_of(d, "dep_kinds").iter().any(|k| k["kind"].is_null()))
            .map(|d| str_of(d, "pkg").to_string())
            .collect::<Vec<_>>();
        let feats = array_of(node, "features")
            .iter()
            .filter_map(|f| f.as_str().map(String::from))
            .collect::<Vec<_>>();
        normal.insert(id.clone(), deps);
        features.insert(id, feats);
    }
    let members = array_of(&meta, "workspace_members")
        .iter()
        .map(|m| {
            let id = m.as_str().expect("member ids are strings").to_string();
            (str_of(&packages[&id], "name").to_string(), id)
        })
        .collect();
    Graph {
        root: PathBuf::from(str_of(&meta, "workspace_root")),
        packages,
        normal,
        features,
        members,
    }
}

impl Graph {
    fn name(&self, id: &str) -> &str {
        str_of(&self.packages[id], "name")
    }

    fn member(&self, name: &str) -> &str {
        self.members
            .get(name)
            .unwrap_or_else(|| panic!("`{name}` is not a workspace member"))
    }

    /// Every package `from` reaches through normal dependencies (itself included), each with the
    /// chain of names that leads there.
    fn reachable(&self, from: &str) -> Vec<(String, Vec<String>)> {
        let start = self.member(from).to_string();
        let mut seen = HashSet::from([start.clone()]);
        let mut queue = VecDeque::from([(start, vec![from.to_string()])]);
        let mut out = Vec::new();
        while let Some((id, chain)) = queue.pop_front() {
            for dep in self.normal.get(&id).into_iter().flatten() {
                if seen.insert(dep.clone()) {
                    let mut c = chain.clone();
                    c.push(self.name(dep).to_string());
                    queue.push_back((dep.clone(), c));
                }
            }
            out.push((id, chain));
        }
        out
    }

    /// The dependency chains from member `from` to each package whose name `bad` accepts.
    fn chains_to(&self, from: &str, bad: impl Fn(&str) -> bool) -> Vec<String> {
        self.reachable(from)
            .into_iter()
            .filter(|(id, _)| bad(self.name(id)))
            .map(|(_, chain)| chain.join(" -> "))
            .collect()
    }

    /// Whether member `from` links a package named `name` (normal dependencies, transitively).
    fn links(&self, from: &str, name: &str) -> bool {
        !self.chains_to(from, |n| n == name).is_empty()
    }
}

#[test]
fn engine_never_depends_on_rpc_nvml_or_cli_crates() {
    let g = graph();
    let forbidden = ["tonic", "prost", "proto", "nvml-wrapper", "clap"];
    let chains = g.chains_to("engine", |n| forbidden.contains(&n));
    assert!(
        chains.is_empty(),
        "crate `engine` must not depend on {forbidden:?}, but:\n  {}",
        chains.join("\n  ")
    );
}

#[test]
fn engine_never_depends_on_tokios_runtime() {
    let g = graph();
    let mut found = Vec::new();
    for (id, chain) in g.reachable("engine") {
        let uses_tokio = g.normal[&id].iter().any(|d| g.name(d) == "tokio");
        if !uses_tokio {
            continue;
        }
        let pkg = &g.packages[&id];
        let name = g.name(&id);
        // Its declared dependencies on tokio (one per target, possibly renamed).
        let decls: Vec<&Value> = array_of(pkg, "dependencies")
            .iter()
            .filter(|d| d["kind"].is_null() && d["name"] == "tokio")
            .collect();
        let mut keys = vec!["tokio"];
        for dep in &decls {
            keys.extend(dep["rename"].as_str());
            for f in array_of(dep, "features").iter().filter_map(Value::as_str) {
                if TOKIO_RUNTIME_FEATURES.contains(&f) {
                    found.push(format!(
                        "{} (`{name}` asks tokio for feature `{f}`)",
                        chain.join(" -> ")
                    ));
                }
            }
        }
        // Features of the package that are on and switch a tokio runtime feature on.
        for enabled in &g.features[&id] {
            for entry in pkg["features"][enabled].as_array().into_iter().flatten() {
                let entry = entry.as_str().unwrap_or("");
                let Some((dep_name, feat)) = entry.split_once('/') else {
                    continue;
                };
                if keys.contains(&dep_name.trim_end_matches('?'))
                    && TOKIO_RUNTIME_FEATURES.contains(&feat)
                {
                    found.push(format!(
                        "{} (`{name}` feature `{enabled}` enables `{entry}`)",
                        chain.join(" -> ")
                    ));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "crate `engine` must not depend on tokio's runtime (a CancellationToken needs none), but:\n  {}",
        found.join("\n  ")
    );
}

#[test]
fn agent_is_the_only_crate_linking_candle_and_tonic() {
    let g = graph();
    assert!(
        g.links("agent", "engine") && g.links("agent", "candle-core") && g.links("agent", "tonic"),
        "crate `agent` is expected to link the engine (candle) and tonic"
    );
    let mut both: Vec<&str> = g
        .members
        .keys()
        .map(String::as_str)
        // The integration tests run agents in-process, so they link what the agent links.
        .filter(|m| *m != "agent" && *m != "tests")
        .filter(|m| g.links(m, "candle-core") && g.links(m, "tonic"))
        .collect();
    both.sort();
    assert!(
        both.is_empty(),
        "only crate `agent` may link both candle and tonic; these do too: {both:?}"
    );
}

#[test]
fn coordinator_never_depends_on_candle_or_engine() {
    let g = graph();
    let chains = g.chains_to("coordinator", |n| n.starts_with("candle-") || n == "engine");
    assert!(
        chains.is_empty(),
        "crate `coordinator` must not depend on candle or the engine, but:\n  {}",
        chains.join("\n  ")
    );
}

#[test]
fn shared_never_depends_on_candle_or_tonic() {
    let g = graph();
    let chains = g.chains_to("shared", |n| {
        n.starts_with("candle-") || n == "engine" || n == "tonic"
    });
    assert!(
        chains.is_empty(),
        "crate `shared` must not depend on candle or tonic, but:\n  {}",
        chains.join("\n  ")
    );
}

/// Every `.rs` file under `dir`, skipping [`SKIPPED_DIRS`].
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    for entry in entries {
        let entry = entry.unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let kind = entry
            .file_type()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if kind.is_dir() {
            if !SKIPPED_DIRS.contains(&name.as_ref()) && !name.starts_with("target-") {
                rust_files(&path, out);
            }
        } else if kind.is_file() && name.ends_with(".rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_rust_file_exceeds_the_line_limit() {
    // The workspace root, without running cargo: this crate sits one level below it.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is inside the workspace");
    let mut files = Vec::new();
    rust_files(root, &mut files);
    assert!(
        files.iter().any(|f| f.ends_with("tests/tests/tidy.rs")),
        "the scan of {} did not find this file",
        root.display()
    );
    let mut too_long = Vec::new();
    for f in &files {
        let text =
            std::fs::read_to_string(f).unwrap_or_else(|e| panic!("reading {}: {e}", f.display()));
        let rel = f
            .strip_prefix(root)
            .expect("scanned below the root")
            .to_string_lossy()
            .replace('\\', "/");
        let lines = text.lines().count();
        if lines > MAX_LINES {
            too_long.push(format!("{rel}: {lines} lines"));
        }
    }
    too_long.sort();
    assert!(
        too_long.is_empty(),
        "Rust files over {MAX_LINES} lines (split them into modules):\n  {}",
        too_long.join("\n  ")
    );
}

#[test]
fn graph_root_is_this_workspace() {
    // Guards the dependency checks: they must read this workspace, not some enclosing one.
    let g = graph();
    let here = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is inside the workspace")
        .canonicalize()
        .expect("workspace root exists");
    assert_eq!(g.root.canonicalize().expect("metadata root exists"), here);
    for m in ["engine", "agent", "gpucheck", "coordinator", "shared"] {
        g.member(m);
    }
}

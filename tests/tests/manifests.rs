//! The Kubernetes manifests (deploy/k8s) against the real `coordinator` and `agent` binaries.
//!
//! `kubectl kustomize` renders the cpu overlay; its coordinator Deployment, the StatefulSet's agent
//! pods and the submit Job then run on loopback exactly as their containers' `command`, `args`,
//! `env` and `workingDir` say, with what Kubernetes would supply emulated: each volume mount is a
//! temp folder (Secrets and ConfigMaps written from the rendering itself), the downward API gives
//! pod names and the memory limit, `$(VAR)` is expanded, container ports and the Service name map
//! to loopback ports. An unknown flag, a `SIZESPEC_*` variable no binary reads, a probe path the
//! coordinator does not serve, or two agents under one id fail the test; the submit Job's command
//! must run the overlay's experiment to its report (its size cut through the coordinator's
//! `SIZESPEC_*` config overrides so it takes about a minute), and exit non-zero for one that fails.
//! Every overlay is also checked for the restricted Pod Security profile and GPU/TLS wiring.
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// `$KUBECTL`, else the one `deploy/check.sh` installs, else `kubectl` on `PATH`; fails (never
/// skips) with the install instruction when there is none.
fn kubectl() -> PathBuf {
    if let Some(k) = std::env::var_os("KUBECTL") {
        return PathBuf::from(k);
    }
    let tools = std::env::var_os("SIZESPEC_DEPLOY_TOOLS")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/sizespec/deploy-tools"))
        });
    if let Some(k) = tools
        .map(|t| t.join("venv/bin/kubectl"))
        .filter(|k| k.is_file())
    {
        return k;
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("kubectl"))
        .find(|k| k.is_file())
        .expect(
            "the manifests test needs kubectl (with its built-in kustomize): run \
             `bash deploy/check.sh`, which installs the pinned one, or set $KUBECTL",
        )
}

/// Every object of `kubectl kustomize deploy/k8s/overlays/<overlay>`.
fn render(overlay: &str) -> Vec<Value> {
    let dir = repo_root().join("deploy/k8s/overlays").join(overlay);
    let out = Command::new(kubectl())
        .arg("kustomize")
        .arg(&dir)
        .output()
        .expect("run kubectl kustomize");
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8 rendering");
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| {
            let v: serde_norway::Value = serde::Deserialize::deserialize(doc).expect("YAML");
            serde_json::to_value(v).expect("YAML as JSON")
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind}/{name} is not in the rendering"))
}

fn items(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

/// A binary of this workspace, built beside the test (`cargo test --workspace` builds both).
fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile dir");
    let bin = dir.join(name);
    assert!(
        bin.is_file(),
        "{} is missing: build it with `cargo build -p coordinator -p agent` (`cargo test \
         --workspace` builds it)",
        bin.display()
    );
    bin
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// `16Gi`, `512Mi`, `1G` as MiB (the downward API's `divisor: 1Mi`).
fn quantity_mib(q: &str) -> u64 {
    let (num, unit) = q.split_at(q.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(q.len()));
    let n: f64 = num.parse().unwrap_or_else(|_| panic!("quantity `{q}`"));
    let bytes = n * match unit {
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024f64.powi(4),
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "" => 1.0,
        _ => panic!("quantity unit `{unit}` in `{q}`"),
    };
    (bytes / (1024.0 * 1024.0)).ceil() as u64
}

/// What the cluster around the pods looks like on loopback.
struct Cluster {
    objs: Vec<Value>,
    tmp: tempfile::TempDir,
    /// Container path prefixes inside images that the test supplies from this machine.
    image_paths: BTreeMap<String, PathBuf>,
    /// `host:port` as dialled in the cluster (Service names, `0.0.0.0:<containerPort>`) -> loopback.
    addrs: BTreeMap<String, String>,
}

/// One container made ready to run as a local process.
struct Emulated {
    argv: Vec<String>,
    env: BTreeMap<String, String>,
    cwd: Option<PathBuf>,
    /// Container path -> host path, longest first.
    mounts: Vec<(String, PathBuf)>,
}

impl Cluster {
    fn new(objs: Vec<Value>) -> Cluster {
        Cluster {
            objs,
            tmp: tempfile::tempdir().expect("temp dir"),
            image_paths: BTreeMap::new(),
            addrs: BTreeMap::new(),
        }
    }

    fn data_of(&self, kind: &str, name: &str) -> BTreeMap<String, Vec<u8>> {
        let o = find(&self.objs, kind, name);
        let mut out = BTreeMap::new();
        if let Some(d) = o["data"].as_object() {
            for (k, v) in d {
                let bytes = if kind == "Secret" {
                    base64_decode(&s(v))
                } else {
                    s(v).into_bytes()
                };
                out.insert(k.clone(), bytes);
            }
        }
        if let Some(d) = o["stringData"].as_object() {
            for (k, v) in d {
                out.insert(k.clone(), s(v).into_bytes());
            }
        }
        out
    }

    /// The host folder behind volume `name` of `pod` (PVCs are shared between pods, as a
    /// ReadWriteMany claim would be; claim templates and emptyDirs are per pod).
    fn volume_dir(&self, workload: &Value, pod: &str, name: &str) -> PathBuf {
        let spec = &workload["spec"]["template"]["spec"];
        let dir = if let Some(v) = items(&spec["volumes"]).iter().find(|v| v["name"] == name) {
            if let Some(claim) = v["persistentVolumeClaim"]["claimName"].as_str() {
                find(&self.objs, "PersistentVolumeClaim", claim);
                self.tmp.path().join("pvc").join(claim)
            } else if let Some(secret) = v["secret"]["secretName"].as_str() {
                let d = self.tmp.path().join("pods").join(pod).join(name);
                write_files(&d, &self.data_of("Secret", secret));
                d
            } else if let Some(cm) = v["configMap"]["name"].as_str() {
                let d = self.tmp.path().join("pods").join(pod).join(name);
                write_files(&d, &self.data_of("ConfigMap", cm));
                d
            } else if v.get("emptyDir").is_some() {
                self.tmp.path().join("pods").join(pod).join(name)
            } else {
                panic!("volume `{name}` of {pod}: a kind this test does not emulate: {v}")
            }
        } else if items(&workload["spec"]["volumeClaimTemplates"])
            .iter()
            .any(|t| t["metadata"]["name"] == name)
        {
            self.tmp.path().join("pods").join(pod).join(name)
        } else {
            panic!("{pod} mounts `{name}`, which is neither a volume nor a claim template")
        };
        std::fs::create_dir_all(&dir).expect("volume dir");
        dir
    }

    /// The container of `workload` named `container`, as pod `pod` would run it.
    fn emulate(&self, workload: &Value, container: &str, pod: &str) -> Emulated {
        let spec = &workload["spec"]["template"]["spec"];
        let c = items(&spec["containers"])
            .iter()
            .find(|c| c["name"] == container)
            .unwrap_or_else(|| panic!("no container `{container}` in {pod}"));
        let mut mounts: Vec<(String, PathBuf)> = items(&c["volumeMounts"])
            .iter()
            .map(|m| {
                let dir = self.volume_dir(workload, pod, &s(&m["name"]));
                (s(&m["mountPath"]), dir)
            })
            .chain(self.image_paths.iter().map(|(k, v)| (k.clone(), v.clone())))
            .collect();
        mounts.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        let mut e = Emulated {
            argv: Vec::new(),
            env: BTreeMap::new(),
            cwd: None,
            mounts,
        };
        for var in items(&c["env"]) {
            let name = s(&var["name"]);
            let from = &var["valueFrom"];
            let value = if let Some(v) = var["value"].as_str() {
                Some(self.remap(&e, &expand(v, &e.env)))
            } else if from["fieldRef"]["fieldPath"] == "metadata.name" {
                Some(pod.to_string())
            } else if from["resourceFieldRef"]["resource"] == "limits.memory" {
                assert_eq!(from["resourceFieldRef"]["divisor"], "1Mi", "{name}");
                Some(quantity_mib(&s(&c["resources"]["limits"]["memory"])).to_string())
            } else if let Some(secret) = from["secretKeyRef"]["name"].as_str() {
                let key = s(&from["secretKeyRef"]["key"]);
                let present = self
                    .objs
                    .iter()
                    .any(|o| o["kind"] == "Secret" && o["metadata"]["name"] == secret);
                match (present, from["secretKeyRef"]["optional"] == true) {
                    (true, _) => self
                        .data_of("Secret", secret)
                        .get(&key)
                        .map(|b| String::from_utf8(b.clone()).expect("utf-8 secret value")),
                    (false, true) => None,
                    (false, false) => panic!("{name}: Secret {secret} is not in the rendering"),
                }
            } else {
                panic!("env {name} of {pod}: a source this test does not emulate: {var}")
            };
            if let Some(v) = value {
                e.env.insert(name, v);
            }
        }
        let words = items(&c["command"]).iter().chain(items(&c["args"]));
        let argv: Vec<String> = words
            .map(|w| self.remap(&e, &expand(&s(w), &e.env)))
            .collect();
        assert!(
            !argv.is_empty(),
            "{pod}: no command (the image's entrypoint is not checked)"
        );
        e.argv = argv;
        e.cwd = c["workingDir"]
            .as_str()
            .map(|w| PathBuf::from(self.remap(&e, w)));
        e
    }

    /// A value as the process on this machine must see it: container paths under a mount become
    /// host paths, cluster addresses become loopback ones (also after `--flag=`).
    fn remap(&self, e: &Emulated, v: &str) -> String {
        if let Some((flag, rest)) = v.split_once('=').filter(|(f, _)| f.starts_with("--")) {
            return format!("{flag}={}", self.remap(e, rest));
        }
        for (from, to) in &self.addrs {
            if let Some(i) = v.find(from.as_str()) {
                return format!("{}{to}{}", &v[..i], &v[i + from.len()..]);
            }
        }
        for (path, dir) in &e.mounts {
            if v == path {
                return dir.display().to_string();
            }
            if let Some(rest) = v.strip_prefix(&format!("{path}/")) {
                return dir.join(rest).display().to_string();
            }
        }
        v.to_string()
    }

    fn spawn(&self, e: &Emulated, extra_env: &[(&str, &str)], log: &str) -> Proc {
        let bin = binary(&e.argv[0]);
        let home = self.tmp.path().join("home");
        std::fs::create_dir_all(&home).expect("home");
        let log_path = self.tmp.path().join(format!("{log}.log"));
        let log_file = std::fs::File::create(&log_path).expect("log file");
        // To a file, not a pipe: a chatty process never blocks on a full pipe.
        let out_path = self.tmp.path().join(format!("{log}.out"));
        let out_file = std::fs::File::create(&out_path).expect("stdout file");
        let mut cmd = Command::new(bin);
        cmd.args(&e.argv[1..])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &home)
            .envs(&e.env)
            .envs(extra_env.iter().copied())
            .stdout(out_file)
            .stderr(log_file);
        if let Some(cwd) = &e.cwd {
            std::fs::create_dir_all(cwd).expect("working dir");
            cmd.current_dir(cwd);
        }
        let child = cmd.spawn().expect("start the binary");
        Proc {
            child,
            log: log_path,
            out: out_path,
        }
    }
}

fn write_files(dir: &Path, files: &BTreeMap<String, Vec<u8>>) {
    std::fs::create_dir_all(dir).expect("volume dir");
    for (k, v) in files {
        std::fs::write(dir.join(k), v).expect("write a mounted key");
    }
}

/// Kubernetes' `$(VAR)` expansion of command, args and env values (unknown names stay as is).
fn expand(v: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = v.to_string();
    for (k, val) in env {
        out = out.replace(&format!("$({k})"), val);
    }
    out
}

fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for b in text.bytes().filter(|b| !b" \n\r=".contains(b)) {
        let v = ALPHABET
            .iter()
            .position(|&a| a == b)
            .unwrap_or_else(|| panic!("base64 `{text}`")) as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    out
}

/// A started binary, killed when dropped; its stderr goes to a log the failures quote.
struct Proc {
    child: Child,
    log: PathBuf,
    out: PathBuf,
}

impl Proc {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn assert_running(&mut self, what: &str) {
        if let Some(st) = self.child.try_wait().expect("wait") {
            panic!("{what} exited ({st}); its log:\n{}", self.log());
        }
    }

    /// Waits up to `limit` for exit; the status and stdout.
    fn finish(mut self, limit: Duration) -> (std::process::ExitStatus, String, String) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                let out = std::fs::read_to_string(&self.out).expect("stdout file");
                return (st, out, self.log());
            }
            assert!(
                Instant::now() < deadline,
                "still running after {limit:?}; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_status(addr: &str, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split_whitespace().nth(1)?.parse().ok()
}

/// Names of the environment variables `bin <sub> --help` documents (`[env: NAME=]`).
fn documented_env(bin: &str, sub: Option<&str>) -> Vec<String> {
    let out = Command::new(binary(bin))
        .args(sub)
        .arg("--help")
        .output()
        .expect("--help");
    String::from_utf8_lossy(&out.stdout)
        .split("[env: ")
        .skip(1)
        .filter_map(|t| t.split(['=', ']']).next().map(str::to_string))
        .collect()
}

/// Every `SIZESPEC_*` variable a container sets is one its binary reads: a flag's variable (from
/// `--help`), a config override (`SIZESPEC_<SECTION>__<KEY>`, checked by the coordinator at
/// submit), or one of the few read outside clap.
fn assert_env_known(e: &Emulated, what: &str) {
    // SIZESPEC_LOG: the log filter (both binaries); SIZESPEC_CACHE_DIR: the agent's 4-bit weights
    // cache (agent::worker::WorkerConfig).
    const OUTSIDE_CLAP: [&str; 2] = ["SIZESPEC_LOG", "SIZESPEC_CACHE_DIR"];
    let bin = e.argv[0].as_str();
    let sub = (bin == "coordinator").then(|| e.argv[1].as_str());
    let known = documented_env(bin, sub);
    assert!(!known.is_empty(), "`{bin} --help` documents no variable");
    for name in e.env.keys().filter(|k| k.starts_with("SIZESPEC_")) {
        assert!(
            known.contains(name) || OUTSIDE_CLAP.contains(&name.as_str()) || name.contains("__"),
            "{what} sets {name}, which `{bin}` does not read (it reads {known:?})"
        );
    }
}

fn status_agents(client: &Emulated, cluster: &Cluster) -> Vec<String> {
    let e = Emulated {
        argv: vec!["coordinator".into(), "status".into()],
        env: client.env.clone(),
        cwd: None,
        mounts: Vec::new(),
    };
    let (st, out, err) = cluster
        .spawn(&e, &[], "status")
        .finish(Duration::from_secs(30));
    if !st.success() {
        eprintln!("coordinator status: {err}");
        return Vec::new();
    }
    out.lines()
        .skip_while(|l| *l != "agents:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// The SmolLM2 GGUF the CPU image ships in /opt/sizespec/models (`scripts/fetch-smollm2.sh`).
fn models_dir() -> PathBuf {
    let dir = std::env::var_os("SIZESPEC_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/sizespec/models")
        });
    assert!(
        dir.join(shared::config::SMOLLM2_GGUF_FILE).is_file(),
        "{} is missing: run `bash scripts/fetch-smollm2.sh` first (or set SIZESPEC_MODELS)",
        dir.join(shared::config::SMOLLM2_GGUF_FILE).display()
    );
    dir
}

#[test]
fn the_cpu_overlay_runs_an_experiment_with_the_real_binaries() {
    let objs = render("cpu");
    let mut cluster = Cluster::new(objs.clone());
    let dockerfile = std::fs::read_to_string(repo_root().join("deploy/docker/Dockerfile.cpu"))
        .expect("Dockerfile.cpu");
    assert!(
        dockerfile.contains("/opt/sizespec/models/"),
        "the CPU image ships the offline model where the cpu overlay points"
    );
    cluster
        .image_paths
        .insert("/opt/sizespec/models".into(), models_dir());

    // The coordinator's container ports and its Service, on loopback.
    let coord = find(&objs, "Deployment", "sizespec-coordinator");
    let container = &coord["spec"]["template"]["spec"]["containers"][0];
    let mut ports = BTreeMap::new();
    for p in items(&container["ports"]) {
        let host = free_port();
        let port = p["containerPort"].as_u64().expect("containerPort");
        cluster
            .addrs
            .insert(format!("0.0.0.0:{port}"), format!("127.0.0.1:{host}"));
        ports.insert(s(&p["name"]), (port, host));
    }
    let svc = find(&objs, "Service", "sizespec-coordinator");
    for p in items(&svc["spec"]["ports"]) {
        let target = s(&p["targetPort"]);
        let (_, host) = ports.get(&target).unwrap_or_else(|| {
            panic!("the Service targets port `{target}`, which the coordinator does not name")
        });
        let port = p["port"].as_u64().expect("port");
        cluster.addrs.insert(
            format!("sizespec-coordinator:{port}"),
            format!("127.0.0.1:{host}"),
        );
    }

    let server = cluster.emulate(coord, "coordinator", "sizespec-coordinator-0");
    assert_env_known(&server, "the coordinator");
    // The overlay's experiment, cut to a minute through the coordinator's config overrides.
    // 5 dialogues per code (3 for validation in all), one training step, 4 test dialogues.
    let small = [
        ("SIZESPEC_DATA__SOURCE__PER_CODE", "5"),
        ("SIZESPEC_DATA__MAX_TRAIN_SAMPLES", "2"),
        ("SIZESPEC_DATA__MAX_EVAL_SAMPLES", "4"),
        ("SIZESPEC_TRAINING__EPOCHS", "1"),
    ];
    let mut coordinator = cluster.spawn(&server, &small, "coordinator");

    // Kubelet's readiness probe, as the manifest states it.
    let probe = &container["readinessProbe"]["httpGet"];
    let (_, probe_port) = ports[&s(&probe["port"])];
    let probe_addr = format!("127.0.0.1:{probe_port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_status(&probe_addr, &s(&probe["path"])) != Some(200) {
        coordinator.assert_running("the coordinator");
        assert!(
            Instant::now() < deadline,
            "the readiness probe GET {} never answered 200; log:\n{}",
            s(&probe["path"]),
            coordinator.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // The StatefulSet's pods: distinct names, so distinct agent ids.
    let sts = find(&objs, "StatefulSet", "sizespec-agent");
    let replicas = sts["spec"]["replicas"].as_u64().expect("replicas") as usize;
    assert!(replicas >= 2, "the cpu overlay runs several agents");
    let pods: Vec<String> = (0..replicas)
        .map(|i| format!("sizespec-agent-{i}"))
        .collect();
    let mut agents = Vec::new();
    for pod in &pods {
        let e = cluster.emulate(sts, "agent", pod);
        assert_env_known(&e, pod);
        agents.push(cluster.spawn(&e, &[], pod));
    }

    let job = find(&objs, "Job", "sizespec-submit");
    let submit = cluster.emulate(job, "submit", "sizespec-submit-x");
    assert_env_known(&submit, "the submit Job");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut seen = status_agents(&submit, &cluster);
        seen.sort();
        seen.dedup();
        if seen == pods {
            break;
        }
        for (a, pod) in agents.iter_mut().zip(&pods) {
            a.assert_running(pod);
        }
        assert!(
            Instant::now() < deadline,
            "registered agents {seen:?}, expected one per pod {pods:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // The submit Job's command: the experiment runs to its report, written on the data volume.
    let (st, out, err) = cluster
        .spawn(&submit, &[], "submit")
        .finish(Duration::from_secs(400));
    assert!(st.success(), "the submit Job failed ({st}):\n{out}\n{err}");
    assert!(out.contains("succeeded"), "{out}");
    // Serve mode writes each experiment's outputs to <data dir>/outputs/<experiment id> (a
    // submitted config's `output` is not used), which must be on the data volume.
    let data_dir = server
        .argv
        .iter()
        .find_map(|a| a.strip_prefix("--data-dir="))
        .map(PathBuf::from)
        .expect("the coordinator's --data-dir");
    let data_pvc = cluster.tmp.path().join("pvc/sizespec-data");
    assert!(
        data_dir.starts_with(&data_pvc),
        "the coordinator's data dir (journal, artifacts, outputs) is on the data volume"
    );
    let runs: Vec<PathBuf> = std::fs::read_dir(data_dir.join("outputs"))
        .expect("outputs under <data dir>/outputs")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    for f in ["results.json", "report.html"] {
        assert!(
            runs[0].join(f).is_file(),
            "{} is missing",
            runs[0].join(f).display()
        );
    }

    // A failing experiment fails the Job: the same command on a config whose small model is
    // missing (its finetune fails three times; the zero-shot evaluation still runs).
    let cm = items(&job["spec"]["template"]["spec"]["volumes"])
        .iter()
        .find_map(|v| v["configMap"]["name"].as_str())
        .expect("the Job mounts the experiment ConfigMap");
    let toml = String::from_utf8(cluster.data_of("ConfigMap", cm)["experiment.toml"].clone())
        .expect("utf-8 config");
    let (llms, slms) = toml
        .split_once("[[slm_models]]")
        .expect("the overlay's experiment has a small model");
    let slms = slms.replace(shared::config::SMOLLM2_GGUF_FILE, "missing-model.gguf");
    assert!(
        slms.contains("missing-model.gguf"),
        "the small model is the offline model"
    );
    let broken = format!("{llms}[[slm_models]]{slms}").replace("offline-smollm2", "broken-smollm2");
    let mut failing = cluster.emulate(job, "submit", "sizespec-submit-y");
    let config = failing
        .argv
        .iter_mut()
        .find(|a| a.ends_with("experiment.toml"));
    let config = config.expect("the Job's command names the config file");
    std::fs::write(&*config, broken).expect("write the broken config");
    let (st, out, err) = cluster
        .spawn(&failing, &[], "submit-failing")
        .finish(Duration::from_secs(180));
    assert!(
        !st.success(),
        "a failed experiment must fail the Job:\n{out}\n{err}"
    );
    assert!(
        err.contains("missing-model.gguf"),
        "names the cause:\n{err}"
    );
    drop(agents);
    drop(coordinator);
}

/// Every pod template of every overlay against the restricted Pod Security Standard and the
/// resources and images the deployment promises.
#[test]
fn every_overlay_is_restricted_and_pinned() {
    for overlay in ["cpu", "cuda", "tls"] {
        let objs = render(overlay);
        let ns = find(&objs, "Namespace", "sizespec");
        assert_eq!(
            ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "restricted",
            "{overlay}"
        );
        let mut pods = 0;
        for o in objs.iter().filter(|o| {
            matches!(
                o["kind"].as_str(),
                Some("Deployment" | "StatefulSet" | "Job")
            )
        }) {
            pods += 1;
            let what = format!("{overlay}: {}/{}", s(&o["kind"]), s(&o["metadata"]["name"]));
            let spec = &o["spec"]["template"]["spec"];
            assert_eq!(spec["automountServiceAccountToken"], false, "{what}");
            let psc = &spec["securityContext"];
            assert_eq!(psc["runAsNonRoot"], true, "{what}");
            assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault", "{what}");
            assert!(
                items(&spec["volumes"])
                    .iter()
                    .all(|v| v.get("hostPath").is_none()),
                "{what}: no hostPath"
            );
            for c in items(&spec["containers"])
                .iter()
                .chain(items(&spec["initContainers"]))
            {
                let sc = &c["securityContext"];
                assert_eq!(sc["allowPrivilegeEscalation"], false, "{what}");
                assert_eq!(sc["readOnlyRootFilesystem"], true, "{what}");
                assert!(
                    items(&sc["capabilities"]["drop"]).contains(&"ALL".into()),
                    "{what}"
                );
                assert!(
                    items(&c["volumeMounts"])
                        .iter()
                        .any(|m| m["mountPath"] == "/tmp"),
                    "{what}: a writable /tmp"
                );
                for kind in ["requests", "limits"] {
                    for r in ["cpu", "memory"] {
                        assert!(c["resources"][kind][r].is_string(), "{what}: {kind}.{r}");
                    }
                }
                let image = s(&c["image"]);
                assert!(
                    image.contains('/') && image.contains(':'),
                    "{what}: image `{image}` is a registry reference with a tag"
                );
            }
        }
        assert!(pods >= 3, "{overlay}: coordinator, agents, submit Job");
        let sts = find(&objs, "StatefulSet", "sizespec-agent");
        let agent = &sts["spec"]["template"]["spec"]["containers"][0];
        let env = |name: &str| {
            items(&agent["env"])
                .iter()
                .find(|e| e["name"] == name)
                .map(|e| e["value"].clone())
                .unwrap_or(Value::Null)
        };
        if overlay != "cpu" {
            assert_eq!(
                agent["resources"]["limits"]["nvidia.com/gpu"], 1,
                "{overlay}"
            );
            assert_eq!(env("SIZESPEC_AGENT_DEVICE"), "cuda:0", "{overlay}");
            assert!(s(&agent["image"]).ends_with("-cuda"), "{overlay}");
        }
        let url = s(&env("SIZESPEC_COORDINATOR"));
        assert_eq!(
            url.starts_with("https://"),
            overlay == "tls",
            "{overlay}: {url}"
        );
        let coord = find(&objs, "Deployment", "sizespec-coordinator");
        let c = &coord["spec"]["template"]["spec"]["containers"][0];
        for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
            assert_eq!(
                c[probe]["httpGet"]["path"], "/healthz",
                "{overlay}: {probe} works with TLS on"
            );
        }
    }
}

//! The deployment manifests under `deploy/` (docs/operations.md, "Deploying
//! the daemon"), parsed with real parsers and checked key by key: the
//! systemd unit with a parser of systemd's unit syntax written here, the
//! Kubernetes manifest with `serde_norway` and the Nomad job with `hcl-rs`.
//!
//! The YAML and HCL go into typed subsets that refuse unknown fields, so a
//! misspelt key fails as surely as a wrong value; the unit's directives must
//! come from a reviewed list, for the same reason. The config file each
//! orchestrator ships goes through wasp's own config parser. Every check
//! returns an error rather than panicking, and
//! `a_wrong_key_or_value_in_any_manifest_fails` breaks each manifest in many
//! ways and requires every break to be caught.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use wasp::config::{Config, DEFAULT_CONFIG_PATH};
use wasp::paths::{DEFAULT_RUNTIME_DIR, DEFAULT_STATE_DIR};

const UNIT: &str = "deploy/systemd/wasp.service";
const K8S: &str = "deploy/kubernetes/wasp-daemonset.yaml";
const NOMAD: &str = "deploy/nomad/wasp.nomad.hcl";

/// Where every manifest expects the wasp binary (docs/operations.md).
const WASP_BIN: &str = "/usr/local/bin/wasp";

type Checked<T> = Result<T, String>;

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

fn read(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The daemon's default socket, in the state dir.
fn default_socket() -> String {
    format!("{DEFAULT_STATE_DIR}/wasp.sock")
}

/// Every value of `flag` in `args` (`--flag VALUE`, repeatable).
fn flag_values<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
    args.windows(2)
        .filter(|w| w[0] == flag)
        .map(|w| w[1].as_str())
        .collect()
}

/// The one value of `flag`, an error when it is missing or repeated.
fn flag_value<'a>(args: &'a [String], flag: &str) -> Checked<&'a str> {
    match flag_values(args, flag)[..] {
        [v] => Ok(v),
        ref vs => Err(format!(
            "{flag} must be given once, found {vs:?} in {args:?}"
        )),
    }
}

/// The `serve` command line of the multi-host manifests: `serve` first, the
/// default unix socket and a TCP listener, a token file, the metrics
/// address, and `--kill-on-exit` (their clones cannot outlive the task or
/// pod). Returns (tcp listen address, token file, metrics address).
fn check_serve_args(args: &[String]) -> Checked<(String, String, String)> {
    ensure!(
        args.first().map(String::as_str) == Some("serve"),
        "the daemon's arguments must start with `serve`: {args:?}"
    );
    let listens = flag_values(args, "--listen");
    let unix = format!("unix:{}", default_socket());
    ensure!(
        listens.contains(&unix.as_str()),
        "no `--listen {unix}` (the local CLI's socket) in {args:?}"
    );
    let tcp: Vec<&str> = listens
        .iter()
        .filter_map(|l| l.strip_prefix("tcp:"))
        .collect();
    let [tcp] = tcp[..] else {
        return Err(format!(
            "exactly one `--listen tcp:ADDR` is needed for other hosts: {args:?}"
        ));
    };
    let token = flag_value(args, "--token-file")?;
    let metrics = flag_value(args, "--metrics")?;
    ensure!(
        args.iter().any(|a| a == "--kill-on-exit"),
        "--kill-on-exit must be given: the orchestrator ends the VMMs with the daemon, so it tears them down first: {args:?}"
    );
    Ok((tcp.to_owned(), token.to_owned(), metrics.to_owned()))
}

/// `text` through wasp's own config parser, with the state and runtime
/// dirs the manifests mount.
fn check_wasp_toml(origin: &str, text: &str) -> Checked<()> {
    let cfg = Config::from_toml(Path::new(origin), text)
        .map_err(|e| format!("{origin}: wasp refuses its config: {e}"))?;
    ensure!(
        cfg.state_dir.value == Path::new(DEFAULT_STATE_DIR)
            && cfg.runtime_dir.value == Path::new(DEFAULT_RUNTIME_DIR),
        "{origin}: the manifest mounts {DEFAULT_STATE_DIR} and {DEFAULT_RUNTIME_DIR}, the config says {} and {}",
        cfg.state_dir.value.display(),
        cfg.runtime_dir.value.display()
    );
    Ok(())
}

// ---------------------------------------------------------------- systemd

/// A unit file: section -> directive -> values in order.
type Unit = BTreeMap<String, BTreeMap<String, Vec<String>>>;

/// Parses systemd's unit syntax (systemd.syntax(7)): `[Section]` headers,
/// `Key=Value` lines (whitespace around `=` dropped), `#` and `;`
/// comments, a trailing backslash continuing the line, a repeated key
/// adding a value and an empty value resetting the list.
fn parse_unit(text: &str) -> Checked<Unit> {
    let mut unit = Unit::new();
    let mut section: Option<String> = None;
    let mut lines = text.lines().enumerate();
    while let Some((n, raw)) = lines.next() {
        let mut line = raw.trim().to_owned();
        while line.ends_with('\\') {
            line.pop();
            line.push(' ');
            let (_, next) = lines
                .next()
                .ok_or_else(|| format!("line {}: continuation at end of file", n + 1))?;
            line.push_str(next.trim());
        }
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[') {
            let name = name
                .strip_suffix(']')
                .ok_or_else(|| format!("line {}: bad section header {line:?}", n + 1))?;
            unit.entry(name.to_owned()).or_default();
            section = Some(name.to_owned());
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| format!("line {}: not `Key=Value`: {line:?}", n + 1))?;
        let section = section
            .as_ref()
            .ok_or_else(|| format!("line {}: {key} before any section", n + 1))?;
        let values = unit
            .get_mut(section)
            .expect("section entered")
            .entry(key.trim().to_owned())
            .or_default();
        match value.trim() {
            "" => values.clear(),
            v => values.push(v.to_owned()),
        }
    }
    Ok(unit)
}

/// The directives the unit may use, per section: a misspelt or unreviewed
/// key fails. The mount-namespace sandboxing directives are absent on
/// purpose (see [`SANDBOXING`]).
const UNIT_DIRECTIVES: &[(&str, &[&str])] = &[
    (
        "Unit",
        &[
            "Description",
            "Documentation",
            "Wants",
            "Requires",
            "After",
            "Before",
            "RequiresMountsFor",
            "StartLimitIntervalSec",
            "StartLimitBurst",
        ],
    ),
    (
        "Service",
        &[
            "Type",
            "NotifyAccess",
            "ExecStartPre",
            "ExecStart",
            "KillMode",
            "KillSignal",
            "SendSIGKILL",
            "TimeoutStartSec",
            "TimeoutStopSec",
            "Restart",
            "RestartSec",
            "OOMPolicy",
            "RuntimeDirectory",
            "RuntimeDirectoryMode",
            "RuntimeDirectoryPreserve",
            "LimitNOFILE",
            "TasksMax",
            "User",
            "Environment",
        ],
    ),
    ("Install", &["WantedBy", "RequiredBy", "Alias"]),
];

/// Directives that give the service a private mount namespace (or hide
/// devices): wasp's named netns bind mounts in /run/netns would then be
/// invisible to the host and lost on restart, or /dev/kvm missing.
const SANDBOXING: &[&str] = &[
    "ProtectSystem",
    "ProtectHome",
    "PrivateTmp",
    "PrivateDevices",
    "PrivateNetwork",
    "PrivateMounts",
    "ProtectKernelTunables",
    "ProtectControlGroups",
    "ReadWritePaths",
    "ReadOnlyPaths",
    "InaccessiblePaths",
    "TemporaryFileSystem",
    "BindPaths",
    "MountFlags",
    "DynamicUser",
];

/// The one value of `key` in `section`.
fn one<'a>(unit: &'a Unit, section: &str, key: &str) -> Checked<&'a str> {
    match unit
        .get(section)
        .and_then(|s| s.get(key))
        .map(Vec::as_slice)
    {
        Some([v]) => Ok(v),
        other => Err(format!(
            "[{section}] {key} must be set once, found {other:?}"
        )),
    }
}

/// Every space-separated item of every `key` line.
fn items<'a>(unit: &'a Unit, section: &str, key: &str) -> BTreeSet<&'a str> {
    unit.get(section)
        .and_then(|s| s.get(key))
        .into_iter()
        .flatten()
        .flat_map(|v| v.split_whitespace())
        .collect()
}

/// A systemd time span in whole seconds (`90`, `90s`, `5min`, `1min 30s`;
/// `infinity` is `u64::MAX`).
fn timespan_secs(v: &str) -> Checked<u64> {
    if v == "infinity" {
        return Ok(u64::MAX);
    }
    let mut total = 0.0;
    for word in v.split_whitespace() {
        let split = word
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(word.len());
        let (num, unit) = word.split_at(split);
        let n: f64 = num.parse().map_err(|_| format!("bad time span {v:?}"))?;
        let scale = match unit {
            "" | "s" | "sec" | "second" | "seconds" => 1.0,
            "ms" | "msec" => 1e-3,
            "m" | "min" | "minute" | "minutes" => 60.0,
            "h" | "hr" | "hour" | "hours" => 3600.0,
            _ => return Err(format!("bad time span unit {unit:?} in {v:?}")),
        };
        total += n * scale;
    }
    Ok(total as u64)
}

/// A resource limit's hard value (`N`, `SOFT:HARD` or `infinity`).
fn hard_limit(v: &str) -> Checked<u64> {
    let hard = v.rsplit(':').next().unwrap_or(v);
    if hard == "infinity" {
        return Ok(u64::MAX);
    }
    hard.parse().map_err(|_| format!("bad limit {v:?}"))
}

fn check_unit(text: &str) -> Checked<()> {
    let unit = parse_unit(text)?;
    for (section, keys) in &unit {
        let known = UNIT_DIRECTIVES
            .iter()
            .find(|(s, _)| s == section)
            .map(|(_, k)| *k)
            .ok_or_else(|| format!("unexpected section [{section}]"))?;
        for key in keys.keys() {
            ensure!(
                !SANDBOXING.contains(&key.as_str()),
                "[{section}] {key}: a private mount namespace hides wasp's /run/netns bind mounts from the host and loses them on restart"
            );
            ensure!(
                known.contains(&key.as_str()),
                "[{section}] {key}: not a directive this unit uses (misspelt? add it to UNIT_DIRECTIVES once reviewed)"
            );
        }
    }
    for section in ["Unit", "Service", "Install"] {
        ensure!(unit.contains_key(section), "no [{section}] section");
    }

    ensure!(
        one(&unit, "Service", "Type")? == "notify",
        "Type must be notify: READY=1 comes once the pool is warm"
    );
    ensure!(
        one(&unit, "Service", "NotifyAccess")? == "main",
        "NotifyAccess must be main: only the daemon, not a VMM, reports readiness"
    );
    let exec: Vec<&str> = one(&unit, "Service", "ExecStart")?
        .split_whitespace()
        .collect();
    ensure!(
        exec.first() == Some(&WASP_BIN) && exec.get(1) == Some(&"serve"),
        "ExecStart must run `{WASP_BIN} serve`: {exec:?}"
    );
    ensure!(
        !exec.contains(&"--kill-on-exit"),
        "ExecStart must not pass --kill-on-exit: under systemd the clones outlive the daemon"
    );
    ensure!(
        one(&unit, "Service", "ExecStartPre")? == format!("{WASP_BIN} doctor"),
        "ExecStartPre must run `{WASP_BIN} doctor` (the host check)"
    );
    ensure!(
        one(&unit, "Service", "KillMode")? == "process",
        "KillMode must be process: control-group and mixed kill the VMMs, which live in the daemon's cgroup"
    );
    ensure!(
        one(&unit, "Service", "Restart")? == "on-failure",
        "Restart must be on-failure"
    );
    ensure!(
        one(&unit, "Service", "OOMPolicy")? == "continue",
        "OOMPolicy must be continue: one OOM-killed VMM must not stop the service"
    );
    let runtime = one(&unit, "Service", "RuntimeDirectory")?;
    ensure!(
        format!("/run/{runtime}") == DEFAULT_STATE_DIR,
        "RuntimeDirectory {runtime} is not wasp's state dir {DEFAULT_STATE_DIR}"
    );
    ensure!(
        one(&unit, "Service", "RuntimeDirectoryPreserve")? == "yes",
        "RuntimeDirectoryPreserve must be yes: the clone records must outlive a stop, as the clones do"
    );
    ensure!(
        one(&unit, "Service", "RuntimeDirectoryMode")? == "0755",
        "RuntimeDirectoryMode must be 0755, the mode wasp gives its state dir (the socket's group must reach it)"
    );
    ensure!(
        one(&unit, "Unit", "RequiresMountsFor")? == DEFAULT_RUNTIME_DIR,
        "RequiresMountsFor must name the runtime dir {DEFAULT_RUNTIME_DIR}"
    );
    let nofile = hard_limit(one(&unit, "Service", "LimitNOFILE")?)?;
    ensure!(
        nofile >= 16_384,
        "LimitNOFILE {nofile} is below wasp doctor's 16 384"
    );
    let tasks = one(&unit, "Service", "TasksMax")?;
    ensure!(
        tasks == "infinity" || tasks.parse::<u64>().is_ok_and(|n| n >= 65_536),
        "TasksMax {tasks} does not fit thousands of VMMs (each ~3 threads + 1 per vCPU)"
    );
    let start = timespan_secs(one(&unit, "Service", "TimeoutStartSec")?)?;
    ensure!(
        start >= 120,
        "TimeoutStartSec {start}s leaves no time to warm the pool"
    );
    for key in ["After", "Wants"] {
        ensure!(
            items(&unit, "Unit", key).contains("network-online.target"),
            "[Unit] {key} must include network-online.target"
        );
    }
    ensure!(
        items(&unit, "Install", "WantedBy").contains("multi-user.target"),
        "[Install] WantedBy must include multi-user.target"
    );
    if let Some(user) = unit["Service"].get("User") {
        ensure!(user == &["root"], "User must be root: {user:?}");
    }
    Ok(())
}

// ------------------------------------------------------------- Kubernetes

/// The Kubernetes objects the manifest may hold, a typed subset of their
/// API: every field the manifest uses, and no other.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind")]
enum K8sObject {
    ConfigMap(ConfigMap),
    DaemonSet(DaemonSet),
    Service(K8sService),
}

#[allow(dead_code)] // decoded so that each key is type-checked; not every value is checked
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Metadata {
    name: String,
    namespace: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ConfigMap {
    api_version: String,
    metadata: Metadata,
    data: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct DaemonSet {
    api_version: String,
    metadata: Metadata,
    spec: DaemonSetSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct DaemonSetSpec {
    selector: LabelSelector,
    update_strategy: Option<UpdateStrategy>,
    template: PodTemplate,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct LabelSelector {
    match_labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateStrategy {
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PodTemplate {
    metadata: PodMetadata,
    spec: PodSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PodMetadata {
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PodSpec {
    #[serde(default)]
    node_selector: BTreeMap<String, String>,
    #[serde(default)]
    host_network: bool,
    #[serde(rename = "hostPID", default)]
    host_pid: bool,
    dns_policy: Option<String>,
    priority_class_name: Option<String>,
    termination_grace_period_seconds: Option<u64>,
    #[serde(default)]
    init_containers: Vec<Container>,
    containers: Vec<Container>,
    volumes: Vec<Volume>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Container {
    name: String,
    image: String,
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: Vec<EnvVar>,
    #[serde(default)]
    ports: Vec<ContainerPort>,
    security_context: Option<SecurityContext>,
    startup_probe: Option<Probe>,
    readiness_probe: Option<Probe>,
    liveness_probe: Option<Probe>,
    resources: Option<Resources>,
    #[serde(default)]
    volume_mounts: Vec<VolumeMount>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct EnvVar {
    name: String,
    value: Option<String>,
    value_from: Option<EnvVarSource>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct EnvVarSource {
    field_ref: FieldRef,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FieldRef {
    field_path: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ContainerPort {
    name: Option<String>,
    container_port: u16,
    protocol: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecurityContext {
    privileged: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Probe {
    http_get: HttpGet,
    period_seconds: Option<u32>,
    timeout_seconds: Option<u32>,
    failure_threshold: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpGet {
    path: String,
    port: PortRef,
}

/// A port by name or number.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
enum PortRef {
    Number(u16),
    Name(String),
}

/// Requests only: the VMMs run in the container's cgroup, so a limit would
/// cap the daemon and every clone together (a `limits` key fails here).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Resources {
    #[serde(default)]
    requests: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct VolumeMount {
    name: String,
    mount_path: String,
    sub_path: Option<String>,
    #[serde(default)]
    read_only: bool,
    mount_propagation: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Volume {
    name: String,
    host_path: Option<HostPath>,
    config_map: Option<ConfigMapRef>,
    secret: Option<SecretRef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostPath {
    path: String,
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigMapRef {
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SecretRef {
    secret_name: String,
    default_mode: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct K8sService {
    api_version: String,
    metadata: Metadata,
    spec: ServiceSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceSpec {
    #[serde(rename = "clusterIP")]
    cluster_ip: Option<String>,
    selector: BTreeMap<String, String>,
    ports: Vec<ServicePort>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServicePort {
    name: String,
    port: u16,
    target_port: PortRef,
    protocol: Option<String>,
}

/// What the orchestrator manifests share: the config file they ship and the
/// ports of the API and the metrics listener.
#[derive(Debug, PartialEq)]
struct Shipped {
    wasp_toml: String,
    api_port: u16,
    metrics_port: u16,
}

/// `de` deserialized as a `T`, the error naming the path to the bad field.
fn typed<'de, T: Deserialize<'de>>(what: &str, de: impl serde::Deserializer<'de>) -> Checked<T> {
    serde_path_to_error::deserialize(de).map_err(|e| format!("{what}: {e}"))
}

impl Container {
    fn port(&self, name: &str) -> Checked<u16> {
        let ports: Vec<u16> = self
            .ports
            .iter()
            .filter(|p| p.name.as_deref() == Some(name))
            .map(|p| p.container_port)
            .collect();
        match ports[..] {
            [p] => Ok(p),
            _ => Err(format!("container {}: no one port named {name}", self.name)),
        }
    }

    fn mount_at(&self, path: &str) -> Checked<&VolumeMount> {
        self.volume_mounts
            .iter()
            .find(|m| m.mount_path == path)
            .ok_or_else(|| format!("container {}: nothing mounted at {path}", self.name))
    }

    fn privileged(&self) -> bool {
        self.security_context
            .as_ref()
            .and_then(|s| s.privileged)
            .unwrap_or(false)
    }
}

fn check_probe(c: &Container, probe: Option<&Probe>, which: &str, path: &str) -> Checked<u16> {
    let p = probe.ok_or_else(|| format!("container {}: no {which}", c.name))?;
    ensure!(
        p.http_get.path == path,
        "{which} must GET {path}, not {}",
        p.http_get.path
    );
    match &p.http_get.port {
        PortRef::Name(n) => c.port(n),
        PortRef::Number(n) => Ok(*n),
    }
}

fn check_k8s(text: &str) -> Checked<Shipped> {
    let mut objects = Vec::new();
    for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        objects.push(typed::<K8sObject>(&format!("document {}", i + 1), doc)?);
    }
    let (mut maps, mut sets, mut services) = (Vec::new(), Vec::new(), Vec::new());
    for o in objects {
        match o {
            K8sObject::ConfigMap(m) => maps.push(m),
            K8sObject::DaemonSet(d) => sets.push(d),
            K8sObject::Service(s) => services.push(s),
        }
    }
    let ([map], [ds], [svc]) = (&maps[..], &sets[..], &services[..]) else {
        return Err("the manifest must hold one ConfigMap, one DaemonSet and one Service".into());
    };
    ensure!(
        map.api_version == "v1",
        "ConfigMap apiVersion {}",
        map.api_version
    );
    ensure!(
        ds.api_version == "apps/v1",
        "DaemonSet apiVersion {}",
        ds.api_version
    );
    ensure!(
        svc.api_version == "v1",
        "Service apiVersion {}",
        svc.api_version
    );
    let ns = &ds.metadata.namespace;
    ensure!(
        ns.is_some() && &map.metadata.namespace == ns && &svc.metadata.namespace == ns,
        "the objects must share one namespace"
    );

    let pod = &ds.spec.template;
    let labels = &pod.metadata.labels;
    ensure!(
        !ds.spec.selector.match_labels.is_empty()
            && ds
                .spec
                .selector
                .match_labels
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v)),
        "the DaemonSet's selector must match its pod labels"
    );
    ensure!(
        ds.spec.update_strategy.as_ref().map(|u| u.kind.as_str()) == Some("OnDelete"),
        "updateStrategy must be OnDelete: a new pod ends the node's clones, so nodes roll when drained"
    );
    let spec = &pod.spec;
    ensure!(
        spec.host_network,
        "hostNetwork must be true: the bridge and slots live in the host's netns"
    );
    ensure!(
        spec.dns_policy.as_deref() == Some("ClusterFirstWithHostNet"),
        "dnsPolicy must be ClusterFirstWithHostNet with hostNetwork"
    );
    ensure!(
        spec.host_pid,
        "hostPID must be true: clone records name VMMs by host pid"
    );
    ensure!(
        spec.node_selector.get("wasp.dev/host").map(String::as_str) == Some("true"),
        "nodeSelector must pick the nodes labelled wasp.dev/host=true"
    );
    ensure!(
        spec.priority_class_name.as_deref() == Some("system-node-critical"),
        "priorityClassName must be system-node-critical: an eviction ends the node's clones"
    );
    ensure!(
        spec.termination_grace_period_seconds
            .is_some_and(|s| s >= 60),
        "terminationGracePeriodSeconds must leave a minute or more to tear the clones down"
    );

    let [wasp] = &spec.containers[..] else {
        return Err("the pod must have one container".into());
    };
    ensure!(
        wasp.privileged(),
        "container {}: privileged must be true",
        wasp.name
    );
    ensure!(
        wasp.command == [WASP_BIN],
        "container {}: command must be [{WASP_BIN}]",
        wasp.name
    );
    let (tcp, token_file, metrics) = check_serve_args(&wasp.args)?;
    let api_port = wasp.port("api")?;
    let metrics_port = wasp.port("metrics")?;
    ensure!(
        tcp == format!("$(HOST_IP):{api_port}"),
        "the TCP listener {tcp} must be the node address at the api port {api_port}"
    );
    ensure!(
        metrics == format!("$(HOST_IP):{metrics_port}"),
        "--metrics {metrics} must be the node address at the metrics port {metrics_port}"
    );
    ensure!(
        wasp.env.iter().any(|e| e.name == "HOST_IP"
            && e.value.is_none()
            && e.value_from
                .as_ref()
                .map(|v| v.field_ref.field_path.as_str())
                == Some("status.hostIP")),
        "HOST_IP must come from status.hostIP"
    );

    let volume = |name: &str| -> Checked<&Volume> {
        spec.volumes
            .iter()
            .find(|v| v.name == name)
            .ok_or_else(|| format!("no volume {name}"))
    };
    for c in spec.containers.iter().chain(&spec.init_containers) {
        for m in &c.volume_mounts {
            volume(&m.name)?;
        }
    }
    for v in &spec.volumes {
        ensure!(
            spec.containers
                .iter()
                .any(|c| c.volume_mounts.iter().any(|m| m.name == v.name)),
            "volume {} is mounted nowhere",
            v.name
        );
    }
    let host_mount = |c: &Container, path: &str, kind: &str| -> Checked<()> {
        let m = c.mount_at(path)?;
        let hp = volume(&m.name)?
            .host_path
            .as_ref()
            .ok_or_else(|| format!("{path} must be a hostPath"))?;
        ensure!(
            hp.path == path && hp.kind.as_deref() == Some(kind),
            "{path} must be the host's {path} ({kind}), not {hp:?}"
        );
        Ok(())
    };
    for dev in ["/dev/kvm", "/dev/net/tun"] {
        host_mount(wasp, dev, "CharDevice")?;
    }
    for dir in [DEFAULT_STATE_DIR, DEFAULT_RUNTIME_DIR, "/run/netns"] {
        host_mount(wasp, dir, "DirectoryOrCreate")?;
    }
    ensure!(
        wasp.mount_at("/run/netns")?.mount_propagation.as_deref() == Some("Bidirectional"),
        "/run/netns needs mountPropagation Bidirectional: wasp's netns bind mounts must be the host's"
    );

    let config = wasp.mount_at(DEFAULT_CONFIG_PATH)?;
    let from = volume(&config.name)?
        .config_map
        .as_ref()
        .ok_or_else(|| format!("{DEFAULT_CONFIG_PATH} must come from a ConfigMap"))?;
    ensure!(
        from.name == map.metadata.name,
        "the config volume names ConfigMap {}",
        from.name
    );
    let key = config
        .sub_path
        .as_ref()
        .ok_or_else(|| format!("{DEFAULT_CONFIG_PATH} must be mounted with a subPath"))?;
    let wasp_toml = map
        .data
        .get(key)
        .ok_or_else(|| format!("ConfigMap {} has no key {key}", map.metadata.name))?;
    check_wasp_toml("the ConfigMap's wasp.toml", wasp_toml)?;

    let token = wasp.mount_at(&token_file)?;
    let secret = volume(&token.name)?
        .secret
        .as_ref()
        .ok_or_else(|| format!("the token file {token_file} must come from a Secret"))?;
    ensure!(
        secret.default_mode == Some(0o600),
        "the token Secret's defaultMode must be 0600 (384), not {:?}",
        secret.default_mode
    );
    ensure!(
        token.read_only && token.sub_path.is_some(),
        "the token must be mounted read-only with a subPath (a plain file, not a symlink)"
    );
    ensure!(
        !secret.secret_name.is_empty(),
        "the token Secret has no name"
    );

    ensure!(
        check_probe(
            wasp,
            wasp.readiness_probe.as_ref(),
            "readinessProbe",
            "/readyz"
        )? == metrics_port,
        "readinessProbe must use the metrics port"
    );
    ensure!(
        check_probe(
            wasp,
            wasp.liveness_probe.as_ref(),
            "livenessProbe",
            "/healthz"
        )? == metrics_port,
        "livenessProbe must use the metrics port"
    );
    ensure!(
        check_probe(
            wasp,
            wasp.startup_probe.as_ref(),
            "startupProbe",
            "/healthz"
        )? == metrics_port,
        "startupProbe must use the metrics port"
    );
    let live = wasp.liveness_probe.as_ref().expect("checked above");
    let patience = live.period_seconds.unwrap_or(10) * live.failure_threshold.unwrap_or(3);
    ensure!(
        patience >= 60 && live.timeout_seconds.unwrap_or(1) >= 2,
        "the livenessProbe restarts the daemon, and so ends every clone, after {patience}s: give it a minute"
    );
    for p in &wasp.ports {
        ensure!(
            p.protocol.as_deref().unwrap_or("TCP") == "TCP",
            "port {:?} must be TCP",
            p.name
        );
    }
    let ann = &pod.metadata.annotations;
    ensure!(
        ann.get("prometheus.io/scrape").map(String::as_str) == Some("true")
            && ann.get("prometheus.io/port") == Some(&metrics_port.to_string())
            && ann.get("prometheus.io/path").map(String::as_str) == Some("/metrics"),
        "the scrape annotations must name the metrics port {metrics_port} and /metrics: {ann:?}"
    );
    ensure!(
        wasp.resources
            .as_ref()
            .is_some_and(|r| !r.requests.is_empty()),
        "the container must request its resources"
    );

    let [doctor] = &spec.init_containers[..] else {
        return Err("the pod must have one init container (wasp doctor)".into());
    };
    ensure!(
        doctor.command == [WASP_BIN, "doctor"] && doctor.privileged() && doctor.image == wasp.image,
        "the init container must run `{WASP_BIN} doctor`, privileged, from the daemon's image"
    );
    for dev in ["/dev/kvm", "/dev/net/tun"] {
        host_mount(doctor, dev, "CharDevice")?;
    }
    doctor.mount_at(DEFAULT_CONFIG_PATH)?;

    ensure!(
        svc.spec.cluster_ip.as_deref() == Some("None"),
        "the Service must be headless"
    );
    ensure!(
        svc.spec.selector == ds.spec.selector.match_labels,
        "the Service must select the daemons"
    );
    for p in &svc.spec.ports {
        let target = match &p.target_port {
            PortRef::Name(n) => wasp.port(n)?,
            PortRef::Number(n) => *n,
        };
        ensure!(target == p.port, "Service port {} targets {target}", p.name);
        ensure!(
            p.protocol.as_deref().unwrap_or("TCP") == "TCP",
            "Service port {} must be TCP",
            p.name
        );
    }
    ensure!(
        svc.spec.ports.iter().any(|p| p.port == metrics_port),
        "the Service must expose the metrics port"
    );
    Ok(Shipped {
        wasp_toml: wasp_toml.clone(),
        api_port,
        metrics_port,
    })
}

// ------------------------------------------------------------------ Nomad

/// A Nomad job file: a typed subset of the jobspec, every field the file
/// uses and no other. Repeated blocks decode as lists, single ones as one
/// object: [`one_or_many`] accepts both.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NomadFile {
    #[serde(default)]
    locals: BTreeMap<String, String>,
    job: BTreeMap<String, Job>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Job {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default, deserialize_with = "one_or_many")]
    constraint: Vec<Constraint>,
    update: Option<Update>,
    group: BTreeMap<String, Group>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Constraint {
    attribute: String,
    value: String,
}

#[allow(dead_code)] // decoded so that each key is type-checked; not every value is checked
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Update {
    max_parallel: u32,
    min_healthy_time: Option<String>,
    healthy_deadline: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Group {
    network: Network,
    restart: Option<NomadRestart>,
    #[serde(default, deserialize_with = "one_or_many")]
    service: Vec<NomadService>,
    task: BTreeMap<String, Task>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Network {
    mode: String,
    port: BTreeMap<String, NomadPort>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NomadPort {
    #[serde(rename = "static")]
    fixed: u16,
}

#[allow(dead_code)] // decoded so that each key is type-checked; not every value is checked
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NomadRestart {
    attempts: u32,
    interval: String,
    delay: String,
    mode: String,
}

#[allow(dead_code)] // decoded so that each key is type-checked; not every value is checked
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NomadService {
    provider: String,
    name: String,
    port: String,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    meta: BTreeMap<String, String>,
    #[serde(deserialize_with = "one_or_many")]
    check: Vec<Check>,
}

#[allow(dead_code)] // decoded so that each key is type-checked; not every value is checked
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Check {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    path: String,
    port: Option<String>,
    interval: String,
    timeout: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Task {
    driver: String,
    lifecycle: Option<Lifecycle>,
    config: TaskConfig,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "one_or_many")]
    template: Vec<Template>,
    kill_signal: Option<String>,
    kill_timeout: Option<String>,
    shutdown_delay: Option<String>,
    resources: Option<NomadResources>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Lifecycle {
    hook: String,
    sidecar: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskConfig {
    command: String,
    #[serde(default)]
    args: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Template {
    data: String,
    destination: String,
    change_mode: String,
    perms: Option<String>,
}

#[allow(dead_code)] // decoded so that each key is type-checked; not every value is checked
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NomadResources {
    cpu: u32,
    memory: u32,
}

/// One block or a list of repeated blocks, as a list.
fn one_or_many<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: DeserializeOwned,
{
    use serde::de::Error;
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Array(items) => items
            .into_iter()
            .map(|v| T::deserialize(v).map_err(D::Error::custom))
            .collect(),
        v => Ok(vec![T::deserialize(v).map_err(D::Error::custom)?]),
    }
}

/// A Go duration of seconds or minutes (`120s`, `2m`) in seconds.
fn go_duration_secs(v: &str) -> Checked<u64> {
    let parse = |n: &str| n.parse::<u64>().map_err(|_| format!("bad duration {v:?}"));
    match (v.strip_suffix('s'), v.strip_suffix('m')) {
        (Some(n), _) => parse(n),
        (_, Some(n)) => Ok(parse(n)? * 60),
        _ => Err(format!("bad duration {v:?}")),
    }
}

/// The file a task sees at `${NOMAD_<DIR>}/name`: the template rendered to
/// `<dir>/name`.
fn template_at<'a>(
    task: &'a Task,
    nomad_var: &str,
    dir: &str,
    path: &str,
) -> Checked<&'a Template> {
    let name = path
        .strip_prefix(&format!("${{{nomad_var}}}/"))
        .ok_or_else(|| format!("{path} is not under ${{{nomad_var}}}"))?;
    task.template
        .iter()
        .find(|t| t.destination == format!("{dir}/{name}"))
        .ok_or_else(|| format!("no template renders {dir}/{name} (for {path})"))
}

fn check_nomad(text: &str) -> Checked<Shipped> {
    let value: serde_json::Value = hcl::from_str(text).map_err(|e| format!("HCL: {e}"))?;
    let file: NomadFile = typed("the job file", value)?;
    let jobs: Vec<&Job> = file.job.values().collect();
    let [job] = jobs[..] else {
        return Err("the file must hold one job".into());
    };
    ensure!(
        job.kind == "system",
        "the job type must be system (one daemon per node), not {}",
        job.kind
    );
    let has = |attr: &str, value: &str| {
        job.constraint
            .iter()
            .any(|c| c.attribute == attr && c.value == value)
    };
    ensure!(
        has("${attr.kernel.name}", "linux") && has("${meta.wasp_host}", "true"),
        "the job must be constrained to Linux nodes with meta wasp_host = true"
    );
    ensure!(
        job.update.as_ref().is_some_and(|u| u.max_parallel == 1),
        "updates must go one node at a time (max_parallel = 1)"
    );
    let groups: Vec<&Group> = job.group.values().collect();
    let [group] = groups[..] else {
        return Err("the job must hold one group".into());
    };
    ensure!(
        group.network.mode == "host",
        "the network mode must be host"
    );
    ensure!(
        group.restart.as_ref().is_some_and(|r| r.mode == "delay"),
        "the restart mode must be delay: with fail, a node whose daemon crashed a few times keeps none"
    );
    let port = |name: &str| -> Checked<u16> {
        group
            .network
            .port
            .get(name)
            .map(|p| p.fixed)
            .ok_or_else(|| format!("no port {name}"))
    };
    let api_port = port("api")?;
    let metrics_port = port("metrics")?;

    let service = |port: &str| -> Checked<&NomadService> {
        match group
            .service
            .iter()
            .filter(|s| s.port == port)
            .collect::<Vec<_>>()[..]
        {
            [s] => Ok(s),
            _ => Err(format!("no one service on port {port}")),
        }
    };
    let api = service("api")?;
    ensure!(
        api.check.iter().any(|c| c.kind == "http"
            && c.path == "/readyz"
            && c.port.as_deref() == Some("metrics")),
        "service {} must be checked with GET /readyz on the metrics port",
        api.name
    );
    let metrics = service("metrics")?;
    ensure!(
        metrics.tags.iter().any(|t| t == "metrics")
            && metrics.meta.get("metrics_path").map(String::as_str) == Some("/metrics"),
        "service {} must carry the metrics tag and metrics_path /metrics",
        metrics.name
    );
    ensure!(
        metrics
            .check
            .iter()
            .any(|c| c.kind == "http" && c.path == "/healthz"),
        "service {} must be checked with GET /healthz",
        metrics.name
    );

    let task = |name: &str| -> Checked<&Task> {
        group
            .task
            .get(name)
            .ok_or_else(|| format!("no task {name}"))
    };
    let doctor = task("doctor")?;
    let wasp = task("wasp")?;
    ensure!(
        group.task.len() == 2,
        "the group must hold the doctor and wasp tasks only"
    );
    for (name, t) in &group.task {
        ensure!(
            t.driver == "raw_exec" && t.config.command == WASP_BIN,
            "task {name} must run {WASP_BIN} with raw_exec"
        );
        for tpl in &t.template {
            ensure!(
                tpl.change_mode == "noop",
                "task {name}: template {} must have change_mode noop: a restart ends the node's clones",
                tpl.destination
            );
        }
        let config = t
            .env
            .get("WASP_CONFIG")
            .ok_or_else(|| format!("task {name}: no WASP_CONFIG"))?;
        let tpl = template_at(t, "NOMAD_TASK_DIR", "local", config)?;
        ensure!(
            tpl.data == "${local.wasp_toml}",
            "task {name}: the config template must render local.wasp_toml"
        );
    }
    ensure!(
        doctor
            .lifecycle
            .as_ref()
            .is_some_and(|l| l.hook == "prestart" && !l.sidecar)
            && doctor.config.args == ["doctor"],
        "task doctor must run `wasp doctor` once before the daemon (prestart, not a sidecar)"
    );
    ensure!(wasp.lifecycle.is_none(), "task wasp is the main task");
    let (tcp, token_file, metrics_addr) = check_serve_args(&wasp.config.args)?;
    ensure!(
        tcp == "${NOMAD_ADDR_api}",
        "the TCP listener must be ${{NOMAD_ADDR_api}}, not {tcp}"
    );
    ensure!(
        metrics_addr == "${NOMAD_ADDR_metrics}",
        "--metrics must be ${{NOMAD_ADDR_metrics}}, not {metrics_addr}"
    );
    let token = template_at(wasp, "NOMAD_SECRETS_DIR", "secrets", &token_file)?;
    ensure!(
        token.perms.as_deref() == Some("0600") && token.data.contains("nomadVar"),
        "the token file must be rendered 0600 from a Nomad variable"
    );
    ensure!(
        wasp.kill_signal.as_deref() == Some("SIGTERM"),
        "kill_signal must be SIGTERM"
    );
    let kill = go_duration_secs(wasp.kill_timeout.as_deref().unwrap_or("5s"))?;
    ensure!(
        kill >= 60,
        "kill_timeout {kill}s leaves no time to tear the clones down"
    );
    ensure!(
        wasp.shutdown_delay.is_some(),
        "shutdown_delay must deregister before the stop"
    );
    ensure!(wasp.resources.is_some(), "task wasp must reserve resources");

    let wasp_toml = file.locals.get("wasp_toml").ok_or("no locals.wasp_toml")?;
    check_wasp_toml("the job's locals.wasp_toml", wasp_toml)?;
    Ok(Shipped {
        wasp_toml: wasp_toml.clone(),
        api_port,
        metrics_port,
    })
}

// ------------------------------------------------------------------ tests

#[test]
fn systemd_unit_is_a_notify_service_whose_clones_outlive_it() {
    check_unit(&read(UNIT)).unwrap_or_else(|e| panic!("{UNIT}: {e}"));
}

#[test]
fn kubernetes_daemonset_is_privileged_with_devices_probes_and_metrics() {
    check_k8s(&read(K8S)).unwrap_or_else(|e| panic!("{K8S}: {e}"));
}

#[test]
fn nomad_job_is_a_system_job_checked_on_readyz() {
    check_nomad(&read(NOMAD)).unwrap_or_else(|e| panic!("{NOMAD}: {e}"));
}

/// Both orchestrators ship the same config file and the same ports, the
/// ones docs/operations.md names.
#[test]
fn kubernetes_and_nomad_ship_the_same_config_and_ports() {
    let k8s = check_k8s(&read(K8S)).unwrap_or_else(|e| panic!("{K8S}: {e}"));
    let nomad = check_nomad(&read(NOMAD)).unwrap_or_else(|e| panic!("{NOMAD}: {e}"));
    assert_eq!(k8s, nomad);
    let ops = read("docs/operations.md");
    for port in [k8s.api_port, k8s.metrics_port] {
        assert!(
            ops.contains(&port.to_string()),
            "docs/operations.md never names port {port}"
        );
    }
}

/// Each manifest, broken one key or value at a time, fails its check.
#[test]
fn a_wrong_key_or_value_in_any_manifest_fails() {
    type Check = fn(&str) -> Checked<()>;
    let k8s: Check = |t| check_k8s(t).map(drop);
    let nomad: Check = |t| check_nomad(t).map(drop);
    let breaks: &[(&str, Check, &str, &str)] = &[
        (UNIT, check_unit, "\nType=notify\n", "\nType=simple\n"),
        (
            UNIT,
            check_unit,
            "\nNotifyAccess=main\n",
            "\nNotifyAccess=all\n",
        ),
        (
            UNIT,
            check_unit,
            "\nKillMode=process\n",
            "\nKillMode=mixed\n",
        ),
        (
            UNIT,
            check_unit,
            "\nKillMode=process\n",
            "\nKilMode=process\n",
        ),
        (
            UNIT,
            check_unit,
            "\nExecStart=/usr/local/bin/wasp serve\n",
            "\nExecStart=/usr/local/bin/wasp spawn\n",
        ),
        (
            UNIT,
            check_unit,
            "\nExecStart=/usr/local/bin/wasp serve\n",
            "\nExecStart=/usr/local/bin/wasp serve --kill-on-exit\n",
        ),
        (
            UNIT,
            check_unit,
            "\nRuntimeDirectoryPreserve=yes\n",
            "\nRuntimeDirectoryPreserve=restart\n",
        ),
        (
            UNIT,
            check_unit,
            "\nRuntimeDirectory=wasp\n",
            "\nRuntimeDirectory=wasp2\n",
        ),
        (
            UNIT,
            check_unit,
            "\nOOMPolicy=continue\n",
            "\nOOMPolicy=stop\n",
        ),
        (
            UNIT,
            check_unit,
            "\nLimitNOFILE=1048576\n",
            "\nLimitNOFILE=1024\n",
        ),
        (
            UNIT,
            check_unit,
            "\nTasksMax=infinity\n",
            "\nTasksMax=4096\n",
        ),
        (
            UNIT,
            check_unit,
            "\nTimeoutStartSec=5min\n",
            "\nTimeoutStartSec=30s\n",
        ),
        (
            UNIT,
            check_unit,
            "\nUser=root\n",
            "\nUser=root\nPrivateTmp=yes\n",
        ),
        (
            UNIT,
            check_unit,
            "\nAfter=network-online.target\n",
            "\nAfter=network.target\n",
        ),
        (UNIT, check_unit, "\n[Install]\n", "\n[Instal]\n"),
        (K8S, k8s, "kind: DaemonSet", "kind: Deployment"),
        (K8S, k8s, "readinessProbe:", "readinesProbe:"),
        (K8S, k8s, "path: /readyz", "path: /ready"),
        (
            K8S,
            k8s,
            "privileged: true\n          # Liveness",
            "privileged: false\n          # Liveness",
        ),
        (K8S, k8s, "hostNetwork: true", "hostNetwork: false"),
        (K8S, k8s, "hostPID: true", "hostPID: false"),
        (
            K8S,
            k8s,
            "path: /dev/kvm, type: CharDevice",
            "path: /dev/kvm, type: File",
        ),
        (K8S, k8s, "path: /dev/net/tun,", "path: /dev/tun,"),
        (
            K8S,
            k8s,
            "mountPropagation: Bidirectional",
            "mountPropagation: HostToContainer",
        ),
        (K8S, k8s, "defaultMode: 384", "defaultMode: 420"),
        (
            K8S,
            k8s,
            "prometheus.io/port: \"9070\"",
            "prometheus.io/port: \"9090\"",
        ),
        (K8S, k8s, "containerPort: 9070", "containerPort: 9071"),
        (K8S, k8s, "requests:\n", "limits:\n"),
        (K8S, k8s, "type: OnDelete", "type: RollingUpdate"),
        (K8S, k8s, "priorityClassName: system-node-critical\n", ""),
        (K8S, k8s, "failureThreshold: 6", "failureThreshold: 1"),
        (
            K8S,
            k8s,
            "wasp.dev/host: \"true\"",
            "wasp.dev/hosts: \"true\"",
        ),
        (
            K8S,
            k8s,
            "state_dir = \"/run/wasp\"",
            "state_dir = \"/run/wasp2\"",
        ),
        (K8S, k8s, "parallel = 32", "paralel = 32"),
        (K8S, k8s, "            - --kill-on-exit\n", ""),
        (NOMAD, nomad, "type = \"system\"", "type = \"service\""),
        (NOMAD, nomad, "mode     = \"delay\"", "mode     = \"fail\""),
        (
            NOMAD,
            nomad,
            "path     = \"/readyz\"",
            "path     = \"/ready\"",
        ),
        (
            NOMAD,
            nomad,
            "driver = \"raw_exec\"\n\n      config",
            "driver = \"exec\"\n\n      config",
        ),
        (
            NOMAD,
            nomad,
            "hook    = \"prestart\"",
            "hook    = \"poststart\"",
        ),
        (
            NOMAD,
            nomad,
            "perms       = \"0600\"",
            "perms       = \"0644\"",
        ),
        (
            NOMAD,
            nomad,
            "kill_timeout   = \"120s\"",
            "kill_timout    = \"120s\"",
        ),
        (NOMAD, nomad, "shutdown_delay = \"5s\"\n", ""),
        (
            NOMAD,
            nomad,
            "tags     = [\"metrics\", \"prometheus\"]",
            "tags     = [\"prometheus\"]",
        ),
        (
            NOMAD,
            nomad,
            "\"tcp:${NOMAD_ADDR_api}\"",
            "\"tcp:0.0.0.0:7070\"",
        ),
        (
            NOMAD,
            nomad,
            "runtime_dir = \"/var/lib/wasp\"",
            "runtime_dir = \"relative\"",
        ),
    ];
    let mut missed = Vec::new();
    for (file, check, from, to) in breaks {
        let text = read(file);
        let at = text.matches(from).count();
        assert!(
            at >= 1,
            "{file}: {from:?} is not in the manifest (update this table)"
        );
        // Break the first occurrence only: one key at a time.
        let broken = text.replacen(from, to, 1);
        if let Ok(()) = check(&broken) {
            missed.push(format!("{file}: {from:?} -> {to:?}"));
        }
    }
    assert!(
        missed.is_empty(),
        "breaks the checks let through:\n{}",
        missed.join("\n")
    );
}

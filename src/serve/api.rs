//! The API's request bodies and their checks: every body refuses unknown
//! fields, values are checked before anything is built, and a secret's
//! value never reaches an error, a log line or a `Debug` output.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use zeroize::Zeroizing;

use super::error::ApiError;
use crate::pipeline::env::{Env, Secret, Value};
use crate::pipeline::ready::Ready;

/// Longest label key or value.
pub const MAX_LABEL_LEN: usize = 128;
/// Most labels on one request.
pub const MAX_LABELS: usize = 32;
/// Longest `ttl_s` (a week).
pub const MAX_TTL_S: u64 = 7 * 24 * 3600;

/// A secret's value as it arrives in a body: zeroized on drop, `***` in
/// `Debug`.
pub struct SecretValue(Zeroizing<String>);

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl<'de> Deserialize<'de> for SecretValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|s| SecretValue(Zeroizing::new(s)))
    }
}

/// `POST /v1/clones`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpawnBody {
    /// A snapshot name from `GET /v1/snapshots`, or an absolute directory.
    pub snapshot: String,
    /// Clones (1 to `[serve] max_count`; default 1).
    #[serde(default)]
    pub count: Option<u64>,
    /// Must name the daemon's VMM when given (`firecracker`, `standin`).
    #[serde(default)]
    pub vmm: Option<String>,
    /// Non-secret variables for every clone.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Secret variables: reach the clone through MMDS only.
    #[serde(default)]
    pub secrets: BTreeMap<String, SecretValue>,
    /// Readiness: `tcp:PORT`, `running` or `none` (default: the config's).
    #[serde(default)]
    pub ready: Option<String>,
    /// Seconds until each clone is killed (none: no limit).
    #[serde(default)]
    pub ttl_s: Option<u64>,
    /// Free-form labels, for listing and deleting by label.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A checked `POST /v1/clones`.
#[derive(Debug)]
pub struct SpawnSpec {
    /// Snapshot name or directory.
    pub snapshot: String,
    /// Clones.
    pub count: usize,
    /// Environment, secrets zeroized.
    pub env: Env,
    /// Readiness, when the body names one.
    pub ready: Option<Ready>,
    /// Time to live.
    pub ttl: Option<Duration>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
}

/// `PATCH /v1/clones/{id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchBody {
    /// New time to live from now, in seconds; `null` removes the limit.
    pub ttl_s: Option<u64>,
}

/// `PUT /v1/pools/{name}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolBody {
    /// Free slots to build now.
    #[serde(default)]
    pub size: Option<usize>,
    /// The background refill keeps at least this many free.
    #[serde(default)]
    pub low_water: Option<usize>,
    /// Slots given back above this many free are destroyed.
    #[serde(default)]
    pub high_water: Option<usize>,
}

/// `POST /v1/snapshots`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotBody {
    /// The name clone requests use.
    pub name: String,
    /// The snapshot directory (absolute).
    pub dir: String,
    /// Write its manifest first (`wasp snapshot adopt`); without it the
    /// directory must already have one.
    #[serde(default)]
    pub adopt: Option<AdoptBody>,
}

/// How to adopt a directory (`wasp snapshot adopt`'s flags).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdoptBody {
    /// vmstate file name (default `vmstate`).
    #[serde(default)]
    pub vmstate: Option<String>,
    /// Memory file name (default `memory`).
    #[serde(default)]
    pub memory: Option<String>,
    /// Root filesystem image file name, if the VM had one.
    #[serde(default)]
    pub rootfs: Option<String>,
    /// The VMM version that made it (Firecracker: required).
    #[serde(default)]
    pub vmm_version: Option<String>,
    /// vCPUs.
    #[serde(default)]
    pub vcpus: Option<u8>,
    /// Replace an existing manifest.
    #[serde(default)]
    pub force: bool,
}

/// Parses a JSON body into `T`: 400 on bad JSON or an unknown field, with
/// the field's path. A message about a field under `secrets` never quotes
/// the value.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::bad_request(
            "the body must be one JSON object (see docs/api/openapi.yaml)",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let r: Result<T, _> = serde_path_to_error::deserialize(&mut de);
    let v = match r {
        Ok(v) => v,
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let detail = if path.starts_with("secrets") {
                format!(
                    "{path}: each secret must be a string (the value is not shown: {})",
                    inner.classify_name()
                )
            } else if matches!(
                inner.classify(),
                serde_json::error::Category::Syntax | serde_json::error::Category::Eof
            ) {
                format!("the body is not valid JSON: {inner}")
            } else if path == "." || path == "?" || path.is_empty() {
                format!("the body is not the JSON object this route takes: {inner}")
            } else {
                format!("{path}: {inner}")
            };
            return Err(ApiError::bad_request(detail));
        }
    };
    de.end()
        .map_err(|_| ApiError::bad_request("trailing data after the JSON body"))?;
    Ok(v)
}

trait Classify {
    fn classify_name(&self) -> &'static str;
}

impl Classify for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "I/O error",
            serde_json::error::Category::Syntax => "bad JSON",
            serde_json::error::Category::Data => "wrong type",
            serde_json::error::Category::Eof => "cut off",
        }
    }
}

fn check_labels(labels: &BTreeMap<String, String>, what: &str) -> Result<(), ApiError> {
    if labels.len() > MAX_LABELS {
        return Err(ApiError::unprocessable(format!(
            "{what}: {} labels, at most {MAX_LABELS}",
            labels.len()
        )));
    }
    for (k, v) in labels {
        check_label(k, v, what)?;
    }
    Ok(())
}

/// A label key is `[A-Za-z0-9_.-/]`, 1 to [`MAX_LABEL_LEN`] bytes; a value
/// at most [`MAX_LABEL_LEN`] bytes of printable ASCII without `,` or `=`.
pub fn check_label(k: &str, v: &str, what: &str) -> Result<(), ApiError> {
    let key_ok = !k.is_empty()
        && k.len() <= MAX_LABEL_LEN
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-/".contains(&b));
    if !key_ok {
        return Err(ApiError::unprocessable(format!(
            "{what}: label key {k:?} is not 1 to {MAX_LABEL_LEN} characters of [A-Za-z0-9_.-/]"
        )));
    }
    let val_ok = v.len() <= MAX_LABEL_LEN
        && v.bytes()
            .all(|b| b.is_ascii_graphic() && b != b',' && b != b'=');
    if !val_ok {
        return Err(ApiError::unprocessable(format!(
            "{what}: the value of label {k} is not at most {MAX_LABEL_LEN} printable ASCII characters without ',' or '='"
        )));
    }
    Ok(())
}

/// `?label=k=v&label=k2=v2` from a raw query string: every pair must
/// match. Other parameters are refused.
pub fn label_filter(query: Option<&str>) -> Result<BTreeMap<String, String>, ApiError> {
    let mut out = BTreeMap::new();
    let Some(q) = query else { return Ok(out) };
    for part in q.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = part.split_once('=').unwrap_or((part, ""));
        if name != "label" {
            return Err(ApiError::bad_request(format!(
                "unknown query parameter {name:?}: only label=KEY=VALUE filters"
            )));
        }
        let value = percent_decode(value)
            .ok_or_else(|| ApiError::bad_request("a label filter is not valid percent-encoding"))?;
        let (k, v) = value.split_once('=').ok_or_else(|| {
            ApiError::bad_request(format!("label filter {value:?} is not KEY=VALUE"))
        })?;
        check_label(k, v, "label filter")?;
        if out.insert(k.to_owned(), v.to_owned()).is_some() {
            return Err(ApiError::bad_request(format!(
                "label filter {k} is given twice"
            )));
        }
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(h, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

impl SpawnBody {
    /// Checks the body against the daemon's limits: `count` out of range
    /// is 400 (before anything is built), a bad key, readiness, label or
    /// VMM name 422.
    pub fn check(self, max_count: usize, daemon_vmm: &str) -> Result<SpawnSpec, ApiError> {
        let count = self.count.unwrap_or(1);
        if count == 0 || count > max_count as u64 {
            return Err(ApiError::bad_request(format!(
                "count {count} is out of range: use 1 to {max_count} ([serve] max_count)"
            )));
        }
        if self.snapshot.is_empty() {
            return Err(ApiError::unprocessable(
                "snapshot is empty: give a name from GET /v1/snapshots or an absolute directory",
            ));
        }
        if let Some(v) = &self.vmm {
            if v != daemon_vmm {
                return Err(ApiError::unprocessable(format!(
                    "vmm {v:?}: this daemon runs {daemon_vmm}; drop vmm or ask a daemon that runs {v}"
                )));
            }
        }
        let ready = match &self.ready {
            None => None,
            Some(r) => Some(
                r.parse::<Ready>()
                    .map_err(|e| ApiError::unprocessable(format!("ready: {e}")))?,
            ),
        };
        let ttl = match self.ttl_s {
            None => None,
            Some(s) if (1..=MAX_TTL_S).contains(&s) => Some(Duration::from_secs(s)),
            Some(s) => {
                return Err(ApiError::unprocessable(format!(
                    "ttl_s {s} is out of range: use 1 to {MAX_TTL_S} seconds, or leave it out"
                )))
            }
        };
        check_labels(&self.labels, "labels")?;
        let mut env = Env::new();
        for (k, v) in self.env {
            env.insert(&k, Value::Plain(v))
                .map_err(|e| ApiError::unprocessable(format!("env: {e}")))?;
        }
        for (k, v) in self.secrets {
            // Moved, not copied: the zeroizing string goes into the Env.
            let SecretValue(mut z) = v;
            let s = std::mem::take(&mut *z);
            env.insert(&k, Value::Secret(Secret::new(s)))
                .map_err(|e| ApiError::unprocessable(format!("secrets: {e}")))?;
        }
        Ok(SpawnSpec {
            snapshot: self.snapshot,
            count: count as usize,
            env,
            ready,
            ttl,
            labels: self.labels,
        })
    }
}

impl PatchBody {
    /// The new time to live.
    pub fn ttl(&self) -> Result<Option<Duration>, ApiError> {
        match self.ttl_s {
            None => Ok(None),
            Some(s) if (1..=MAX_TTL_S).contains(&s) => Ok(Some(Duration::from_secs(s))),
            Some(s) => Err(ApiError::unprocessable(format!(
                "ttl_s {s} is out of range: use 1 to {MAX_TTL_S} seconds, or null for no limit"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_of_the_wrong_type_is_not_quoted() {
        let e =
            parse_json::<SpawnBody>(br#"{"snapshot":"s","secrets":{"K":98765431}}"#).unwrap_err();
        assert_eq!(e.status.as_u16(), 400);
        assert!(!e.detail.contains("98765431"), "{}", e.detail);
        assert!(e.detail.contains("secrets.K"), "{}", e.detail);
    }

    #[test]
    fn unknown_fields_are_named() {
        let e = parse_json::<SpawnBody>(br#"{"snapshot":"s","cuont":2}"#).unwrap_err();
        assert_eq!(e.status.as_u16(), 400);
        assert!(e.detail.contains("cuont"), "{}", e.detail);
        let e = parse_json::<PatchBody>(br#"{"ttl_s":2,"x":1}"#).unwrap_err();
        assert!(e.detail.contains("unknown field `x`"), "{}", e.detail);
    }

    #[test]
    fn count_is_bounded_and_keys_checked() {
        let b: SpawnBody = parse_json(br#"{"snapshot":"s","count":11}"#).unwrap();
        let e = b.check(10, "standin").unwrap_err();
        assert_eq!(e.status.as_u16(), 400);
        assert!(e.detail.contains("1 to 10"), "{}", e.detail);
        let b: SpawnBody = parse_json(br#"{"snapshot":"s","env":{"1BAD":"v"}}"#).unwrap();
        let e = b.check(10, "standin").unwrap_err();
        assert_eq!(e.status.as_u16(), 422);
        assert!(e.detail.contains("1BAD"), "{}", e.detail);
        let b: SpawnBody =
            parse_json(br#"{"snapshot":"s","secrets":{"AGENT_ID":"hunter2"}}"#).unwrap();
        let e = b.check(10, "standin").unwrap_err();
        assert!(!e.detail.contains("hunter2"), "{}", e.detail);
        let b: SpawnBody = parse_json(br#"{"snapshot":"s","vmm":"firecracker"}"#).unwrap();
        assert_eq!(b.check(10, "standin").unwrap_err().status.as_u16(), 422);
        let b: SpawnBody = parse_json(br#"{"snapshot":"s","ready":"tcp:0"}"#).unwrap();
        assert_eq!(b.check(10, "standin").unwrap_err().status.as_u16(), 422);
    }

    #[test]
    fn a_good_body_becomes_a_spec_with_zeroized_secrets() {
        let b: SpawnBody = parse_json(
            br#"{"snapshot":"s","count":3,"env":{"A":"1"},"secrets":{"TOKEN":"hunter2"},"ready":"running","ttl_s":5,"labels":{"team":"x"}}"#,
        )
        .unwrap();
        assert!(!format!("{b:?}").contains("hunter2"));
        let s = b.check(10, "standin").unwrap();
        assert_eq!(s.count, 3);
        assert_eq!(s.ttl, Some(Duration::from_secs(5)));
        assert_eq!(s.ready, Some(Ready::Running));
        assert_eq!(s.env.keys().collect::<Vec<_>>(), vec!["A", "TOKEN"]);
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn label_filters_parse_and_refuse() {
        let f = label_filter(Some("label=team%3Dx&label=env=prod")).unwrap();
        assert_eq!(f.get("team").map(String::as_str), Some("x"));
        assert_eq!(f.get("env").map(String::as_str), Some("prod"));
        assert!(label_filter(Some("lbl=a=b")).is_err());
        assert!(label_filter(Some("label=novalue")).is_err());
        assert!(label_filter(None).unwrap().is_empty());
    }
}

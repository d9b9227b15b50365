//! `wasp config show`: every effective setting as an [`Entry`] (key, value,
//! source, and what an unset value means), in file order.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{Config, Setting, Source};

impl Config {
    /// Every setting as `(key, value, source)`, in file order, for
    /// `wasp config show`. Unset optional values are JSON `null`.
    pub fn entries(&self) -> Vec<Entry> {
        use serde_json::{json, Value};
        fn e<T>(key: &'static str, s: &Setting<T>, value: Value) -> Entry {
            let note = match (key, &s.source) {
                ("pool.host_netns", _) if value.is_null() => Some("the current netns"),
                ("pool.allow_host", Source::Default) => Some("the bridge address, port 8080"),
                ("pool.connect_uids", Source::Default) => Some("root only"),
                ("paths.firecracker", _) if value.is_null() => Some("looked up on PATH"),
                ("paths.jailer", _) if value.is_null() => Some("beside firecracker, then on PATH"),
                ("serve.socket_group", _) if value.is_null() => Some("root's group"),
                ("serve.token_file", _) if value.is_null() => Some("none: no TCP listener"),
                ("serve.metrics", _) if value.is_null() => Some("only on the API listeners"),
                _ => None,
            };
            Entry {
                key,
                value,
                source: s.source.clone(),
                note,
            }
        }
        let path = |p: &Path| json!(p.display().to_string());
        let opt_path = |p: &Option<PathBuf>| p.as_deref().map_or(Value::Null, path);
        vec![
            e("pool.name", &self.pool, json!(self.pool.value)),
            e("pool.cidr", &self.cidr, json!(self.cidr.value.to_string())),
            e("pool.bridge", &self.bridge, json!(self.bridge.value)),
            e(
                "pool.host_netns",
                &self.host_netns,
                json!(self.host_netns.value),
            ),
            e(
                "pool.layout",
                &self.layout,
                json!(self.layout.value.to_string()),
            ),
            e(
                "pool.allow_host",
                &self.allow_host,
                json!(self
                    .allow_host()
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()),
            ),
            e(
                "pool.connect_uids",
                &self.connect_uids,
                self.connect_uids
                    .value
                    .uids()
                    .map_or(json!("any"), |u| json!(u)),
            ),
            e("guest.tap", &self.tap, json!(self.tap.value)),
            e(
                "guest.tap_ip",
                &self.tap_ip,
                json!(self.tap_ip.value.to_string()),
            ),
            e(
                "guest.tap_prefix",
                &self.tap_prefix,
                json!(self.tap_prefix.value),
            ),
            e(
                "guest.guest_ip",
                &self.guest_ip,
                json!(self.guest_ip.value.to_string()),
            ),
            e(
                "paths.runtime_dir",
                &self.runtime_dir,
                path(&self.runtime_dir.value),
            ),
            e(
                "paths.state_dir",
                &self.state_dir,
                path(&self.state_dir.value),
            ),
            e(
                "paths.firecracker",
                &self.firecracker,
                opt_path(&self.firecracker.value),
            ),
            e("paths.jailer", &self.jailer, opt_path(&self.jailer.value)),
            e(
                "spawn.ready",
                &self.ready,
                json!(self.ready.value.to_string()),
            ),
            e("spawn.parallel", &self.parallel, json!(self.parallel.value)),
            e(
                "jailer.id_range",
                &self.jailer_ids,
                json!(self.jailer_ids.value.to_string()),
            ),
            e(
                "serve.listen",
                &self.serve_listen,
                json!(self
                    .serve_listen
                    .value
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()),
            ),
            e(
                "serve.socket_group",
                &self.serve_socket_group,
                json!(self.serve_socket_group.value),
            ),
            e(
                "serve.token_file",
                &self.serve_token_file,
                opt_path(&self.serve_token_file.value),
            ),
            e(
                "serve.metrics",
                &self.serve_metrics,
                self.serve_metrics
                    .value
                    .map_or(Value::Null, |a| json!(a.to_string())),
            ),
            e(
                "serve.max_count",
                &self.serve_max_count,
                json!(self.serve_max_count.value),
            ),
            e(
                "serve.body_limit",
                &self.serve_body_limit,
                json!(self.serve_body_limit.value),
            ),
            e("serve.warm", &self.serve_warm, json!(self.serve_warm.value)),
            e(
                "serve.low_water",
                &self.serve_low_water,
                json!(self.serve_low_water.value),
            ),
            e(
                "serve.high_water",
                &self.serve_high_water,
                json!(self.serve_high_water.value),
            ),
            e(
                "serve.standby",
                &self.serve_standby,
                json!(self.serve_standby.value),
            ),
            e(
                "serve.allow_copy",
                &self.serve_allow_copy,
                json!(self.serve_allow_copy.value),
            ),
        ]
    }
}

/// One line of `wasp config show`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    /// Dotted key as written in the file, e.g. `pool.cidr`.
    pub key: &'static str,
    /// The effective value (`null`: unset, see the key's meaning).
    pub value: serde_json::Value,
    /// Where it came from.
    #[serde(serialize_with = "source_kind")]
    pub source: Source,
    /// What an unset or derived value means.
    pub note: Option<&'static str>,
}

fn source_kind<S: serde::Serializer>(s: &Source, ser: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = ser.serialize_map(Some(2))?;
    m.serialize_entry("kind", s.kind())?;
    m.serialize_entry("origin", &s.origin())?;
    m.end()
}

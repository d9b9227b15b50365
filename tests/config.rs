//! `wasp config show` and `wasp completions`, run as a user runs them. The
//! config file is always a temp file (`--config` or `WASP_CONFIG`); these
//! tests never read or write /etc/wasp.

use std::path::Path;
use std::process::{Command, Output};

use wasp_testkit::wasp_cmd;

/// `wasp` with no `WASP_*` variable of the environment.
fn wasp() -> Command {
    wasp_cmd!()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn show_json(c: &mut Command) -> serde_json::Value {
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not one JSON document ({e}): {}", stdout(&o)))
}

/// `key -> (value, kind, origin)` from `config show --json`.
fn entry(v: &serde_json::Value, key: &str) -> (serde_json::Value, String, serde_json::Value) {
    let e = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["key"] == key)
        .unwrap_or_else(|| panic!("no {key} in {v}"));
    (
        e["value"].clone(),
        e["source"]["kind"].as_str().unwrap().to_owned(),
        e["source"]["origin"].clone(),
    )
}

fn write_config(dir: &Path, text: &str) -> std::path::PathBuf {
    let p = dir.join("wasp.toml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn config_show_names_the_source_of_every_value() {
    let tmp = tempfile::tempdir().unwrap();
    let file = write_config(
        tmp.path(),
        "[pool]\ncidr = \"10.42.0.0/16\"\nbridge = \"wasp42\"\n\n[spawn]\nparallel = 7\nready = \"running\"\n",
    );
    let v = show_json(
        wasp()
            .arg("--config")
            .arg(&file)
            .args(["config", "show", "--json", "--bridge", "wasp43"])
            .env("WASP_FIRECRACKER", "/opt/fc/firecracker"),
    );
    let f = file.to_str().unwrap();
    assert_eq!(v["file"], f);
    assert!(v["problem"].is_null(), "{v}");
    assert_eq!(
        entry(&v, "pool.cidr"),
        ("10.42.0.0/16".into(), "file".into(), f.into())
    );
    assert_eq!(
        entry(&v, "pool.bridge"),
        ("wasp43".into(), "flag".into(), "--bridge".into())
    );
    assert_eq!(
        entry(&v, "spawn.parallel"),
        (7.into(), "file".into(), f.into())
    );
    assert_eq!(entry(&v, "spawn.ready").0, "running");
    assert_eq!(
        entry(&v, "paths.firecracker"),
        (
            "/opt/fc/firecracker".into(),
            "env".into(),
            "WASP_FIRECRACKER".into()
        )
    );
    let (name, kind, origin) = entry(&v, "pool.name");
    assert_eq!((name, kind.as_str()), ("default".into(), "default"));
    assert!(origin.is_null());
    // The allow_host default follows the file's CIDR.
    assert_eq!(
        entry(&v, "pool.allow_host").0,
        serde_json::json!(["10.42.0.1:8080"])
    );
    // Every key of the reference is shown exactly once.
    let keys: Vec<_> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(keys.len(), 29, "{keys:?}");
    let (layout, kind, _) = entry(&v, "pool.layout");
    assert_eq!((layout, kind.as_str()), ("routed".into(), "default"));
    let (ids, kind, _) = entry(&v, "jailer.id_range");
    assert_eq!((ids, kind.as_str()), ("70000-79999".into(), "default"));
    // `[serve]`: the daemon's settings.
    assert_eq!(
        entry(&v, "serve.listen").0,
        serde_json::json!(["unix:/run/wasp/wasp.sock"])
    );
    assert_eq!(entry(&v, "serve.max_count").0, 1000);
    assert_eq!(entry(&v, "serve.allow_copy").0, false);

    // The table says the same for humans.
    let o = wasp()
        .arg("--config")
        .arg(&file)
        .args(["config", "show", "--parallel", "3"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains(&format!("config file: {f}")), "{text}");
    let line = |k: &str| {
        text.lines()
            .find(|l| l.starts_with(k))
            .unwrap_or_else(|| panic!("no {k} in {text}"))
            .to_owned()
    };
    assert!(line("pool.cidr").contains("10.42.0.0/16"), "{text}");
    assert!(line("pool.cidr").ends_with(&format!("file {f}")), "{text}");
    assert!(
        line("spawn.parallel").ends_with("flag --parallel"),
        "{text}"
    );
    assert!(line("paths.state_dir").ends_with("default"), "{text}");
}

#[test]
fn connect_uids_default_to_root_and_take_a_list_or_any() {
    let v = show_json(wasp().args(["config", "show", "--json"]));
    assert_eq!(
        entry(&v, "pool.connect_uids"),
        (
            serde_json::json!([0]),
            "default".into(),
            serde_json::Value::Null
        )
    );
    let tmp = tempfile::tempdir().unwrap();
    let file = write_config(tmp.path(), "[pool]\nconnect_uids = [1000, 990]\n");
    let v = show_json(
        wasp()
            .arg("--config")
            .arg(&file)
            .args(["config", "show", "--json"]),
    );
    // Root is always in; ascending.
    assert_eq!(
        entry(&v, "pool.connect_uids").0,
        serde_json::json!([0, 990, 1000])
    );
    let v = show_json(wasp().arg("--config").arg(&file).args([
        "config",
        "show",
        "--json",
        "--connect-uids",
        "any",
    ]));
    assert_eq!(
        entry(&v, "pool.connect_uids"),
        ("any".into(), "flag".into(), "--connect-uids".into())
    );
    // Bad values: one error naming the key (and line) or the flag.
    for (text, want) in [
        ("[pool]\nconnect_uids = \"all\"\n", "line 2"),
        ("[pool]\nconnect_uids = [-1]\n", "line 2"),
    ] {
        let file = write_config(tmp.path(), text);
        let o = wasp()
            .arg("--config")
            .arg(&file)
            .args(["config", "show"])
            .output()
            .unwrap();
        assert!(!o.status.success(), "{text}");
        let e = stderr(&o);
        assert!(
            e.contains("pool.connect_uids") && e.contains(want),
            "{text}: {e}"
        );
    }
    let o = wasp()
        .args(["config", "show", "--connect-uids", "0,root"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("--connect-uids") && e.contains("\"root\""),
        "{e}"
    );
}

#[test]
fn wasp_config_names_the_file_and_the_flag_beats_it() {
    let tmp = tempfile::tempdir().unwrap();
    let by_env = write_config(tmp.path(), "[pool]\nname = \"fromenv\"\n");
    let v = show_json(
        wasp()
            .args(["config", "show", "--json"])
            .env("WASP_CONFIG", &by_env),
    );
    assert_eq!(entry(&v, "pool.name").0, "fromenv");
    let flag_file = tmp.path().join("flag.toml");
    std::fs::write(&flag_file, "[pool]\nname = \"fromflag\"\n").unwrap();
    let v = show_json(
        wasp()
            .arg("--config")
            .arg(&flag_file)
            .args(["config", "show", "--json"])
            .env("WASP_CONFIG", &by_env),
    );
    assert_eq!(entry(&v, "pool.name").0, "fromflag");
    // A named file that does not exist is an error, not the defaults.
    let o = wasp()
        .args(["config", "show"])
        .env("WASP_CONFIG", tmp.path().join("missing.toml"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("missing.toml"), "{}", stderr(&o));
}

#[test]
fn unknown_keys_and_bad_values_are_one_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    for (text, want) in [
        (
            "[pool]\nname = \"a\"\nbrige = \"wasp1\"\n",
            "line 3: unknown key `pool.brige`",
        ),
        (
            "[spawn]\nready = \"ssh:22\"\n",
            "line 2: `spawn.ready`: readiness \"ssh:22\"",
        ),
        (
            "[paths]\nstate_dir = \"run/wasp\"\n",
            "`paths.state_dir`: \"run/wasp\" is not an absolute path",
        ),
    ] {
        let file = write_config(tmp.path(), text);
        let o = wasp()
            .arg("--config")
            .arg(&file)
            .args(["config", "show", "--json"])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{text}");
        assert!(o.stdout.is_empty(), "{text}: {}", stdout(&o));
        let e = stderr(&o);
        assert!(e.contains(file.to_str().unwrap()), "{text}: {e}");
        assert!(e.contains(want), "{text}: {e}");
        assert_eq!(e.lines().count(), 1, "{e}");
    }
    // Values that parse but make no usable network: shown, and exit 1.
    let file = write_config(tmp.path(), "[pool]\nallow_host = [\"10.0.0.1:80\"]\n");
    let v = show_json(
        wasp()
            .arg("--config")
            .arg(&file)
            .args(["config", "show", "--json"]),
    );
    assert_eq!(entry(&v, "pool.allow_host").1, "file");
    let o = wasp()
        .arg("--config")
        .arg(&file)
        .args(["config", "show", "--cidr", "10.1.0.0/16"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("unusable: bad slot configuration: allowed host port 10.0.0.1:80 is outside the clone CIDR 10.1.0.0/16"),
        "{}",
        stdout(&o)
    );
}

/// Checks the script's syntax with the shell itself. Without the shell:
/// fails under CI (scripts/test.sh installs it), else skips loudly.
fn syntax_ok(shell: &str, script: &Path) -> Option<bool> {
    match Command::new(shell).arg("-n").arg(script).output() {
        Ok(o) => {
            assert!(o.status.success(), "{shell} -n: {}", stderr(&o));
            Some(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            assert!(
                std::env::var_os("CI").is_none(),
                "{shell} is not installed; scripts/test.sh installs it"
            );
            eprintln!("SKIPPED {shell} -n: {shell} is not installed");
            None
        }
        Err(e) => panic!("run {shell}: {e}"),
    }
}

#[test]
fn completions_cover_every_subcommand_and_parse() {
    let tmp = tempfile::tempdir().unwrap();
    // A broken config file must not stop completions.
    let broken = write_config(tmp.path(), "[nonsense\n");
    for shell in ["bash", "zsh", "fish"] {
        let o = wasp()
            .args(["completions", shell])
            .env("WASP_CONFIG", &broken)
            .output()
            .unwrap();
        assert!(o.status.success(), "{shell}: {}", stderr(&o));
        let text = stdout(&o);
        for sub in [
            "doctor",
            "demo",
            "spawn",
            "pool",
            "snapshot",
            "bench",
            "config",
            "completions",
        ] {
            assert!(text.contains(sub), "{shell} completions lack {sub}");
        }
        let global_flag = if shell == "fish" {
            "-l config"
        } else {
            "--config"
        };
        assert!(text.contains(global_flag), "{shell}: no {global_flag}");
        let script = tmp.path().join(format!("wasp.{shell}"));
        std::fs::write(&script, &o.stdout).unwrap();
        syntax_ok(shell, &script);
    }
    let o = wasp().args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn the_example_in_operations_md_sets_every_key() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md"))
        .unwrap();
    let start = doc.find("```toml\n").expect("a toml example") + "```toml\n".len();
    let len = doc[start..].find("```").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let file = write_config(tmp.path(), &doc[start..start + len]);
    let v = show_json(
        wasp()
            .arg("--config")
            .arg(&file)
            .args(["config", "show", "--json"]),
    );
    for e in v["entries"].as_array().unwrap() {
        assert_eq!(e["source"]["kind"], "file", "{e}");
        // The reference table documents every key.
        let key = e["key"].as_str().unwrap();
        assert!(doc.contains(&format!("| `{key}` |")), "{key} undocumented");
    }
}

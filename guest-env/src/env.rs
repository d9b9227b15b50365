//! The environment fetched from MMDS: shell-identifier keys and string
//! values, checked once. `Debug` shows keys only; no error carries a value.

use std::collections::BTreeMap;

use thiserror::Error;

/// Problems with what MMDS holds (not with reaching it).
#[derive(Debug, Error)]
pub enum EnvError {
    /// The value at the path is not a JSON object.
    #[error("the MMDS value at {path} is a JSON {kind}, not an object of KEY: \"value\" strings (wasp writes {{\"env\": {{...}}}}; check --path)")]
    NotObject {
        /// The MMDS path.
        path: String,
        /// What it is instead.
        kind: &'static str,
    },
    /// A key that no shell can hold.
    #[error("MMDS key {key:?} is not a valid shell identifier ([A-Za-z_][A-Za-z0-9_]*); fix the key where the environment is set (wasp spawn --env/--env-file)")]
    BadKey {
        /// The key (keys are not secret), shortened to 64 characters.
        key: String,
    },
    /// A value that is not a string (number, object, ...).
    #[error(
        "the MMDS value of {key} is not a string; every environment value must be a JSON string"
    )]
    NotString {
        /// The key.
        key: String,
    },
    /// A value that is not UTF-8 (IMDS plain-text form).
    #[error("the MMDS value of {key} is not UTF-8 text")]
    NotUtf8 {
        /// The key.
        key: String,
    },
    /// A value holding a NUL byte, which no environment can carry.
    #[error("the MMDS value of {key} holds a NUL byte, which no environment can carry")]
    Nul {
        /// The key.
        key: String,
    },
    /// A `--require`d key is absent.
    #[error("MMDS has no {key}, which --require asks for (did the host set it? wasp always sets AGENT_ID)")]
    Missing {
        /// The key.
        key: String,
    },
}

/// True for `[A-Za-z_][A-Za-z0-9_]*`: a name `export` and `env` accept.
pub fn is_shell_identifier(k: &str) -> bool {
    let mut b = k.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

fn bad_key(k: &str) -> EnvError {
    EnvError::BadKey {
        key: k.chars().take(64).collect(),
    }
}

/// Checks one key before it is used in a path or a file.
pub fn check_key(k: &str) -> Result<(), EnvError> {
    if is_shell_identifier(k) {
        Ok(())
    } else {
        Err(bad_key(k))
    }
}

/// A clone's environment, ordered by key.
#[derive(Default, Clone, PartialEq, Eq)]
pub struct GuestEnv(BTreeMap<String, String>);

impl std::fmt::Debug for GuestEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl GuestEnv {
    /// Adds one variable after checking key and value.
    pub fn insert(&mut self, key: &str, value: String) -> Result<(), EnvError> {
        check_key(key)?;
        if value.contains('\0') {
            return Err(EnvError::Nul { key: key.into() });
        }
        self.0.insert(key.to_owned(), value);
        Ok(())
    }

    /// The environment held by a JSON object of strings (the JSON form).
    pub fn from_json(value: serde_json::Value, path: &str) -> Result<Self, EnvError> {
        let kind = match &value {
            serde_json::Value::Object(_) => "",
            serde_json::Value::Null => "null",
            serde_json::Value::Bool(_) => "boolean",
            serde_json::Value::Number(_) => "number",
            serde_json::Value::String(_) => "string",
            serde_json::Value::Array(_) => "array",
        };
        let serde_json::Value::Object(map) = value else {
            return Err(EnvError::NotObject {
                path: path.into(),
                kind,
            });
        };
        let mut env = Self::default();
        for (k, v) in map {
            check_key(&k)?;
            let serde_json::Value::String(v) = v else {
                return Err(EnvError::NotString { key: k });
            };
            env.insert(&k, v)?;
        }
        Ok(env)
    }

    /// Fails on the first key of `keys` that is absent.
    pub fn require<'a>(&self, keys: impl IntoIterator<Item = &'a String>) -> Result<(), EnvError> {
        match keys.into_iter().find(|k| !self.0.contains_key(*k)) {
            Some(k) => Err(EnvError::Missing { key: k.clone() }),
            None => Ok(()),
        }
    }

    /// Number of variables.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The keys (never the values).
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// One value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// Key-value pairs, ordered by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn identifiers() {
        for k in ["A", "_", "_x1", "AGENT_ID", &"K".repeat(300)] {
            assert!(is_shell_identifier(k), "{k}");
        }
        for k in ["", "1A", "A-B", "A B", "Ä", "A=B", "a.b", "A\n"] {
            assert!(!is_shell_identifier(k), "{k:?}");
        }
    }

    #[test]
    fn json_object_of_strings_only() {
        let env = GuestEnv::from_json(json!({"B": "2", "A": ""}), "/env").unwrap();
        assert_eq!(env.iter().collect::<Vec<_>>(), [("A", ""), ("B", "2")]);
        let e = GuestEnv::from_json(json!(["x"]), "/env").unwrap_err();
        assert!(e.to_string().contains("JSON array"), "{e}");
        let e = GuestEnv::from_json(json!({"N": 1}), "/env").unwrap_err();
        assert!(
            matches!(e, EnvError::NotString { ref key } if key == "N"),
            "{e}"
        );
        let e = GuestEnv::from_json(json!({"BAD-KEY": "canary"}), "/env").unwrap_err();
        assert!(e.to_string().contains("\"BAD-KEY\""), "{e}");
        let e = GuestEnv::from_json(json!({"K": "canary\u{0}"}), "/env").unwrap_err();
        assert!(matches!(e, EnvError::Nul { .. }), "{e}");
        assert!(!e.to_string().contains("canary"));
    }

    #[test]
    fn debug_shows_keys_only_and_require_names_the_key() {
        let env = GuestEnv::from_json(json!({"TOKEN": "canary"}), "/").unwrap();
        assert_eq!(format!("{env:?}"), "{\"TOKEN\"}");
        env.require(&["TOKEN".to_owned()]).unwrap();
        let e = env.require(&["AGENT_ID".to_owned()]).unwrap_err();
        assert!(e.to_string().contains("MMDS has no AGENT_ID"), "{e}");
    }
}

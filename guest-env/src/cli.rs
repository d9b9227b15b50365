//! Command-line parsing (hand-written: no CLI framework in the guest binary).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

use crate::deliver::DEFAULT_ENV_FILE;
use crate::mmds::{Config, Format, DEFAULT_ADDR};

/// The help text.
pub const USAGE: &str = "\
wasp-guest-env: fetch this VM's environment from Firecracker MMDS V2 and hand it to the agent.

Usage:
  wasp-guest-env [OPTIONS] [write]                  write the env file (the default)
  wasp-guest-env [OPTIONS] exec [--] PROG [ARG...]  exec PROG with the environment set

Options:
  --addr IP:PORT       MMDS address [env WASP_MMDS_ADDR; default 169.254.169.254:80]
  --path PATH          path of the env object [default /env]
  --format json|imds   MMDS output form to read [default json]
  --out FILE           env file for `write` [env WASP_ENV_FILE; default /run/wasp/env]
  --require KEY        fail unless KEY is present (repeatable)
  --token-ttl SECS     session token TTL, 1..=21600 [default 60]
  --attempts N         attempts while the store is empty or MMDS unreachable [default 240]
  --backoff-ms MS      first wait between attempts, doubling [default 10]
  --max-backoff-ms MS  longest wait between attempts [default 250]
  --timeout-ms MS      connect/read/write timeout of each request [default 2000]
  -h, --help           this text
  -V, --version        the version

Exit status: 0 success, 1 runtime failure, 2 usage error. Values are never printed.
";

/// What to do with the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write the `export` file.
    Write {
        /// Where.
        out: PathBuf,
    },
    /// Exec a command.
    Exec {
        /// The program.
        program: OsString,
        /// Its arguments.
        args: Vec<OsString>,
    },
}

/// A parsed command line.
#[derive(Debug)]
pub enum Invocation {
    /// Fetch and deliver.
    Run {
        /// MMDS settings.
        config: Config,
        /// Delivery.
        action: Action,
    },
    /// `--help`.
    Help,
    /// `--version`.
    Version,
}

/// A command line that cannot be run.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("{0}")]
pub struct UsageError(String);

fn usage(msg: impl Into<String>) -> UsageError {
    UsageError(msg.into())
}

fn number<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, UsageError> {
    v.parse()
        .map_err(|_| usage(format!("{flag} {v:?}: expected a non-negative integer")))
}

/// Parses arguments (without argv[0]); `getenv` supplies `WASP_MMDS_ADDR`
/// and `WASP_ENV_FILE` (flags win).
pub fn parse(
    args: impl IntoIterator<Item = OsString>,
    getenv: impl Fn(&str) -> Option<OsString>,
) -> Result<Invocation, UsageError> {
    let mut config = Config::default();
    let mut addr: Option<String> = None;
    let mut out: Option<PathBuf> = None;
    let mut exec: Option<Vec<OsString>> = None;
    let mut subcommand_seen = false;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let Some(s) = arg.to_str() else {
            return Err(usage(format!("argument {arg:?} is not UTF-8")));
        };
        let (flag, inline) = match s.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_owned())),
            _ => (s, None),
        };
        let mut value = || -> Result<String, UsageError> {
            if let Some(v) = inline.clone() {
                return Ok(v);
            }
            args.next()
                .ok_or_else(|| usage(format!("{flag} needs a value")))?
                .into_string()
                .map_err(|v| usage(format!("{flag} {v:?}: not UTF-8")))
        };
        match flag {
            "-h" | "--help" => return Ok(Invocation::Help),
            "-V" | "--version" => return Ok(Invocation::Version),
            "--addr" => addr = Some(value()?),
            "--path" => config.path = value()?,
            "--format" => {
                config.format = match value()?.as_str() {
                    "json" => Format::Json,
                    "imds" => Format::Imds,
                    other => return Err(usage(format!("--format {other:?}: use json or imds"))),
                }
            }
            "--out" => out = Some(value()?.into()),
            "--require" => config.require.push(value()?),
            "--token-ttl" => config.token_ttl = number(flag, &value()?)?,
            "--attempts" => config.attempts = number(flag, &value()?)?,
            "--backoff-ms" => {
                config.backoff_initial = Duration::from_millis(number(flag, &value()?)?)
            }
            "--max-backoff-ms" => {
                config.backoff_max = Duration::from_millis(number(flag, &value()?)?)
            }
            "--timeout-ms" => {
                let ms: u64 = number(flag, &value()?)?;
                if ms == 0 {
                    return Err(usage("--timeout-ms must be at least 1"));
                }
                config.timeout = Duration::from_millis(ms)
            }
            "write" if !subcommand_seen => subcommand_seen = true,
            "exec" if !subcommand_seen => {
                let mut rest: Vec<OsString> = args.by_ref().collect();
                if rest.first().is_some_and(|a| a == "--") {
                    rest.remove(0);
                }
                if rest.is_empty() {
                    return Err(usage("exec needs a program: exec -- PROG [ARG...]"));
                }
                exec = Some(rest);
            }
            _ if flag.starts_with('-') => return Err(usage(format!("unknown option {flag}"))),
            _ => return Err(usage(format!("unexpected argument {s:?}"))),
        }
    }
    let addr = addr
        .or_else(|| getenv("WASP_MMDS_ADDR").and_then(|v| v.into_string().ok()))
        .unwrap_or_else(|| DEFAULT_ADDR.into());
    config.addr = addr.parse::<SocketAddr>().map_err(|_| {
        usage(format!(
            "MMDS address {addr:?} is not IP:PORT (e.g. 169.254.169.254:80)"
        ))
    })?;
    config
        .validate()
        .map_err(|e| usage(crate::mmds::chain(&e)))?;
    let action = match exec {
        Some(mut cmd) => {
            if out.is_some() {
                return Err(usage("--out is for write, not exec"));
            }
            let program = cmd.remove(0);
            Action::Exec { program, args: cmd }
        }
        None => Action::Write {
            out: out
                .or_else(|| getenv("WASP_ENV_FILE").map(PathBuf::from))
                .unwrap_or_else(|| DEFAULT_ENV_FILE.into()),
        },
    };
    Ok(Invocation::Run { config, action })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str], env: &[(&str, &str)]) -> Result<(Config, Action), UsageError> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        match parse(args.iter().map(OsString::from), |k| {
            env.iter().find(|(n, _)| n == k).map(|(_, v)| v.into())
        })? {
            Invocation::Run { config, action } => Ok((config, action)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let (c, a) = run(&[], &[]).unwrap();
        assert_eq!(c.addr.to_string(), "169.254.169.254:80");
        assert_eq!((c.path.as_str(), c.format), ("/env", Format::Json));
        assert_eq!(
            a,
            Action::Write {
                out: "/run/wasp/env".into()
            }
        );
    }

    #[test]
    fn flags_beat_environment() {
        let env = [
            ("WASP_MMDS_ADDR", "127.0.0.1:9"),
            ("WASP_ENV_FILE", "/tmp/e"),
        ];
        let (c, a) = run(&["write"], &env).unwrap();
        assert_eq!(c.addr.to_string(), "127.0.0.1:9");
        assert_eq!(
            a,
            Action::Write {
                out: "/tmp/e".into()
            }
        );
        let (c, a) = run(&["--addr=127.0.0.1:1", "write", "--out", "/x"], &env).unwrap();
        assert_eq!(c.addr.to_string(), "127.0.0.1:1");
        assert_eq!(a, Action::Write { out: "/x".into() });
    }

    #[test]
    fn exec_takes_everything_after_it() {
        let (c, a) = run(
            &["--require", "AGENT_ID", "exec", "--", "sh", "-c", "--addr"],
            &[],
        )
        .unwrap();
        assert_eq!(c.require, ["AGENT_ID"]);
        assert_eq!(
            a,
            Action::Exec {
                program: "sh".into(),
                args: vec!["-c".into(), "--addr".into()]
            }
        );
    }

    #[test]
    fn usage_errors_say_what_is_wrong() {
        for (args, want) in [
            (&["--bogus"][..], "unknown option --bogus"),
            (&["--addr"], "--addr needs a value"),
            (&["--addr", "mmds"], "not IP:PORT"),
            (&["--token-ttl", "0"], "1..=21600"),
            (&["--token-ttl", "-1"], "non-negative integer"),
            (&["--format", "xml"], "use json or imds"),
            (&["--attempts", "0"], "at least 1"),
            (&["exec"], "exec needs a program"),
            (&["exec", "--"], "exec needs a program"),
            (&["--out", "/x", "exec", "true"], "--out is for write"),
            (&["--require", "A-B"], "\"A-B\""),
            (&["write", "write"], "unexpected argument"),
        ] {
            let e = run(args, &[]).unwrap_err().to_string();
            assert!(e.contains(want), "{args:?}: {e}");
        }
    }
}

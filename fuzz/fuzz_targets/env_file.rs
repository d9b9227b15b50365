//! Feeds arbitrary bytes to the env-file parser (`Env::add_text`, what
//! `--env-file` runs on the file's bytes). Nothing may panic; a bad line's
//! number lies within the text; whatever is accepted has valid keys, and
//! writing it back as `KEY="VALUE"` lines parses to the same environment.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasp::pipeline::env::{valid_key, Env};

fuzz_target!(|data: &[u8]| {
    let mut env = Env::new();
    match env.add_text(data) {
        Err(e) => {
            let lines = 1 + data.iter().filter(|&&b| b == b'\n').count();
            assert!((1..=lines).contains(&e.line), "line {} of {lines}", e.line);
        }
        Ok(()) => {
            assert!(env.keys().all(valid_key));
            let body: serde_json::Value =
                serde_json::from_slice(&env.mmds_body("fuzz")).expect("the body is JSON");
            let mut text = String::new();
            for k in env.keys() {
                let v = body["env"][k].as_str().expect("a string value");
                text.push_str(&format!("{k}=\"{v}\"\n"));
            }
            let mut again = Env::new();
            again
                .add_text(text.as_bytes())
                .expect("written-back text re-parses");
            assert_eq!(again, env);
        }
    }
});

//! VERSION: which spec versions Ohno speaks.

use serde_json::Value;

use crate::cni::result::version_json;
use crate::cni::version::{LATEST, SUPPORTED};
use crate::config::peek_version;

pub fn run(stdin: &[u8]) -> Value {
    let v = peek_version(stdin)
        .filter(|v| SUPPORTED.contains(&v.as_str()))
        .unwrap_or_else(|| LATEST.to_string());
    version_json(&v)
}

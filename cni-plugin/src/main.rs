//! `vswitch`: the CNI plugin binary (CNI `type: "vswitch"`).
//!
//! This version implements `VERSION` only; ADD/DEL/CHECK/STATUS/GC arrive with the CNI issue.
//! Every other command fails with a spec-conformant error (code 4, "incompatible/unsupported"),
//! so a runtime that tries it gets a clear answer instead of a silent success.
#![deny(unsafe_code)]

use std::io::Read;
use std::process::ExitCode;

const SUPPORTED: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

fn main() -> ExitCode {
    let cmd = std::env::var("CNI_COMMAND").unwrap_or_default();
    let mut stdin = String::new();
    let _ = std::io::stdin().read_to_string(&mut stdin);
    let version = serde_json::from_str::<serde_json::Value>(&stdin)
        .ok()
        .and_then(|v| v["cniVersion"].as_str().map(str::to_string))
        .unwrap_or_else(|| "1.1.0".to_string());
    match cmd.as_str() {
        "VERSION" => {
            let out = serde_json::json!({ "cniVersion": version, "supportedVersions": SUPPORTED });
            println!("{out}");
            ExitCode::SUCCESS
        }
        other => {
            let out = serde_json::json!({
                "cniVersion": version,
                "code": 4,
                "msg": format!("CNI_COMMAND {other:?} is not supported by this version of the vswitch plugin"),
                "details": "this release implements VERSION only; use vswitchctl port add/del",
            });
            println!("{out}");
            ExitCode::FAILURE
        }
    }
}

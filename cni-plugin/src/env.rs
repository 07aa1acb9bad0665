//! The CNI environment (`CNI_*` variables).

use crate::{code, CniError};

#[derive(Debug, Clone, Default)]
pub struct CniEnv {
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub path: String,
    /// `CNI_ARGS` as key/value pairs (`IgnoreUnknown=true;K8S_POD_NAME=x;IP=...`).
    pub args: Vec<(String, String)>,
}

impl CniEnv {
    pub fn from_process() -> Result<CniEnv, CniError> {
        let var = |k: &str| std::env::var(k).unwrap_or_default();
        let raw_args = var("CNI_ARGS");
        let mut args = Vec::new();
        for pair in raw_args.split(';').filter(|p| !p.is_empty()) {
            let Some((k, v)) = pair.split_once('=') else {
                return Err(CniError::new(
                    code::INVALID_ENV,
                    format!("CNI_ARGS: {pair:?} is not KEY=VALUE"),
                ));
            };
            args.push((k.to_string(), v.to_string()));
        }
        Ok(CniEnv {
            container_id: var("CNI_CONTAINERID"),
            netns: var("CNI_NETNS"),
            ifname: var("CNI_IFNAME"),
            path: var("CNI_PATH"),
            args,
        })
    }

    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Fails with code 4 naming the first missing variable.
    pub fn require(&self, vars: &[&str]) -> Result<(), CniError> {
        for v in vars {
            let val = match *v {
                "CNI_CONTAINERID" => &self.container_id,
                "CNI_NETNS" => &self.netns,
                "CNI_IFNAME" => &self.ifname,
                "CNI_PATH" => &self.path,
                _ => continue,
            };
            if val.is_empty() {
                return Err(CniError::new(code::INVALID_ENV, format!("{v} is not set")));
            }
        }
        if !self.ifname.is_empty() {
            vswitch_config::validate_ifname(&self.ifname)
                .map_err(|m| CniError::new(code::INVALID_ENV, format!("CNI_IFNAME: {m}")))?;
        }
        Ok(())
    }
}

//! The Kubernetes manifests in deploy/kubernetes/, checked offline: against Kubernetes' OpenAPI
//! schemas (kubernetes-validate, installed by tests/install-deps.sh into a venv), the
//! NetworkAttachmentDefinition CRD's shape, and every CNI config they carry (NAD spec.config,
//! per-node files) and every vswitchd config through the parsers the plugin and the daemon use.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::Value;
use vswitch_config::cni::{IpamConf, NetConf, BUILTIN_IPAM};
use vswitch_config::{DaemonConfig, NetworkKind};

fn manifests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes")
}

/// Every YAML document of a manifest file, as JSON values.
fn documents(file: &str) -> Vec<Value> {
    let path = manifests_dir().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| {
            let v = serde_norway::Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{file}: not YAML: {e}"));
            serde_json::to_value(v).unwrap_or_else(|e| panic!("{file}: {e}"))
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn config_map_data(name: &str) -> BTreeMap<String, String> {
    let docs = documents("vswitch.yaml");
    serde_json::from_value(find(&docs, "ConfigMap", name)["data"].clone())
        .unwrap_or_else(|e| panic!("ConfigMap {name}: data must map strings to strings: {e}"))
}

/// RFC 1123 subdomain, as Kubernetes requires of object names.
fn is_dns_subdomain(s: &str) -> bool {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
    !s.is_empty()
        && s.len() <= 253
        && s.chars().all(ok_char)
        && s.split('.')
            .all(|l| !l.is_empty() && !l.starts_with('-') && !l.ends_with('-') && l.len() <= 63)
}

/// A CNI config as the plugin reads it on stdin: parses, validates, and its built-in IPAM plans.
fn check_cni_config(origin: &str, text: &str, nad_name: &str) -> NetConf {
    let conf = NetConf::parse(text.as_bytes()).unwrap_or_else(|e| panic!("{origin}: {e}"));
    conf.validate()
        .unwrap_or_else(|e| panic!("{origin}: invalid CNI config: {e}"));
    assert_eq!(conf.plugin_type, "vswitch", "{origin}: type");
    assert_eq!(
        conf.name, nad_name,
        "{origin}: the CNI name must be the NAD's (Multus matches files by it)"
    );
    if conf.ipam_type() == Some(BUILTIN_IPAM) {
        let ipam: IpamConf = serde_json::from_value(conf.ipam.clone().unwrap())
            .unwrap_or_else(|e| panic!("{origin}: ipam: {e}"));
        ipam.plan()
            .unwrap_or_else(|e| panic!("{origin}: invalid IPAM: {e}"));
    }
    conf
}

#[test]
fn every_network_attachment_definition_has_the_crd_shape_and_a_valid_cni_config() {
    let docs = documents("networks.yaml");
    let per_node = config_map_data("vswitch-cni-config");
    let mut names = Vec::new();
    for nad in &docs {
        assert_eq!(nad["apiVersion"], "k8s.cni.cncf.io/v1", "{nad}");
        assert_eq!(nad["kind"], "NetworkAttachmentDefinition", "{nad}");
        let name = nad["metadata"]["name"].as_str().expect("metadata.name");
        assert!(is_dns_subdomain(name), "metadata.name {name:?}");
        let ns = nad["metadata"]["namespace"].as_str().unwrap_or("default");
        assert!(is_dns_subdomain(ns), "{name}: namespace {ns:?}");
        // The CRD's schema: spec is an object whose only property is config, a string.
        let spec = nad["spec"]
            .as_object()
            .unwrap_or_else(|| panic!("{name}: spec must be an object"));
        for key in spec.keys() {
            assert_eq!(key, "config", "{name}: spec.{key} is not in the NAD CRD");
        }
        match spec.get("config") {
            Some(config) => {
                let text = config
                    .as_str()
                    .unwrap_or_else(|| panic!("{name}: spec.config must be a JSON string"));
                check_cni_config(&format!("NAD {name}"), text, name);
            }
            None => {
                // Multus reads /etc/cni/multus/net.d/<name>.conf: the init container writes it
                // from <name>.<node>.conf.
                let files: Vec<_> = per_node
                    .iter()
                    .filter(|(k, _)| k.starts_with(&format!("{name}.")) && k.ends_with(".conf"))
                    .collect();
                assert!(
                    !files.is_empty(),
                    "NAD {name} has no spec.config and vswitch-cni-config has no {name}.<node>.conf"
                );
                for (key, text) in files {
                    check_cni_config(&format!("vswitch-cni-config {key}"), text, name);
                }
            }
        }
        names.push(name.to_string());
    }
    for wanted in [
        "tenant-a",
        "tenant-b",
        "tenant-c",
        "business",
        "management",
        "overlay-l2",
        "pods-l3",
    ] {
        assert!(names.iter().any(|n| n == wanted), "no NAD {wanted}");
    }
}

#[test]
fn node_configs_are_valid_and_agree_with_the_networks() {
    let node_files = config_map_data("vswitchd-config");
    assert!(
        node_files.contains_key("default.toml"),
        "install-cni falls back to default.toml"
    );
    let per_node = config_map_data("vswitch-cni-config");
    let nads = documents("networks.yaml");
    let overlay = find(&nads, "NetworkAttachmentDefinition", "overlay-l2");
    let overlay_domain = NetConf::parse(overlay["spec"]["config"].as_str().unwrap().as_bytes())
        .unwrap()
        .domain()
        .to_string();
    let mut nodes = 0;
    for (key, text) in &node_files {
        let cfg = DaemonConfig::from_toml_str(text, &format!("vswitchd-config {key}"))
            .unwrap_or_else(|e| panic!("{e}"));
        let Some(node) = key.strip_suffix(".toml").filter(|n| *n != "default") else {
            continue;
        };
        nodes += 1;
        assert_eq!(
            cfg.node.as_ref().and_then(|n| n.name.as_deref()),
            Some(node),
            "{key}: node.name"
        );
        let vxlan = cfg.networks.iter().find(|n| n.name == overlay_domain);
        assert!(
            vxlan.is_some_and(|n| n.vni.is_some()),
            "{key}: overlay-l2's domain {overlay_domain:?} needs a VNI on every node"
        );
        // The L3 network's per-node CNI config hands out addresses from this node's blocks.
        for net in cfg.networks.iter().filter(|n| n.kind == NetworkKind::L3) {
            let file = format!("{}.{node}.conf", net.name);
            let text = per_node
                .get(&file)
                .unwrap_or_else(|| panic!("vswitch-cni-config has no {file}"));
            let conf = check_cni_config(&file, text, &net.name);
            let ipam: IpamConf = serde_json::from_value(conf.ipam.unwrap()).unwrap();
            for set in ipam.plan().unwrap().range_sets {
                for r in set {
                    let inside = |ip: Ipv4Addr| net.blocks.iter().any(|b| b.contains(&ip));
                    assert!(
                        inside(r.start) && inside(r.end),
                        "{file}: range {}-{} is outside {node}'s blocks {:?}",
                        r.start,
                        r.end,
                        net.blocks
                    );
                }
            }
        }
    }
    assert!(nodes >= 2, "the example spans at least two nodes");
}

#[test]
fn daemonset_runs_vswitchd_as_a_node_agent() {
    let docs = documents("vswitch.yaml");
    let ds = find(&docs, "DaemonSet", "vswitchd");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["hostPID"], true);
    assert_eq!(ds["spec"]["updateStrategy"]["type"], "RollingUpdate");
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["privileged"], true);
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(
            c[probe]["exec"]["command"],
            serde_json::json!(["vswitchctl", "status"]),
            "{probe}"
        );
    }
    assert!(c["resources"]["requests"]["cpu"].is_string());
    assert!(c["resources"]["requests"]["memory"].is_string());
    // Where each host path ends up, across both containers.
    let host_paths: BTreeMap<String, String> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| {
            Some((
                v["name"].as_str()?.into(),
                v["hostPath"]["path"].as_str()?.into(),
            ))
        })
        .collect();
    let mounted: Vec<String> = [c, &pod["initContainers"][0]]
        .iter()
        .flat_map(|c| c["volumeMounts"].as_array().unwrap().iter())
        .filter_map(|m| host_paths.get(m["name"].as_str()?).cloned())
        .collect();
    for path in [
        "/run/netns",
        "/var/run/netns",
        "/opt/cni/bin",
        "/etc/cni/net.d",
        "/var/lib/vswitch",
        "/run/vswitch",
    ] {
        assert!(mounted.iter().any(|m| m == path), "{path} is not mounted");
    }
    // The init container installs the plugin with the script the image ships.
    let init = &pod["initContainers"][0];
    assert_eq!(init["command"][0], "/usr/local/bin/vswitch-install-cni");
    let dockerfile = std::fs::read_to_string(manifests_dir().join("../../Dockerfile")).unwrap();
    assert!(dockerfile.contains("deploy/install-cni.sh /usr/local/bin/vswitch-install-cni"));
    // No RBAC objects: nothing here reads the API server.
    for d in &docs {
        let kind = d["kind"].as_str().unwrap_or("");
        assert!(!kind.contains("Role"), "unexpected {kind}");
    }
}

/// kubernetes-validate from the venv tests/install-deps.sh makes; skipped with a message when
/// absent, except under VSWITCH_REQUIRE_ROOT_TESTS=1 (tests/run.sh), where that is a failure.
fn kubernetes_validate() -> Option<PathBuf> {
    let venv = std::env::var("VSWITCH_TEST_VENV").unwrap_or("/opt/vswitch-tests/venv".into());
    let bin = Path::new(&venv).join("bin/kubernetes-validate");
    if bin.exists() {
        return Some(bin);
    }
    if std::env::var("VSWITCH_REQUIRE_ROOT_TESTS").as_deref() == Ok("1") {
        panic!("{bin:?} missing: run tests/install-deps.sh");
    }
    eprintln!("skipping: {bin:?} missing (tests/install-deps.sh installs it)");
    None
}

fn validate(bin: &Path, file: &Path) -> (bool, String) {
    let out = Command::new(bin)
        .arg("--strict")
        .arg(file)
        .output()
        .expect("run kubernetes-validate");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn manifests_pass_kubernetes_schema_validation() {
    let Some(bin) = kubernetes_validate() else {
        return;
    };
    for file in ["vswitch.yaml", "networks.yaml", "examples.yaml"] {
        let path = manifests_dir().join(file);
        let (ok, text) = validate(&bin, &path);
        assert!(ok, "{file} fails kubernetes-validate --strict:\n{text}");
        // Every built-in kind was really checked (NADs are a CRD: checked above instead).
        for d in documents(file) {
            let kind = d["kind"].as_str().unwrap().to_lowercase();
            if kind == "networkattachmentdefinition" {
                continue;
            }
            let line = format!(
                "passed for resource {kind}/{}",
                d["metadata"]["name"].as_str().unwrap()
            );
            assert!(text.contains(&line), "{file}: no '{line}' in:\n{text}");
        }
    }
    // The validator can fail: a misspelt field in the DaemonSet is rejected.
    let broken =
        std::env::temp_dir().join(format!("vswitch-broken-ds-{}.yaml", std::process::id()));
    let ds = std::fs::read_to_string(manifests_dir().join("vswitch.yaml"))
        .unwrap()
        .replace("hostNetwork: true", "hostNetwrk: true");
    std::fs::write(&broken, ds).unwrap();
    let (ok, text) = validate(&bin, &broken);
    let _ = std::fs::remove_file(&broken);
    assert!(
        !ok && text.contains("hostNetwrk"),
        "broken DaemonSet passed:\n{text}"
    );
}

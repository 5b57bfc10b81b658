//! The shipped manifests under deploy/, read as kubectl reads them.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

/// The workspace root.
pub fn repo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn deploy_dir() -> PathBuf {
    repo_dir().join("deploy")
}

/// deploy/base/: the manifests `kubectl apply -k deploy/` installs.
pub fn base_dir() -> PathBuf {
    deploy_dir().join("base")
}

/// The objects of deploy/base/`file`.
pub fn manifest(file: &str) -> Vec<Value> {
    let path = base_dir().join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|object| !object.is_null())
        .collect()
}

/// The volume of pod spec `pod` that container volume mount `mount` names.
pub fn mounted_volume<'a>(pod: &'a Value, mount: &Value) -> &'a Value {
    pod["volumes"]
        .as_array()
        .expect("the pod has volumes")
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap_or_else(|| panic!("no volume {} in the pod", mount["name"]))
}

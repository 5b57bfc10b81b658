//! The images users build and deploy: `Dockerfile.agent` and `Dockerfile.scheduler`, built with
//! podman from a debootstrapped Debian, offline (`scripts/build-images.sh`, see
//! `wattwise_testenv::images`), then run the way deploy/ runs them: the ConfigMap mounted where the
//! container's `--config` points, the downward-API environment, the security context (read-only
//! root, dropped capabilities, no privilege escalation) and the memory limit.
//!
//! Nothing is skipped: a missing podman, runc or debootstrap fails the test, naming
//! scripts/install-deps.sh.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use wattwise_testenv::images::{self, images};
use wattwise_testenv::manifests::{manifest, mounted_volume, repo_dir};

/// Where the agent image keeps the shipped models (deploy/base/agent.yaml's `model.path` is in it).
const MODEL_DIR: &str = "/usr/share/wattwise/models";

fn object<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let mut of_kind = objects.iter().filter(|o| o["kind"] == kind);
    let found = of_kind.next().unwrap_or_else(|| panic!("no {kind}"));
    assert!(of_kind.next().is_none(), "more than one {kind}");
    found
}

fn texts(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// What a pod of `workload` gets, as podman options: each ConfigMap volume the container mounts
/// written to `dir` as one file per key (what the kubelet does) and mounted read-only at its mount
/// path; the environment with the downward-API fields filled in; the container's security context
/// and memory limit. The image's own user stays in force (the tests compare it with the pod's).
fn pod_options(objects: &[Value], workload: &Value, dir: &Path) -> Vec<String> {
    let pod = &workload["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let mut options = Vec::new();
    for mount in container["volumeMounts"].as_array().unwrap() {
        let volume = mounted_volume(pod, mount);
        let Some(config_map) = volume["configMap"]["name"].as_str() else {
            continue; // devices, secrets and state are not needed to check the configuration
        };
        let data = objects
            .iter()
            .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == config_map)
            .unwrap_or_else(|| panic!("no ConfigMap {config_map}"))["data"]
            .as_object()
            .unwrap();
        let host = dir.join(config_map);
        std::fs::create_dir_all(&host).unwrap();
        for (key, value) in data {
            std::fs::write(host.join(key), value.as_str().unwrap()).unwrap();
        }
        options.push(format!(
            "--volume={}:{}:ro",
            host.display(),
            mount["mountPath"].as_str().unwrap()
        ));
    }
    let namespace = workload["metadata"]["namespace"].as_str().unwrap();
    for var in container["env"].as_array().into_iter().flatten() {
        let name = var["name"].as_str().unwrap();
        let value = match (
            var["value"].as_str(),
            var["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
        ) {
            (Some(value), _) => value.to_string(),
            (None, Some("metadata.name")) => {
                format!("{}-0", workload["metadata"]["name"].as_str().unwrap())
            }
            (None, Some("metadata.namespace")) => namespace.to_string(),
            (None, Some("spec.nodeName")) => "node-0".to_string(),
            other => panic!("env {name}: no stand-in for {other:?}"),
        };
        options.push(format!("--env={name}={value}"));
    }
    let security = &container["securityContext"];
    if security["readOnlyRootFilesystem"] == true {
        options.push("--read-only".into());
    }
    if security["allowPrivilegeEscalation"] == false {
        options.push("--security-opt=no-new-privileges".into());
    }
    if texts(&security["capabilities"]["drop"]).contains(&"ALL") {
        options.push("--cap-drop=all".into());
    }
    if let Some(memory) = container["resources"]["limits"]["memory"].as_str() {
        let mib = memory.strip_suffix("Mi").expect("memory limit in Mi");
        options.push(format!("--memory={mib}m"));
    }
    options
}

/// The container's arguments (`--config=…` and the rest), then `extra`.
fn pod_args<'a>(workload: &'a Value, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = texts(&workload["spec"]["template"]["spec"]["containers"][0]["args"]);
    assert!(args.iter().any(|a| a.starts_with("--config=")), "{args:?}");
    args.extend_from_slice(extra);
    args
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn both_images_report_the_workspace_version() {
    let images = images().unwrap();
    for (image, binary) in [
        (&images.agent, "wattwise-agent"),
        (&images.scheduler, "wattwise-scheduler"),
    ] {
        let out = images::run(image, &[], &["--version"]).unwrap();
        assert!(out.status.success(), "{image}: {}", text(&out));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("{binary} {}", env!("CARGO_PKG_VERSION")),
            "{image}"
        );
    }
}

#[test]
fn the_agent_image_carries_the_models_and_passes_the_deploy_configuration() {
    let images = images().unwrap();
    let objects = manifest("agent.yaml");
    let daemon_set = object(&objects, "DaemonSet");
    let dir = tempfile::tempdir().unwrap();
    let options = pod_options(&objects, daemon_set, dir.path());

    // Every shipped model is in the image, byte for byte (sha256sum here and in the image).
    let shipped: Vec<PathBuf> = std::fs::read_dir(repo_dir().join("models"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "onnx"))
        .collect();
    let sums = |out: Output| -> BTreeMap<String, String> {
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| {
                let (sum, path) = l.split_once("  ").unwrap();
                let name = Path::new(path).file_name().unwrap().to_str().unwrap();
                (name.to_string(), sum.to_string())
            })
            .collect()
    };
    let want = sums(Command::new("sha256sum").args(&shipped).output().unwrap());
    assert!(want.contains_key("generic.onnx"), "{want:?}");
    let in_image: Vec<String> = want
        .keys()
        .map(|name| format!("{MODEL_DIR}/{name}"))
        .collect();
    let in_image: Vec<&str> = in_image.iter().map(String::as_str).collect();
    let mut sha_options = vec!["--entrypoint=sha256sum".to_string()];
    sha_options.extend(options.iter().cloned());
    let got = sums(images::run(&images.agent, &sha_options, &in_image).unwrap());
    assert_eq!(got, want, "the models in {MODEL_DIR}");

    // The ConfigMap's configuration, mounted as the DaemonSet mounts it, loads the model that
    // model.path names from inside the image: the agent could start.
    let out = images::run(
        &images.agent,
        &options,
        &pod_args(daemon_set, &["--check-config"]),
    )
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "configuration is valid (power model {MODEL_DIR}/generic.onnx"
        )),
        "{}",
        text(&out)
    );

    // A model the image does not have fails the check, naming the file.
    let absent = format!("{MODEL_DIR}/absent.onnx");
    let out = images::run(
        &images.agent,
        &options,
        &pod_args(daemon_set, &["--check-config", "--model", &absent]),
    )
    .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&absent), "{}", text(&out));
}

#[test]
fn the_scheduler_image_runs_as_non_root_and_passes_the_deploy_configuration() {
    let images = images().unwrap();
    let objects = manifest("scheduler.yaml");
    let deployment = object(&objects, "Deployment");
    let dir = tempfile::tempdir().unwrap();
    let options = pod_options(&objects, deployment, dir.path());

    // The image's user is the one the Deployment names, and it is not root.
    let user = images::config(&images.scheduler).unwrap()["User"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let pod_security = &deployment["spec"]["template"]["spec"]["securityContext"];
    assert_eq!(pod_security["runAsNonRoot"], true);
    assert_eq!(
        user,
        format!(
            "{}:{}",
            pod_security["runAsUser"], pod_security["runAsGroup"]
        ),
        "the image's USER"
    );
    let mut id_options = vec!["--entrypoint=id".to_string()];
    id_options.extend(options.iter().cloned());
    for (flag, want) in [
        ("-u", &pod_security["runAsUser"]),
        ("-g", &pod_security["runAsGroup"]),
    ] {
        let out = images::run(&images.scheduler, &id_options, &[flag]).unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert_ne!(id, "0", "id {flag} inside the image");
        assert_eq!(id, want.to_string(), "id {flag} inside the image");
    }

    // The ConfigMap's configuration, mounted as the Deployment mounts it, passes as that user
    // with a read-only root and no capabilities.
    let out = images::run(
        &images.scheduler,
        &options,
        &pod_args(deployment, &["--check-config"]),
    )
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("configuration is valid"),
        "{}",
        text(&out)
    );

    // A typo'd key in the mounted file fails, naming the key.
    let config = dir
        .path()
        .join(
            object(&objects, "ConfigMap")["metadata"]["name"]
                .as_str()
                .unwrap(),
        )
        .join("scheduler.yaml");
    let yaml = std::fs::read_to_string(&config).unwrap();
    assert!(yaml.contains("repeat_after:"));
    std::fs::write(&config, yaml.replace("repeat_after:", "repeat_afterr:")).unwrap();
    let out = images::run(
        &images.scheduler,
        &options,
        &pod_args(deployment, &["--check-config"]),
    )
    .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("repeat_afterr"), "{}", text(&out));
}

/// `1.91` or `1.89.0` as comparable numbers.
fn rust_version(text: &str) -> (u32, u32, u32) {
    let mut parts = text.split('.').map(|p| p.parse::<u32>().unwrap());
    let mut next = || parts.next().unwrap_or(0);
    (next(), next(), next())
}

/// What a user's `docker build` with default arguments compiles with (both Dockerfiles'
/// `RUST_IMAGE`, a public rust image) is new enough for every locked dependency, and the
/// workspace's `rust-version` says so: the offline build here uses the host's toolchain, so only
/// this comparison would notice a dependency that needs a newer Rust than the default image has.
#[test]
fn the_default_rust_image_is_new_enough_for_the_locked_dependencies() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version=1", "--offline", "--locked"])
        .arg("--filter-platform=x86_64-unknown-linux-gnu")
        .current_dir(repo_dir())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let metadata: Value = serde_json::from_slice(&out.stdout).unwrap();
    let resolved: Vec<&Value> = metadata["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|node| &node["id"])
        .collect();
    let packages: Vec<&Value> = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| resolved.contains(&&p["id"]))
        .collect();
    let (needed, by) = packages
        .iter()
        .filter(|p| p["source"].is_string())
        .filter_map(|p| {
            Some((
                rust_version(p["rust_version"].as_str()?),
                p["name"].as_str()?,
            ))
        })
        .max()
        .unwrap();
    assert!(
        needed >= (1, 70, 0),
        "dependencies declare rust-version: {needed:?}"
    );
    for member in packages.iter().filter(|p| p["source"].is_null()) {
        let declared = rust_version(member["rust_version"].as_str().unwrap());
        assert!(
            declared >= needed,
            "{} declares rust-version {declared:?}; {by} needs {needed:?}",
            member["name"]
        );
    }
    for dockerfile in ["Dockerfile.agent", "Dockerfile.scheduler"] {
        let text = std::fs::read_to_string(repo_dir().join(dockerfile)).unwrap();
        let image = text
            .lines()
            .find_map(|l| l.strip_prefix("ARG RUST_IMAGE="))
            .unwrap_or_else(|| panic!("{dockerfile} has no RUST_IMAGE default"));
        let tag = image.rsplit_once(":").unwrap().1;
        let version = rust_version(tag.split('-').next().unwrap());
        assert!(
            version >= needed,
            "{dockerfile}: {image} is Rust {version:?}; {by} needs {needed:?}"
        );
    }
}

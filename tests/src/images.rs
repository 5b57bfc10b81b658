//! The container images of `Dockerfile.agent` and `Dockerfile.scheduler`, built with podman from a
//! debootstrapped Debian, offline (`scripts/build-images.sh`), and run with the project's podman
//! configuration (`scripts/podman`: runc, capped ulimits, storage in the cache directory).
//!
//! Building is slow only the first time: the script keeps the base images, podman's layers and the
//! build stage's cargo target directory in the cache, and skips an image whose inputs are
//! unchanged. `scripts/test` runs it before the tests; [`images`] runs it again (once per test
//! binary), which then only confirms the images are current.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};

use crate::process::require_program;

/// The built images, as `localhost/<name>:<hash of their inputs>`.
#[derive(Debug, Clone)]
pub struct Images {
    pub agent: String,
    pub scheduler: String,
}

/// Longest a container may run: every command the tests run in one exits in about a second.
const RUN_TIMEOUT_SECONDS: u32 = 120;

fn repo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_path_buf()
}

/// Both images: built, or found up to date, once per test binary.
pub fn images() -> Result<&'static Images> {
    static IMAGES: OnceLock<Result<Images, String>> = OnceLock::new();
    IMAGES
        .get_or_init(|| build().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow!("{e}"))
}

fn build() -> Result<Images> {
    // What the script needs; a missing one is a failure naming scripts/install-deps.sh.
    for program in ["podman", "runc", "debootstrap"] {
        require_program(program)?;
    }
    let script = repo_dir().join("scripts/build-images.sh");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let tail: Vec<&str> = stderr.lines().rev().take(60).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "{} failed ({}):\n{}",
            script.display(),
            out.status,
            tail.join("\n")
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let image = |name: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
            .map(str::to_string)
            .with_context(|| format!("{} named no {name} image:\n{stdout}", script.display()))
    };
    Ok(Images {
        agent: image("agent")?,
        scheduler: image("scheduler")?,
    })
}

/// podman with the project's configuration and storage (`scripts/podman`).
pub fn podman() -> Command {
    Command::new(repo_dir().join("scripts/podman"))
}

/// `podman run --rm` of `image` without network and with a time limit: `options` go to podman,
/// `args` to the image's entrypoint.
pub fn run(image: &str, options: &[String], args: &[&str]) -> Result<Output> {
    let out = podman()
        .args(["run", "--rm", "--pull=never", "--network=none"])
        .arg(format!("--timeout={RUN_TIMEOUT_SECONDS}"))
        .args(options)
        .arg(image)
        .args(args)
        .output()
        .with_context(|| format!("podman run {image}"))?;
    Ok(out)
}

/// The `Config` of `image` as `podman image inspect` shows it (User, Entrypoint, Env, …).
pub fn config(image: &str) -> Result<serde_json::Value> {
    let out = podman()
        .args(["image", "inspect", image])
        .output()
        .with_context(|| format!("podman image inspect {image}"))?;
    if !out.status.success() {
        bail!(
            "podman image inspect {image}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let inspected: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(inspected[0]["Config"].clone())
}

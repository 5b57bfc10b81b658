//! The agent's in-band IPMI path (`bmc.mode: in-band`, `/dev/ipmi0` through the kernel IPMI
//! driver) on a real kernel: a qemu virtual machine (TCG software emulation, no KVM needed) boots
//! Debian's stock kernel with a KCS system interface whose BMC is an `ipmi_sim`
//! ([`Bmc::start_with_system_interface`]; qemu's `ipmi-bmc-extern` ⇄ ipmi_sim's `VM` codec). The
//! guest's init loads `ipmi_msghandler`, `ipmi_si` and `ipmi_devintf`, waits for `/dev/ipmi0`
//! and runs the real `wattwise-agent` from a per-test initramfs. The agent's gRPC and metrics
//! ports are forwarded to loopback ports on the host (qemu user-mode networking, `restrict=on`:
//! the guest reaches nothing else).
//!
//! The kernel and modules come from `scripts/fetch-guest-kernel.sh` (run by
//! `scripts/install-deps.sh`), cached under [`cache_dir`]`/guest-kernel/current`. The initramfs
//! (a newc cpio written here, uncompressed) holds static busybox, the modules, the stripped agent
//! with the shared libraries `ldd` lists, the agent's config and the test's files. qemu runs as a
//! [`ManagedProcess`]; the guest's serial console is its log ([`InBandAgent::console`]).

use std::collections::BTreeSet;
use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};

use crate::bmc::Bmc;
use crate::process::{cache_dir, free_tcp_port, require_program, ManagedProcess};
use crate::served::{scrape, workspace_binary};

/// Where the agent, its config and the test's files live in the guest.
pub const GUEST_DIR: &str = "/agent";
/// Guest ports of the agent (forwarded to free loopback ports on the host).
const GUEST_GRPC_PORT: u16 = 9101;
const GUEST_METRICS_PORT: u16 = 9100;
/// Kernel modules the init loads, in this order (cached by scripts/fetch-guest-kernel.sh).
const MODULES: [&str; 4] = ["ipmi_msghandler", "ipmi_si", "ipmi_devintf", "e1000"];
/// Console lines the init prints at its milestones.
pub const MARK_DEVICE: &str = "wattwise-guest: /dev/ipmi0 ready";
pub const MARK_NO_DEVICE: &str = "wattwise-guest: no /dev/ipmi0";
pub const MARK_AGENT: &str = "wattwise-guest: starting wattwise-agent";
pub const MARK_AGENT_EXIT: &str = "wattwise-guest: wattwise-agent exited";

/// Debian's kernel and the modules the guest needs, from the cache.
#[derive(Debug, Clone)]
pub struct GuestKernel {
    pub release: String,
    pub vmlinuz: PathBuf,
    pub modules: Vec<PathBuf>,
}

impl GuestKernel {
    /// The cached kernel, or an error naming the script that fetches it.
    pub fn cached() -> Result<Self> {
        let dir = cache_dir().join("guest-kernel").join("current");
        let missing = || {
            format!(
                "the guest kernel is not cached in {}: run scripts/fetch-guest-kernel.sh \
                 (scripts/install-deps.sh does)",
                dir.display()
            )
        };
        let release = std::fs::read_to_string(dir.join("release")).with_context(missing)?;
        let vmlinuz = dir.join("vmlinuz");
        ensure!(vmlinuz.is_file(), "{}", missing());
        let modules = MODULES
            .iter()
            .map(|m| dir.join("modules").join(format!("{m}.ko")))
            .collect::<Vec<_>>();
        for module in &modules {
            ensure!(
                module.is_file(),
                "{} is missing; {}",
                module.display(),
                missing()
            );
        }
        Ok(Self {
            release: release.trim().to_string(),
            vmlinuz,
            modules,
        })
    }
}

/// A `newc` cpio archive (the format the kernel unpacks as initramfs), written as it grows.
pub struct Cpio<W: Write> {
    out: W,
    next_inode: u32,
    dirs: BTreeSet<String>,
}

impl<W: Write> Cpio<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            next_inode: 1,
            dirs: BTreeSet::new(),
        }
    }

    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) -> Result<()> {
        let name = name.trim_start_matches('/');
        let inode = self.next_inode;
        self.next_inode += 1;
        let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
        let header = format!(
            "070701{inode:08x}{mode:08x}{uid:08x}{gid:08x}{nlink:08x}{mtime:08x}{size:08x}\
             {maj:08x}{min:08x}{rmaj:08x}{rmin:08x}{namesize:08x}{check:08x}",
            uid = 0,
            gid = 0,
            mtime = 0,
            size = data.len(),
            maj = 0,
            min = 0,
            rmaj = rdev.0,
            rmin = rdev.1,
            namesize = name.len() + 1,
            check = 0,
        );
        self.out.write_all(header.as_bytes())?;
        self.out.write_all(name.as_bytes())?;
        self.out.write_all(&[0])?;
        self.pad(110 + name.len() + 1)?;
        self.out.write_all(data)?;
        self.pad(data.len())?;
        Ok(())
    }

    fn pad(&mut self, len: usize) -> Result<()> {
        let zeros = [0u8; 3];
        self.out.write_all(&zeros[..(4 - len % 4) % 4])?;
        Ok(())
    }

    /// A directory and its missing parents.
    pub fn dir(&mut self, path: &str) -> Result<()> {
        let mut current = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            current.push('/');
            current.push_str(part);
            if self.dirs.insert(current.clone()) {
                let name = current.clone();
                self.entry(&name, 0o040755, (0, 0), &[])?;
            }
        }
        Ok(())
    }

    /// A regular file (its parent directories are added first).
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<()> {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent)?;
        }
        self.entry(path, 0o100000 | mode, (0, 0), data)
    }

    /// A character device node.
    pub fn char_device(&mut self, path: &str, major: u32, minor: u32) -> Result<()> {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent)?;
        }
        self.entry(path, 0o020600, (major, minor), &[])
    }

    /// The trailer; returns the writer.
    pub fn finish(mut self) -> Result<W> {
        self.entry("TRAILER!!!", 0, (0, 0), &[])?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// The shared libraries (and the dynamic loader) `ldd` lists for `binary`.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new(require_program("ldd")?)
        .arg(binary)
        .output()
        .context("running ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "ldd {} failed: {text}",
        binary.display()
    );
    Ok(text
        .lines()
        .filter_map(|line| {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.trim(),
                None => line.trim(),
            };
            let path = path.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// Static busybox (Debian's busybox-static) for the guest's init.
fn static_busybox() -> Result<PathBuf> {
    let busybox = require_program("busybox")?;
    let out = Command::new(require_program("ldd")?)
        .arg(&busybox)
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        text.contains("not a dynamic executable") || text.contains("statically linked"),
        "{} is not statically linked (install busybox-static: scripts/install-deps.sh): {text}",
        busybox.display()
    );
    Ok(busybox)
}

/// The guest's `/init`.
fn init_script() -> String {
    let modules = MODULES.join(" ");
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /tmp
echo "wattwise-guest: kernel $(uname -r)"
for m in {modules}; do
  insmod /modules/$m.ko || echo "wattwise-guest: insmod $m failed"
done
# devtmpfs creates /dev/ipmi0 once ipmi_devintf sees the interface; mknod from /proc/devices if not.
i=0
while [ ! -c /dev/ipmi0 ] && [ $i -lt 100 ]; do
  major=$(awk '$2 == "ipmidev" {{ print $1 }}' /proc/devices)
  if [ -n "$major" ] && [ -e /sys/class/ipmi/ipmi0 ]; then mknod /dev/ipmi0 c "$major" 0; fi
  sleep 0.1
  i=$((i + 1))
done
dmesg | grep -i ipmi
if [ ! -c /dev/ipmi0 ]; then
  echo "{no_device}"
  poweroff -f
fi
echo "{device}"
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
cd {dir}
echo "{agent}"
NO_COLOR=1 RUST_LOG=info,wattwise_agent=debug {dir}/wattwise-agent --config {dir}/config.yaml
echo "{agent_exit} with $?"
poweroff -f
"#,
        no_device = MARK_NO_DEVICE,
        device = MARK_DEVICE,
        agent = MARK_AGENT,
        agent_exit = MARK_AGENT_EXIT,
        dir = GUEST_DIR,
    )
}

/// Builds the initramfs at `path`: busybox, modules, the stripped agent and its libraries,
/// `config_yaml` as `/agent/config.yaml`, and `files` (guest name → host path) under `/agent/`.
fn build_initramfs(
    path: &Path,
    kernel: &GuestKernel,
    agent: &Path,
    work: &Path,
    config_yaml: &str,
    files: &[(&str, &Path)],
) -> Result<()> {
    let stripped = work.join("wattwise-agent");
    let out = Command::new(require_program("strip")?)
        .arg("-o")
        .arg(&stripped)
        .arg(agent)
        .output()
        .context("running strip")?;
    ensure!(
        out.status.success(),
        "strip {} failed: {}",
        agent.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut cpio = Cpio::new(BufWriter::new(std::fs::File::create(path)?));
    for dir in [
        "/bin", "/dev", "/proc", "/sys", "/tmp", "/modules", GUEST_DIR,
    ] {
        cpio.dir(dir)?;
    }
    cpio.char_device("/dev/console", 5, 1)?;
    cpio.file("/init", 0o755, init_script().as_bytes())?;
    cpio.file("/bin/busybox", 0o755, &std::fs::read(static_busybox()?)?)?;
    for (name, module) in MODULES.iter().zip(&kernel.modules) {
        cpio.file(
            &format!("/modules/{name}.ko"),
            0o644,
            &std::fs::read(module)?,
        )?;
    }
    for lib in shared_libraries(agent)? {
        let data = std::fs::read(&lib).with_context(|| format!("reading {}", lib.display()))?;
        cpio.file(&lib.to_string_lossy(), 0o755, &data)?;
    }
    cpio.file(
        &format!("{GUEST_DIR}/wattwise-agent"),
        0o755,
        &std::fs::read(&stripped)?,
    )?;
    std::fs::remove_file(&stripped)?;
    let config = format!(
        "{config_yaml}\ngrpc: {{listen: \"0.0.0.0:{GUEST_GRPC_PORT}\"}}\n\
         metrics: {{listen: \"0.0.0.0:{GUEST_METRICS_PORT}\"}}\n"
    );
    cpio.file(
        &format!("{GUEST_DIR}/config.yaml"),
        0o644,
        config.as_bytes(),
    )?;
    for (name, host) in files {
        ensure!(
            !name.contains('/') && !name.is_empty(),
            "guest file name {name:?} must be a plain name"
        );
        let data = std::fs::read(host).with_context(|| format!("reading {}", host.display()))?;
        cpio.file(&format!("{GUEST_DIR}/{name}"), 0o644, &data)?;
    }
    cpio.finish()?;
    Ok(())
}

/// The real `wattwise-agent` in a qemu guest reading `bmc` in-band; the VM is stopped on drop.
pub struct InBandAgent {
    process: ManagedProcess,
    grpc: SocketAddr,
    metrics: SocketAddr,
    http: reqwest::Client,
    kernel: GuestKernel,
    dir: tempfile::TempDir,
}

impl InBandAgent {
    /// Boots a guest whose KCS interface reaches `bmc` (started with
    /// [`Bmc::start_with_system_interface`]) and runs the agent with `config_yaml` (listen
    /// addresses are added; paths in it refer to the guest, e.g. `/agent/model.onnx` for a file
    /// given as `("model.onnx", host_path)` in `files`). Waits until the agent answers `/readyz`.
    pub async fn start(bmc: &Bmc, config_yaml: &str, files: &[(&str, &Path)]) -> Result<Self> {
        let vm_port = bmc.vm_port().context(
            "the BMC has no system interface for qemu: start it with Bmc::start_with_system_interface",
        )?;
        let qemu = require_program("qemu-system-x86_64")?;
        let kernel = GuestKernel::cached()?;
        let agent = workspace_binary("wattwise-agent")?;
        let dir = tempfile::Builder::new()
            .prefix("wattwise-inband-")
            .tempdir()?;
        let initramfs = dir.path().join("initramfs.cpio");
        build_initramfs(&initramfs, &kernel, &agent, dir.path(), config_yaml, files)?;
        let grpc: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()?).parse()?;
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()?).parse()?;
        let mut cmd = Command::new(qemu);
        cmd.args(["-machine", "pc", "-accel", "tcg", "-m", "1024", "-smp", "1"])
            .args(["-nodefaults", "-display", "none", "-monitor", "none"])
            .args(["-serial", "stdio", "-no-reboot"])
            .arg("-kernel")
            .arg(&kernel.vmlinuz)
            .arg("-initrd")
            .arg(&initramfs)
            .args(["-append", "console=ttyS0 panic=-1 quiet"])
            .arg("-chardev")
            .arg(format!(
                "socket,id=ipmichr,host=127.0.0.1,port={vm_port},reconnect=1"
            ))
            .args(["-device", "ipmi-bmc-extern,id=bmc0,chardev=ipmichr"])
            .args(["-device", "isa-ipmi-kcs,bmc=bmc0"])
            .arg("-netdev")
            .arg(format!(
                "user,id=net0,restrict=on,\
                 hostfwd=tcp:{grpc}-10.0.2.15:{GUEST_GRPC_PORT},\
                 hostfwd=tcp:{metrics}-10.0.2.15:{GUEST_METRICS_PORT}"
            ))
            // No option ROM: nothing boots from the network, and ipxe-qemu is not needed.
            .args(["-device", "e1000,netdev=net0,romfile="]);
        let process = ManagedProcess::spawn("qemu", cmd, dir.path())?;
        let mut guest = Self {
            process,
            grpc,
            metrics,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
            kernel,
            dir,
        };
        guest.wait_ready(Duration::from_secs(240)).await?;
        Ok(guest)
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let url = format!("http://{}/readyz", self.metrics);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let console = self.console();
            if console.contains(MARK_NO_DEVICE) || console.contains(MARK_AGENT_EXIT) {
                bail!(
                    "the guest failed before the agent was ready; console:\n{}",
                    self.console_tail(80)
                );
            }
            if console.contains(MARK_AGENT) {
                if let Ok(r) = self.http.get(&url).send().await {
                    if r.status().is_success() {
                        return Ok(());
                    }
                }
            }
            if !self.process.is_running() {
                bail!(
                    "qemu exited before the agent was ready; console:\n{}",
                    self.console_tail(80)
                );
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "the agent in the guest was not ready within {timeout:?}; console:\n{}",
                    self.console_tail(80)
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The guest kernel that runs.
    pub fn kernel(&self) -> &GuestKernel {
        &self.kernel
    }

    /// The agent's gRPC address, forwarded to the host.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc
    }

    /// The agent's metrics/health address, forwarded to the host.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics
    }

    /// Everything the guest printed on its serial console (kernel, init, agent log), and qemu's
    /// own messages.
    pub fn console(&self) -> String {
        std::fs::read_to_string(self.process.log_path()).unwrap_or_default()
    }

    pub fn console_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }

    /// The host directory holding the initramfs and the console log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// The agent's `/metrics` exposition.
    pub async fn metrics_text(&self) -> Result<String> {
        scrape(&self.http, self.metrics).await
    }

    /// Stops the VM (SIGTERM to qemu, which exits at once).
    pub fn stop(&mut self) {
        self.process.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_entries_are_newc_with_parents_padding_and_trailer() {
        let mut cpio = Cpio::new(Vec::new());
        cpio.file("/a/b/c", 0o644, b"hello").unwrap();
        cpio.char_device("/dev/console", 5, 1).unwrap();
        let bytes = cpio.finish().unwrap();
        let text = String::from_utf8_lossy(&bytes);
        let names: Vec<&str> = text
            .match_indices("070701")
            .map(|(i, _)| {
                let namesize = usize::from_str_radix(&text[i + 94..i + 102], 16).unwrap();
                &text[i + 110..i + 110 + namesize - 1]
            })
            .collect();
        assert_eq!(
            names,
            ["a", "a/b", "a/b/c", "dev", "dev/console", "TRAILER!!!"]
        );
        assert_eq!(bytes.len() % 4, 0);
        let file = text.find("a/b/c\0").unwrap();
        // Header + name (6 bytes with NUL) padded to a multiple of 4, then the data.
        let data_at = (file + 6).div_ceil(4) * 4;
        assert_eq!(&bytes[data_at..data_at + 5], b"hello");
    }

    #[test]
    fn ldd_lists_the_loader_and_libc() {
        let libs = shared_libraries(Path::new("/bin/sh")).unwrap();
        assert!(
            libs.iter().any(|l| l.to_string_lossy().contains("libc.so")),
            "{libs:?}"
        );
        assert!(
            libs.iter()
                .any(|l| l.to_string_lossy().contains("ld-linux")),
            "{libs:?}"
        );
    }
}

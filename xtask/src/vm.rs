//! Runs one command inside a throw-away QEMU VM booted on a stock Debian kernel (the
//! kernel matrix), the way aya runs its integration tests on several kernels.
//!
//! - Kernels come from Debian's `linux-image-amd64` of bookworm (6.1) and
//!   bookworm-backports (6.12), downloaded once through private apt configurations
//!   (the system's sources stay as they are) and unpacked with `dpkg-deb -x` into
//!   `$RAMA_CACHE/vm` — never installed as the host's kernel. Their modules are
//!   decompressed once: loading `.ko.xz` under emulation is slow.
//! - The guest sees the host's root filesystem read-only over virtio-9p under a tmpfs
//!   overlay, so the binaries built on the host run unchanged and every path is
//!   writable (discarded at power-off); `--share` is a host directory mounted
//!   read-write at the same path, for results.
//! - Software emulation (TCG) on the `microvm` machine: `/dev/kvm` exists on these
//!   machines but guests crash under it. microvm has no timer the kernel can calibrate
//!   the TSC against under TCG, so the host's TSC rate goes on the command line.
//! - The guest's command writes to the first virtio console (our stdout, or a log
//!   file), its exit code to the second; the kernel log goes to a file shown on
//!   failure. No exit code from the guest is a failure, never a pass.
use std::{
    fmt::Write as _,
    fs,
    io::Read as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{bootstrap, kube, run};

/// The Debian kernels of the matrix: (name, suite).
pub const KERNELS: [(&str, &str); 2] = [("6.1", "bookworm"), ("6.12", "bookworm-backports")];

/// What the runner needs on the host.
const PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "kmod",
    "xz-utils",
    "zstd",
    "cpio",
];

/// Modules the initramfs loads to reach the root filesystem (with their
/// dependencies); everything else is loaded by modprobe inside, from the kernel's own
/// module tree bound over /lib/modules.
const BOOT_MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_console",
    "9pnet_virtio",
    "9p",
    "overlay",
];

fn base() -> PathBuf {
    kube::cache_dir().join("vm")
}

fn kernel_dir(name: &str) -> PathBuf {
    base().join("kernels").join(name)
}

/// Installs the runner's packages and fetches the kernels that are not cached.
pub fn setup() -> Result<()> {
    bootstrap::ensure_packages(PACKAGES)?;
    for (name, suite) in KERNELS {
        let dir = kernel_dir(name);
        if dir.join("ready").exists() {
            continue;
        }
        let deb = download(suite)?;
        unpack(&deb, &dir)?;
        fs::write(dir.join("ready"), deb.display().to_string())?;
        eprintln!("vm: kernel {name} ready in {}", dir.display());
    }
    Ok(())
}

/// Downloads `linux-image-amd64`'s current kernel package of `suite`.
fn download(suite: &str) -> Result<PathBuf> {
    let apt = base().join("apt").join(suite);
    let opts = kube::private_apt(
        &apt,
        &format!("deb {} {suite} main", kube::debian_mirror()?),
    )?;
    let depends = Command::new("apt-cache")
        .args(&opts)
        .args(["depends", "linux-image-amd64"])
        .output()
        .context("apt-cache depends")?;
    let text = String::from_utf8_lossy(&depends.stdout);
    let package = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .with_context(|| format!("no kernel package behind linux-image-amd64 in {suite}"))?
        .to_owned();
    let debs = apt.join("debs");
    fs::create_dir_all(&debs)?;
    run(Command::new("apt-get")
        .current_dir(&debs)
        .args(&opts)
        .args(["download", &package]))?;
    fs::read_dir(&debs)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{package}_")))
        })
        .with_context(|| format!("{package} was not downloaded into {}", debs.display()))
}

fn unpack(deb: &Path, dir: &Path) -> Result<()> {
    fs::remove_dir_all(dir).ok();
    fs::create_dir_all(dir)?;
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(dir))?;
    // Decompressed once here rather than at every modprobe under emulation.
    run(Command::new("sh").arg("-c").arg(format!(
        "find '{}/lib/modules' -name '*.ko.xz' -print0 | xargs -0 -r -n 100 -P 2 xz -d",
        dir.display()
    )))?;
    let version = version(dir)?;
    run(Command::new("depmod").arg("-b").arg(dir).arg(&version))
}

/// The kernel release of an unpacked kernel (its module directory's name).
fn version(dir: &Path) -> Result<String> {
    fs::read_dir(dir.join("lib/modules"))
        .with_context(|| {
            format!(
                "no kernel unpacked in {} (cargo xtask vm setup)",
                dir.display()
            )
        })?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .with_context(|| format!("{}/lib/modules is empty", dir.display()))
}

/// The uncompressed kernel (an ELF booted through its PVH entry: no decompressor run
/// under emulation), cut out of vmlinuz once.
fn vmlinux(dir: &Path, version: &str) -> Result<PathBuf> {
    let out = base().join("cache").join(format!("vmlinux-{version}"));
    if out.exists() {
        return Ok(out);
    }
    fs::create_dir_all(out.parent().context("cache dir")?)?;
    let image =
        fs::read(dir.join("boot").join(format!("vmlinuz-{version}"))).context("reading vmlinuz")?;
    let formats: [(&[u8], &str); 3] = [
        (b"\x28\xb5\x2f\xfd", "zstd"),
        (b"\xfd7zXZ\x00", "xz"),
        (b"\x1f\x8b\x08", "gzip"),
    ];
    for (magic, tool) in formats {
        let mut at = 0;
        while let Some(i) = find(&image[at..], magic).map(|i| i + at) {
            at = i + 1;
            let mut child = Command::new(tool)
                .args(["-qdc"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .with_context(|| format!("starting {tool}"))?;
            let mut stdin = child.stdin.take().context("stdin")?;
            let payload = image[i..].to_vec();
            let writer = std::thread::spawn(move || {
                use std::io::Write as _;
                let _ = stdin.write_all(&payload);
            });
            let mut elf = Vec::new();
            child
                .stdout
                .take()
                .context("stdout")?
                .read_to_end(&mut elf)?;
            let _ = child.wait();
            let _ = writer.join();
            if elf.starts_with(b"\x7fELF") {
                let tmp = out.with_extension("tmp");
                fs::write(&tmp, &elf)?;
                fs::rename(&tmp, &out)?;
                return Ok(out);
            }
        }
    }
    bail!("no compressed ELF kernel found inside vmlinuz-{version}")
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The first stage, in the initramfs: load the modules that reach the root, mount the
/// host's root read-only under a tmpfs overlay, the kernel's own module tree over
/// /lib/modules, and switch to it. /tmp stays the host's (under the overlay): a
/// checkout there must be visible to the command. `vm.ctl=` names the run's control directory.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mkdir -p /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t devtmpfs dev /dev
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sys /sys
fail() { echo "rama-vm init: $*"; sleep 1; poweroff -f; }
for a in $(cat /proc/cmdline); do case $a in vm.ctl=*) CTL=${a#vm.ctl=} ;; esac; done
[ -n "$CTL" ] || fail "no vm.ctl= on the kernel command line"
for m in $(cat /modules/order); do insmod /modules/$m || fail "insmod $m"; done
O=trans=virtio,version=9p2000.L,msize=512000
mount -t 9p -o $O,ro,cache=loose hostroot /lower || fail "mounting the host root over 9p"
mount -t tmpfs -o mode=755 rw /rw
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot \
    || fail "mounting the overlay root"
R=/newroot
. "$R$CTL/config"
mount --move /dev $R/dev
mount --move /proc $R/proc
mount --move /sys $R/sys
mount -t tmpfs -o mode=755,nosuid,nodev run $R/run
mkdir -p $R/run/vm $R/dev/pts $R/dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts $R/dev/pts
mount -t tmpfs -o nosuid,nodev shm $R/dev/shm
mount -t bpf -o mode=700 bpf $R/sys/fs/bpf
mount -t cgroup2 cgroup2 $R/sys/fs/cgroup
mount -t debugfs debugfs $R/sys/kernel/debug 2>/dev/null
mount -t tracefs tracefs $R/sys/kernel/tracing 2>/dev/null
if [ -n "$VM_SHARE" ]; then
    mkdir -p "$R$VM_SHARE"
    mount -t 9p -o $O vmshare "$R$VM_SHARE" || fail "mounting the share over 9p"
fi
K=$(uname -r)
mkdir -p $R/lib/modules/$K
mount --bind "$R$VM_KDIR/lib/modules/$K" $R/lib/modules/$K || fail "binding the modules"
cp /bin/busybox $R/run/vm/busybox
hostname rama-vm
ip link set lo up
exec switch_root $R /run/vm/busybox sh "$CTL/stage2"
"#;

/// The second stage, on the real root: run the command with its output on hvc0, its
/// exit code on hvc1, then power off.
const STAGE2: &str = r#"export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb LANG=C.UTF-8
CTL=$(dirname "$0")
. "$CTL/config"
export VM_SHARE
# Held open for the whole run: the virtio console resets its settings on last close.
exec 3<>/dev/hvc0
/run/vm/busybox stty -onlcr <&3 2>/dev/null
if cd "$VM_CWD"; then
    /bin/bash "$CTL/cmd" </dev/null >&3 2>&3 3>&-
    echo "rc=$?" >/dev/hvc1
else
    echo "rama-vm: the working directory $VM_CWD is not visible in the guest" >&3
    echo "rc=125" >/dev/hvc1
fi
sync
/run/vm/busybox poweroff -f
"#;

/// The initramfs of `version`: busybox and the boot modules (cached per kernel and
/// per content of the init script).
fn initramfs(dir: &Path, version: &str) -> Result<PathBuf> {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hash::hash(&(INIT, BOOT_MODULES), &mut hasher);
    let key = std::hash::Hasher::finish(&hasher);
    let out = base()
        .join("cache")
        .join(format!("initramfs-{version}-{key:016x}.cpio"));
    if out.exists() {
        return Ok(out);
    }
    let stage = base().join("cache").join(format!("stage-{version}"));
    fs::remove_dir_all(&stage).ok();
    for d in [
        "bin", "dev", "proc", "sys", "lower", "rw", "newroot", "modules",
    ] {
        fs::create_dir_all(stage.join(d))?;
    }
    fs::copy("/bin/busybox", stage.join("bin/busybox")).context("busybox-static")?;
    let mut order = String::new();
    let mut seen = std::collections::HashSet::new();
    for module in BOOT_MODULES {
        let deps = Command::new("modprobe")
            .arg("-d")
            .arg(dir)
            .args(["-S", version, "--show-depends", module])
            .output()
            .context("modprobe --show-depends")?;
        if !deps.status.success() {
            bail!(
                "module {module} of kernel {version}: {}",
                String::from_utf8_lossy(&deps.stderr).trim()
            );
        }
        for line in String::from_utf8_lossy(&deps.stdout).lines() {
            // "insmod /path/x.ko" for modules; "builtin x" for built-in ones.
            let Some(path) = line.strip_prefix("insmod ") else {
                continue;
            };
            let path = Path::new(path.trim());
            let name = path
                .file_name()
                .context("module file name")?
                .to_string_lossy()
                .into_owned();
            if seen.insert(name.clone()) {
                fs::copy(path, stage.join("modules").join(&name))?;
                writeln!(order, "{name}")?;
            }
        }
    }
    fs::write(stage.join("modules/order"), order)?;
    fs::write(stage.join("init"), INIT)?;
    run(Command::new("chmod").arg("+x").arg(stage.join("init")))?;
    run(Command::new("mknod")
        .arg(stage.join("dev/console"))
        .args(["c", "5", "1"]))?;
    let tmp = out.with_extension("tmp");
    run(Command::new("sh")
        .current_dir(&stage)
        .arg("-c")
        .arg(format!(
            "find . | cpio -o -H newc --quiet > '{}'",
            tmp.display()
        )))?;
    fs::rename(&tmp, &out)?;
    fs::remove_dir_all(&stage).ok();
    Ok(out)
}

/// The host's TSC rate in kHz, for `tsc_early_khz=` (see the module comment).
fn tsc_khz() -> Result<u64> {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo")?;
    let mhz: f64 = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("cpu MHz"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|v| v.trim().parse().ok())
        .context("no 'cpu MHz' in /proc/cpuinfo")?;
    Ok((mhz * 1000.0) as u64)
}

/// How to run a command in a VM.
pub struct Options {
    /// A kernel of [`KERNELS`], by name.
    pub kernel: String,
    pub memory: String,
    pub cpus: u32,
    pub timeout: Duration,
    /// A host directory mounted read-write at the same path inside.
    pub share: Option<PathBuf>,
    /// Where the command's output goes (inherited stdout when None).
    pub log: Option<PathBuf>,
}

/// Boots the kernel, runs `command` (with its arguments, in the current directory) and
/// powers off; the command's exit code. A VM that gives no exit code (did not boot,
/// crashed, timed out) is an error carrying the tail of the kernel log.
pub fn run_in_vm(opts: &Options, command: &[String]) -> Result<i32> {
    if command.is_empty() {
        bail!("no command to run in the VM");
    }
    let dir = kernel_dir(&opts.kernel);
    if !KERNELS.iter().any(|(name, _)| *name == opts.kernel) {
        bail!(
            "unknown kernel {:?}: the matrix has {}",
            opts.kernel,
            KERNELS.map(|k| k.0).join(", ")
        );
    }
    if !dir.join("ready").exists() {
        bail!(
            "kernel {} is not fetched (cargo xtask vm setup)",
            opts.kernel
        );
    }
    let version = version(&dir)?;
    let kernel = vmlinux(&dir, &version)?;
    let initrd = initramfs(&dir, &version)?;

    let runs = base().join("runs");
    fs::create_dir_all(&runs)?;
    // Unique per run: the kernel matrix runs VMs side by side, tests too.
    static RUN: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let ctl = runs.join(format!(
        "run-{}-{}-{}",
        std::process::id(),
        RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        opts.kernel
    ));
    fs::remove_dir_all(&ctl).ok();
    fs::create_dir_all(&ctl)?;
    let _cleanup = RemoveOnDrop(ctl.clone());
    let share = match &opts.share {
        Some(s) => {
            fs::create_dir_all(s)?;
            Some(fs::canonicalize(s)?)
        }
        None => None,
    };
    let cwd = std::env::current_dir()?;
    fs::write(
        ctl.join("config"),
        format!(
            "VM_CWD={}\nVM_SHARE={}\nVM_KDIR={}\n",
            shell_quote(&cwd.to_string_lossy()),
            shell_quote(
                &share
                    .as_ref()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default()
            ),
            shell_quote(&dir.to_string_lossy()),
        ),
    )?;
    let line: Vec<String> = command.iter().map(|a| shell_quote(a)).collect();
    fs::write(ctl.join("cmd"), format!("{}\n", line.join(" ")))?;
    fs::write(ctl.join("stage2"), STAGE2)?;
    let rc_file = ctl.join("rc");
    let console = ctl.join("console.log");
    fs::write(&rc_file, "")?;

    let append = format!(
        "console=ttyS0 quiet loglevel=3 panic=-1 mitigations=off cryptomgr.notests \
         initcall_blacklist=jent_mod_init i8042.noaux i8042.nokbd i8042.nopnp \
         tsc_early_khz={} vm.ctl={}",
        tsc_khz()?,
        ctl.display()
    );
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-accel", "tcg,thread=single", "-cpu", "max"])
        .args(["-M", "microvm,x-option-roms=off,rtc=on"])
        .args(["-smp", &opts.cpus.to_string(), "-m", &opts.memory])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", &append])
        .args(["-chardev", "stdio,id=out,signal=off"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .args(["-device", "virtio-serial-device,id=vser"])
        .args(["-device", "virtconsole,bus=vser.0,chardev=out"])
        .arg("-chardev")
        .arg(format!("file,id=rc,path={}", rc_file.display()))
        .args(["-device", "virtconsole,bus=vser.0,chardev=rc"])
        .args([
            "-fsdev",
            "local,id=root,path=/,security_model=none,readonly=on,multidevs=remap",
        ])
        .args(["-device", "virtio-9p-device,fsdev=root,mount_tag=hostroot"])
        .stdin(Stdio::null());
    if let Some(share) = &share {
        qemu.arg("-fsdev")
            .arg(format!(
                "local,id=share,path={},security_model=none",
                share.display()
            ))
            .args(["-device", "virtio-9p-device,fsdev=share,mount_tag=vmshare"]);
    }
    if let Some(log) = &opts.log {
        let file = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        qemu.stdout(file.try_clone()?).stderr(file);
    }
    let mut child = qemu.spawn().context("starting qemu-system-x86_64")?;
    let deadline = Instant::now() + opts.timeout;
    let exited = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            // Our own child, by handle.
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let rc = fs::read_to_string(&rc_file).unwrap_or_default();
    if let Some(code) = rc
        .lines()
        .filter_map(|l| l.trim().strip_prefix("rc="))
        .filter_map(|c| c.parse::<i32>().ok())
        .next_back()
    {
        return Ok(code);
    }
    // Kept for a look: the guest's whole kernel log.
    let kept = runs.join(format!("last-failed-console-{}.log", opts.kernel));
    fs::copy(&console, &kept).ok();
    let log = fs::read_to_string(&console).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(40).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    let why = match exited {
        None => format!("timed out after {:?}", opts.timeout),
        Some(status) => format!("ended without reporting an exit code (qemu: {status})"),
    };
    bail!(
        "the VM on kernel {} {why}; kernel log (whole: {}):\n{}",
        opts.kernel,
        kept.display(),
        tail.join("\n")
    )
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        fs::remove_dir_all(&self.0).ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `kernel` is fetched; says why the test does nothing when it is not
    /// (`cargo xtask test` fetches the kernels before running the tests).
    fn fetched(kernel: &str) -> bool {
        let ready = kernel_dir(kernel).join("ready").exists();
        if !ready {
            eprintln!("SKIP: kernel {kernel} is not fetched (cargo xtask vm setup)");
        }
        ready
    }

    fn options(kernel: &str) -> Options {
        Options {
            kernel: kernel.into(),
            memory: "512M".into(),
            cpus: 1,
            timeout: Duration::from_secs(120),
            share: None,
            log: None,
        }
    }

    fn command(line: &str) -> Vec<String> {
        vec!["sh".into(), "-c".into(), line.into()]
    }

    #[test]
    fn an_unknown_kernel_is_named_with_the_ones_there_are() {
        let e = run_in_vm(&options("5.10"), &command("true")).unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains(r#"unknown kernel "5.10""#), "{msg}");
        assert!(msg.contains("6.1, 6.12"), "{msg}");
    }

    #[test]
    fn no_command_is_an_error() {
        let e = run_in_vm(&options("6.12"), &[]).unwrap_err();
        assert!(format!("{e:#}").contains("no command"), "{e:#}");
    }

    #[test]
    fn the_guests_output_and_exit_code_come_back() {
        if !fetched("6.12") {
            return;
        }
        let dir = std::env::temp_dir().join(format!("rama-vm-test-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("scratch dir");
        let log = dir.join("out.log");
        let opts = Options {
            share: Some(dir.clone()),
            log: Some(log.clone()),
            ..options("6.12")
        };
        let line = format!(
            "echo booted $(uname -r) in $(pwd); echo written > {}/from-guest; exit 7",
            dir.display()
        );
        let code = run_in_vm(&opts, &command(&line));
        let out = fs::read_to_string(&log).unwrap_or_default();
        let shared = fs::read_to_string(dir.join("from-guest")).unwrap_or_default();
        fs::remove_dir_all(&dir).ok();
        assert_eq!(code.expect("the VM ran"), 7, "{out}");
        assert!(out.contains("booted 6.12"), "{out}");
        let cwd = std::env::current_dir().expect("cwd");
        assert!(
            out.contains(&format!("in {}", cwd.display())),
            "the command runs in the caller's directory: {out}"
        );
        assert_eq!(
            shared.trim(),
            "written",
            "the share is writable from inside"
        );
    }

    #[test]
    fn a_vm_that_does_not_finish_in_time_is_stopped_and_fails() {
        if !fetched("6.1") {
            return;
        }
        let opts = Options {
            timeout: Duration::from_secs(1),
            ..options("6.1")
        };
        let started = Instant::now();
        let e = run_in_vm(&opts, &command("sleep 600")).unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("timed out after 1s"), "{msg}");
        assert!(started.elapsed() < Duration::from_secs(60), "not stopped");
        assert!(
            base().join("runs/last-failed-console-6.1.log").exists(),
            "the console is kept"
        );
    }

    #[test]
    fn a_kernel_that_cannot_boot_fails_loudly_with_its_log() {
        if !fetched("6.12") {
            return;
        }
        // Too little memory: 6.12 panics early (and with panic=-1 and -no-reboot,
        // qemu exits) before any command runs. (Kernels differ here; 6.1 hangs,
        // which the timeout test covers.)
        let opts = Options {
            memory: "64M".into(),
            ..options("6.12")
        };
        let e = run_in_vm(&opts, &command("exit 0")).unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("ended without reporting an exit code"),
            "{msg}"
        );
        assert!(
            msg.contains("Kernel panic"),
            "the kernel log is shown: {msg}"
        );
    }
}

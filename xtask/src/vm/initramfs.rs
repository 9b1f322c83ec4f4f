//! The VM's whole userland as one initramfs: busybox, iproute2, the test binaries, faultd and
//! faultctl with their shared libraries, the kernel modules, and an `/init` that runs the
//! tests and powers off. Written as a cpio "newc" archive, uncompressed: the emulated CPU
//! boots it about 2 s sooner than the same archive gzip-compressed.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

/// Lines `/init` prints around everything else on the console, for [`super::report`].
pub const MARK: &str = "@@vm-test";

/// What follows the marker in a console line, if it has one (the firmware's output may
/// precede it on the first line).
pub fn marker(line: &str) -> Option<&str> {
    line.find(MARK).map(|at| &line[at + MARK.len()..])
}

enum Entry {
    Dir,
    File { source: Source, mode: u32 },
    Symlink(String),
}

enum Source {
    Path(PathBuf),
    Bytes(Vec<u8>),
}

/// An archive being put together: absolute paths inside the VM → what is there.
#[derive(Default)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

impl Archive {
    fn key(path: &str) -> String {
        path.trim_matches('/').to_string()
    }

    pub fn dir(&mut self, path: &str) {
        let key = Self::key(path);
        let mut prefix = String::new();
        for part in key.split('/').filter(|p| !p.is_empty()) {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            self.entries.entry(prefix.clone()).or_insert(Entry::Dir);
        }
    }

    fn parent(&mut self, key: &str) {
        if let Some((parent, _)) = key.rsplit_once('/') {
            self.dir(parent);
        }
    }

    pub fn file(&mut self, path: &str, source: &Path, mode: u32) {
        let key = Self::key(path);
        self.parent(&key);
        self.entries.insert(
            key,
            Entry::File {
                source: Source::Path(source.to_path_buf()),
                mode,
            },
        );
    }

    pub fn bytes(&mut self, path: &str, data: impl Into<Vec<u8>>, mode: u32) {
        let key = Self::key(path);
        self.parent(&key);
        self.entries.insert(
            key,
            Entry::File {
                source: Source::Bytes(data.into()),
                mode,
            },
        );
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        let key = Self::key(path);
        self.parent(&key);
        self.entries.insert(key, Entry::Symlink(target.to_string()));
    }

    pub fn contains(&self, path: &str) -> bool {
        self.entries.contains_key(&Self::key(path))
    }

    /// An executable at `path`, plus the dynamic loader and every shared library `ldd` names
    /// for it, at the paths `ldd` names (the loader's default search path).
    pub fn program(&mut self, path: &str, source: &Path) -> anyhow::Result<()> {
        self.file(path, source, 0o755);
        for lib in shared_libraries(source)? {
            let lib_path = lib.to_string_lossy().into_owned();
            if !self.contains(&lib_path) {
                self.file(&lib_path, &lib, 0o755);
            }
        }
        Ok(())
    }

    /// Writes the archive as cpio (newc), the format the kernel unpacks.
    pub fn write(&self, out: &Path) -> anyhow::Result<u64> {
        let tmp = out.with_extension("tmp");
        let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut w = BufWriter::new(file);
        let mut cpio = Cpio::default();
        for (name, entry) in &self.entries {
            match entry {
                Entry::Dir => cpio.entry(&mut w, name, 0o040_755, &[])?,
                Entry::Symlink(target) => {
                    cpio.entry(&mut w, name, 0o120_777, target.as_bytes())?;
                }
                Entry::File { source, mode } => {
                    let data = match source {
                        Source::Bytes(b) => std::borrow::Cow::Borrowed(b.as_slice()),
                        Source::Path(p) => std::borrow::Cow::Owned(
                            fs::read(p).with_context(|| format!("reading {}", p.display()))?,
                        ),
                    };
                    cpio.entry(&mut w, name, 0o100_000 | mode, &data)?;
                }
            }
        }
        cpio.trailer(&mut w)?;
        w.flush()?;
        fs::rename(&tmp, out)?;
        Ok(fs::metadata(out)?.len())
    }
}

/// The cpio "newc" (SVR4, no CRC) format: a 110-byte ASCII header, the NUL-terminated name
/// and the data, each padded to 4 bytes.
#[derive(Default)]
struct Cpio {
    ino: u32,
    offset: u64,
}

impl Cpio {
    fn entry(&mut self, w: &mut impl Write, name: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        self.ino += 1;
        let nlink = if mode & 0o170_000 == 0o040_000 { 2 } else { 1 };
        let size = u32::try_from(data.len())
            .map_err(|_| io::Error::other(format!("{name} is too large for cpio")))?;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            nlink,
            0,
            size,
            0,
            0,
            0,
            0,
            (name.len() + 1) as u32,
            0,
        ];
        let mut header = String::from("070701");
        for f in fields {
            header.push_str(&format!("{f:08X}"));
        }
        self.put(w, header.as_bytes())?;
        self.put(w, name.as_bytes())?;
        self.put(w, &[0])?;
        self.pad(w)?;
        self.put(w, data)?;
        self.pad(w)
    }

    fn trailer(&mut self, w: &mut impl Write) -> io::Result<()> {
        self.ino = 0;
        self.entry(w, "TRAILER!!!", 0, &[])?;
        // The kernel reads the archive in 512-byte blocks, like cpio writes it.
        let rest = (512 - self.offset % 512) % 512;
        self.put(w, &vec![0; rest as usize])
    }

    fn put(&mut self, w: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
        self.offset += bytes.len() as u64;
        w.write_all(bytes)
    }

    fn pad(&mut self, w: &mut impl Write) -> io::Result<()> {
        let rest = (4 - self.offset % 4) % 4;
        self.put(w, &[0; 3][..rest as usize])
    }
}

/// The loader and libraries `ldd` lists for a dynamic executable (none for a static one).
fn shared_libraries(program: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(program)
        .output()
        .context("ldd (from libc-bin)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        if text.contains("not a dynamic executable")
            || String::from_utf8_lossy(&out.stderr).contains("not a dynamic executable")
        {
            return Ok(Vec::new());
        }
        bail!(
            "ldd {}: {}",
            program.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        if line.contains("not found") {
            bail!("ldd {}: {}", program.display(), line.trim());
        }
        if let Some(path) = line.split_whitespace().find(|t| t.starts_with('/')) {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

/// A copy of `source` without debug information in `stage`, redone only when `source` is
/// newer: the debug builds' DWARF would make the archive hundreds of megabytes, which the
/// emulated CPU then has to unpack.
pub fn stripped(source: &Path, stage: &Path) -> anyhow::Result<PathBuf> {
    fs::create_dir_all(stage)?;
    let name = source
        .file_name()
        .context("a program without a file name")?;
    let out = stage.join(name);
    let newer = |a: &Path, b: &Path| -> bool {
        let m = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
        match (m(a), m(b)) {
            (Some(a), Some(b)) => a > b,
            _ => true,
        }
    };
    if !out.exists() || newer(source, &out) {
        let status = Command::new("strip")
            .arg("--strip-debug")
            .arg("-o")
            .arg(&out)
            .arg(source)
            .status()
            .context("strip (from binutils)")?;
        if !status.success() {
            bail!("strip --strip-debug {} failed", source.display());
        }
        fs::set_permissions(&out, fs::Permissions::from_mode(0o755))?;
    }
    Ok(out)
}

/// Busybox (static) at /bin/busybox and a link for each of its applets, except the applets
/// named in `real`, whose full versions the archive carries.
pub fn busybox(archive: &mut Archive, real: &[&str]) -> anyhow::Result<()> {
    let busybox = Path::new("/bin/busybox");
    let out = Command::new(busybox)
        .arg("--list-full")
        .output()
        .context("busybox (the busybox-static package)")?;
    if !out.status.success() {
        bail!("busybox --list-full failed");
    }
    if !shared_libraries(busybox)?.is_empty() {
        bail!("/bin/busybox is not static: install busybox-static");
    }
    archive.file("/bin/busybox", busybox, 0o755);
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        let name = applet.rsplit('/').next().unwrap_or(applet);
        if applet.is_empty() || name == "busybox" || real.contains(&name) {
            continue;
        }
        archive.symlink(&format!("/{applet}"), "/bin/busybox");
    }
    Ok(())
}

/// One test binary for `/init` to run.
pub struct TestRun {
    pub name: String,
    /// Where the binary is inside the VM.
    pub path: String,
    /// libtest's arguments (`--test-threads=1 --nocapture`, and the area's filter).
    pub args: String,
}

pub struct Init<'a> {
    pub modules: &'a [String],
    pub tests: &'a [TestRun],
    /// The test binaries' working directory (cargo runs them in their package's directory).
    pub workdir: &'a str,
    pub test_timeout_secs: u64,
    /// How long the tests wait for faultd to be ready (`FAULTD_TEST_READY_SECS`).
    pub ready_secs: u64,
}

/// The VM's `/init`: mounts, modules, loopback, then each test binary between markers, then
/// power off. Every marker line starts with [`MARK`].
pub fn init_script(init: &Init<'_>) -> String {
    let ready = init.ready_secs;
    let mut s = format!(
        r#"#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TMPDIR=/tmp RUST_BACKTRACE=1 NO_COLOR=1
# The emulated CPU is 10-30 times slower: give faultd's start-up (the verifier) more time.
export FAULTD_TEST_READY_SECS={ready}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run
mount -t bpf bpf /sys/fs/bpf
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
# Keep the kernel's messages off the console the results are read from.
echo 1 > /proc/sys/kernel/printk
ulimit -l unlimited
ip link set lo up
echo "{MARK} kernel $(uname -r)"
"#
    );
    for m in init.modules {
        let name = m.rsplit('/').next().unwrap_or(m);
        s.push_str(&format!(
            "insmod {m} || echo \"{MARK} module-failed {name}\"\n"
        ));
    }
    s.push_str(&format!(
        "echo \"{MARK} booted $(cut -d' ' -f1 /proc/uptime)\"\ncd {}\n",
        init.workdir
    ));
    for t in init.tests {
        s.push_str(&format!(
            "echo \"{MARK} begin {name}\"\n\
             timeout -s KILL {secs} {path} {args} 2>&1\n\
             echo \"{MARK} end {name} $?\"\n",
            name = t.name,
            path = t.path,
            args = t.args,
            secs = init.test_timeout_secs,
        ));
    }
    s.push_str(&format!(
        "echo \"{MARK} done $(cut -d' ' -f1 /proc/uptime)\"\npoweroff -f\n"
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_entries_are_padded_to_four_bytes() {
        let mut out = Vec::new();
        let mut cpio = Cpio::default();
        cpio.entry(&mut out, "init", 0o100_755, b"#!/bin/sh\n")
            .unwrap();
        // header 110 + "init\0" 5 = 115 → 116; data 10 → 12.
        assert_eq!(out.len(), 116 + 12);
        assert!(out.starts_with(b"07070100000001000081ED"));
        assert_eq!(&out[110..115], b"init\0");
        cpio.trailer(&mut out).unwrap();
        assert_eq!(out.len() % 512, 0);
    }

    #[test]
    fn parents_come_before_their_children() {
        let mut a = Archive::default();
        a.bytes("/usr/bin/x", b"x".to_vec(), 0o755);
        a.symlink("/var/run", "/run");
        let names: Vec<&String> = a.entries.keys().collect();
        assert_eq!(names, ["usr", "usr/bin", "usr/bin/x", "var", "var/run"]);
    }
}

//! Debian's 6.1 kernel for the VM: the `linux-image-6.1.0-NN-amd64` package, downloaded with
//! apt and extracted under `target/vm/`, plus the modules the tests need in load order.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

/// Modules the VM loads, with whatever they depend on: veth pairs and bridges (the tests'
/// interfaces), clsact (where faultd's TC programs attach without TCX, which 6.1 lacks) with
/// its `bpf` classifier, and the `fq` qdisc that delay and paced rate need (plus netem);
/// `tun` for a multi-queue tap (a NIC with an `mq` root) and `sch_tbf` for a configured
/// root qdisc, in the qdisc tests.
pub const MODULES: &[&str] = &[
    "veth",
    "bridge",
    "sch_ingress",
    "cls_bpf",
    "sch_fq",
    "sch_netem",
    "sch_tbf",
    "tun",
];

pub struct Kernel {
    /// `uname -r` inside the VM, e.g. `6.1.0-56-amd64`.
    pub release: String,
    pub package: String,
    /// What qemu boots: the uncompressed ELF `vmlinux` where the kernel has a PVH entry point,
    /// else the `vmlinuz` itself.
    pub image: PathBuf,
    /// Module files (uncompressed `.ko`) in the order `insmod` must load them.
    pub modules: Vec<PathBuf>,
}

/// Downloads (once) and extracts the newest Debian 6.1 kernel apt knows of.
pub fn fetch(vm_dir: &Path) -> anyhow::Result<Kernel> {
    let dir = vm_dir.join("kernels");
    fs::create_dir_all(&dir)?;
    let abi = match newest_abi()? {
        Some(abi) => abi,
        None => match cached_abis(&dir).last() {
            Some(abi) => *abi,
            None => {
                // A fresh machine: apt has no package lists yet.
                crate::vm::loud(Command::new("apt-get").args(["update", "-qq"]))?;
                newest_abi()?.context("apt knows no linux-image-6.1.0-NN-amd64 package")?
            }
        },
    };
    let release = format!("6.1.0-{abi}-amd64");
    let root = dir.join(&release);
    let stamp = root.join(".extracted");
    let package = format!("linux-image-{release}");
    if !stamp.exists() {
        let deb = download(&dir, &package)?;
        eprintln!("xtask: extracting {}", deb.display());
        let _ = fs::remove_dir_all(&root);
        crate::vm::loud(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
        fs::write(&stamp, b"")?;
        // The extracted tree is all we need from now on.
        fs::remove_file(&deb).ok();
    }
    let vmlinuz = root.join(format!("boot/vmlinuz-{release}"));
    if !vmlinuz.exists() {
        bail!("{} has no {}", package, vmlinuz.display());
    }
    let image = match vmlinux(&vmlinuz, &root.join(format!("boot/config-{release}"))) {
        Ok(Some(vmlinux)) => vmlinux,
        Ok(None) => vmlinuz,
        Err(e) => {
            eprintln!("xtask: booting the compressed kernel: {e:#}");
            vmlinuz
        }
    };
    let modules = resolve_modules(&root.join(format!("lib/modules/{release}")), MODULES)?;
    Ok(Kernel {
        release,
        package,
        image,
        modules,
    })
}

/// The kernel decompressing itself takes the emulated CPU about 10 s: where the kernel has a
/// PVH entry point (`CONFIG_PVH`), qemu boots the ELF inside the `vmlinuz` directly, and this
/// extracts it once, as the kernel's `scripts/extract-vmlinux` does.
fn vmlinux(vmlinuz: &Path, config: &Path) -> anyhow::Result<Option<PathBuf>> {
    let pvh = fs::read_to_string(config)
        .unwrap_or_default()
        .lines()
        .any(|l| l == "CONFIG_PVH=y");
    if !pvh {
        return Ok(None);
    }
    let out = vmlinuz.with_file_name("vmlinux");
    if out.exists() {
        return Ok(Some(out));
    }
    let image = fs::read(vmlinuz)?;
    const FORMATS: &[(&[u8], &str, &[&str])] = &[
        (b"\xfd7zXZ\x00", "xz", &["-dc", "--single-stream"]),
        (b"\x28\xb5\x2f\xfd", "zstd", &["-dcq"]),
        (b"\x1f\x8b\x08", "gzip", &["-dcq"]),
    ];
    for (magic, tool, args) in FORMATS {
        let Some(at) = image.windows(magic.len()).position(|w| w == *magic) else {
            continue;
        };
        let mut child = Command::new(tool)
            .args(*args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("{tool} (decompressing the kernel)"))?;
        let mut stdin = child.stdin.take().unwrap();
        let data = image[at..].to_vec();
        // Trailing bytes after the stream make the tool complain: its output is what counts.
        let writer = std::thread::spawn(move || {
            let _ = std::io::Write::write_all(&mut stdin, &data);
        });
        let result = child.wait_with_output()?;
        let _ = writer.join();
        if result.stdout.starts_with(b"\x7fELF") {
            let tmp = out.with_extension("tmp");
            fs::write(&tmp, &result.stdout)?;
            fs::rename(&tmp, &out)?;
            return Ok(Some(out));
        }
    }
    bail!("found no compressed ELF kernel in {}", vmlinuz.display())
}

/// The largest NN of `linux-image-6.1.0-NN-amd64` in apt's lists, if any.
fn newest_abi() -> anyhow::Result<Option<u32>> {
    let out = Command::new("apt-cache")
        .args([
            "search",
            "--names-only",
            r"^linux-image-6\.1\.0-[0-9]+-amd64",
        ])
        .output()
        .context("apt-cache (Debian's kernel package is fetched with apt)")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|name| {
            let abi = name.strip_prefix("linux-image-6.1.0-")?;
            let abi = abi
                .strip_suffix("-amd64")
                .or_else(|| abi.strip_suffix("-amd64-unsigned"))?;
            abi.parse().ok()
        })
        .max())
}

fn cached_abis(dir: &Path) -> Vec<u32> {
    let mut abis: Vec<u32> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join(".extracted").exists())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix("6.1.0-")?
                .strip_suffix("-amd64")?
                .parse()
                .ok()
        })
        .collect();
    abis.sort_unstable();
    abis
}

/// `apt-get download` into `dir`: the signed package, else the unsigned one (both hold the
/// kernel image and its modules).
fn download(dir: &Path, package: &str) -> anyhow::Result<PathBuf> {
    for name in [package.to_string(), format!("{package}-unsigned")] {
        eprintln!("xtask: apt-get download {name}");
        let mut cmd = Command::new("apt-get");
        cmd.arg("download").arg("-qq").current_dir(dir);
        if crate::is_root() {
            // apt's sandbox user cannot write into target/; root downloads directly.
            cmd.args(["-o", "APT::Sandbox::User=root"]);
        }
        if cmd.arg(&name).status().is_ok_and(|s| s.success()) {
            let deb = fs::read_dir(dir)?
                .flatten()
                .map(|e| e.path())
                .find(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&format!("{name}_")) && n.ends_with(".deb"))
                })
                .with_context(|| format!("apt-get download {name} left no .deb"))?;
            return Ok(deb);
        }
    }
    bail!("could not download {package} with apt-get")
}

/// The files of `wanted` and of every module they depend on (from each module's own
/// `depends=` modinfo, as depmod reads it), dependencies first. Modules built into the kernel
/// are left out; compressed modules are decompressed next to the tree.
pub fn resolve_modules(modules_dir: &Path, wanted: &[&str]) -> anyhow::Result<Vec<PathBuf>> {
    let builtin: BTreeSet<String> = fs::read_to_string(modules_dir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| module_name(Path::new(l)))
        .collect();
    let mut index = BTreeMap::new();
    index_modules(&modules_dir.join("kernel"), &mut index)?;
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    for name in wanted {
        visit(
            &normalize(name),
            &index,
            &builtin,
            &mut seen,
            &mut order,
            &mut Vec::new(),
        )?;
    }
    Ok(order)
}

fn visit(
    name: &str,
    index: &BTreeMap<String, PathBuf>,
    builtin: &BTreeSet<String>,
    seen: &mut BTreeSet<String>,
    order: &mut Vec<PathBuf>,
    stack: &mut Vec<String>,
) -> anyhow::Result<()> {
    if seen.contains(name) || builtin.contains(name) {
        return Ok(());
    }
    if stack.iter().any(|s| s == name) {
        bail!("module dependency cycle: {} -> {name}", stack.join(" -> "));
    }
    let file = index
        .get(name)
        .with_context(|| format!("kernel module {name} is neither built in nor a module"))?;
    let ko = uncompressed(file)?;
    stack.push(name.to_string());
    for dep in depends(&fs::read(&ko)?) {
        visit(&dep, index, builtin, seen, order, stack)?;
    }
    stack.pop();
    seen.insert(name.to_string());
    order.push(ko);
    Ok(())
}

fn index_modules(dir: &Path, index: &mut BTreeMap<String, PathBuf>) -> anyhow::Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            index_modules(&path, index)?;
        } else if let Some(name) = module_name(&path) {
            index.insert(name, path);
        }
    }
    Ok(())
}

/// `kernel/net/sched/sch_fq.ko.xz` → `sch_fq` (module names use `_` where files may use `-`).
fn module_name(path: &Path) -> Option<String> {
    let file = path.file_name()?.to_str()?;
    let stem = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|ext| file.strip_suffix(ext))?;
    Some(normalize(stem))
}

fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// The module's `depends=` list from its `.modinfo` strings.
fn depends(ko: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(start) = ko.windows(KEY.len()).position(|w| w == KEY) else {
        return Vec::new();
    };
    let value = &ko[start + KEY.len()..];
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end])
        .split(',')
        .filter(|d| !d.is_empty())
        .map(normalize)
        .collect()
}

/// The path of an uncompressed copy of a module (the module itself when it is not compressed).
fn uncompressed(file: &Path) -> anyhow::Result<PathBuf> {
    let name = file.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        "xz"
    } else if name.ends_with(".zst") {
        "zstd"
    } else if name.ends_with(".gz") {
        "gzip"
    } else {
        return Ok(file.to_path_buf());
    };
    let out_path = file.with_extension("");
    if !out_path.exists() {
        let out = Command::new(tool)
            .arg("-dc")
            .arg(file)
            .output()
            .with_context(|| format!("{tool} -dc {}", file.display()))?;
        if !out.status.success() {
            bail!(
                "{tool} -dc {}: {}",
                file.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        fs::write(&out_path, out.stdout)?;
    }
    Ok(out_path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_depends_from_modinfo() {
        let ko = b"\x7fELF junk\0license=GPL\0depends=nf_conntrack,nf-defrag-ipv6\0intree=Y\0";
        assert_eq!(depends(ko), ["nf_conntrack", "nf_defrag_ipv6"]);
        assert!(depends(b"\0depends=\0name=veth\0").is_empty());
        assert!(depends(b"no modinfo").is_empty());
    }

    #[test]
    fn names_modules_like_depmod() {
        assert_eq!(
            module_name(Path::new("kernel/net/sched/sch_fq.ko.xz")).as_deref(),
            Some("sch_fq")
        );
        assert_eq!(
            module_name(Path::new("kernel/drivers/net/veth.ko")).as_deref(),
            Some("veth")
        );
        assert_eq!(module_name(Path::new("modules.dep")), None);
    }

    #[test]
    fn orders_dependencies_first() {
        let dir = std::env::temp_dir().join(format!("xtask-modules-{}", std::process::id()));
        let kernel = dir.join("kernel/net");
        fs::create_dir_all(&kernel).unwrap();
        fs::write(kernel.join("a.ko"), b"\0depends=b,c\0").unwrap();
        fs::write(kernel.join("b.ko"), b"\0depends=c\0").unwrap();
        fs::write(kernel.join("c.ko"), b"\0depends=\0").unwrap();
        fs::write(kernel.join("d.ko"), b"\0depends=e\0").unwrap();
        fs::write(dir.join("modules.builtin"), "kernel/net/e.ko\n").unwrap();
        let order = resolve_modules(&dir, &["a", "d"]).unwrap();
        let names: Vec<String> = order.iter().filter_map(|p| module_name(p)).collect();
        assert_eq!(names, ["c", "b", "a", "d"]);
        fs::remove_dir_all(&dir).unwrap();
    }
}

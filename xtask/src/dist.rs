//! `cargo xtask dist`: the release tarball `faultd-<version>-x86_64-linux.tar.gz` and its
//! `.sha256`, in target/dist/.
//!
//! The binaries are static (musl), so they run on a machine or container with no Rust, no
//! LLVM and no libc of the right version; faultd carries its eBPF object inside, as always.
//! The tarball is reproducible: the same commit gives the same bytes, wherever it is checked
//! out. The binaries are built with every build path remapped to a fixed one
//! (`--remap-path-prefix` for Rust through a RUSTC_WRAPPER, which also reaches the eBPF
//! build; `-ffile-prefix-map` for ring's C), and the archive has sorted entries, every mtime at
//! SOURCE_DATE_EPOCH (the last commit's time unless set), owner and group 0 and a gzip
//! header without name or time.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

pub const TARGET: &str = "x86_64-unknown-linux-musl";
/// Where every build path is remapped to, in the binaries.
const REMAPPED_SOURCE: &str = "/faultd";
const REMAPPED_CARGO_HOME: &str = "/cargo";
const REMAPPED_RUSTUP_HOME: &str = "/rustup";

#[derive(clap::Args, Debug, Default)]
pub struct Options {
    /// Reuse the previous dist build: cargo rebuilds only what changed (seconds when
    /// nothing did). Without it the build starts from an empty target directory, as a
    /// release should, which takes minutes.
    #[arg(long)]
    pub quick: bool,
}

/// What `cargo xtask dist` made.
pub struct Dist {
    pub tarball: PathBuf,
    /// The directory the tarball unpacks into (`faultd-<version>-x86_64-linux`).
    pub name: String,
}

pub fn run(opts: &Options) -> anyhow::Result<Dist> {
    crate::setup::dist()?;
    let root = crate::workspace_root();
    let out = root.join("target/dist");
    let cargo_target = out.join("cargo");
    if !opts.quick && cargo_target.exists() {
        eprintln!("xtask: dist: a build from scratch (--quick reuses the last one)");
        fs::remove_dir_all(&cargo_target)
            .with_context(|| format!("removing {}", cargo_target.display()))?;
    }
    let epoch = source_date_epoch(&root)?;
    build(&root, &cargo_target)?;
    let bin = cargo_target.join(TARGET).join("release");

    let name = format!("faultd-{}-x86_64-linux", env!("CARGO_PKG_VERSION"));
    let stage = out.join("stage").join(&name);
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    }
    populate(&root, &bin, &stage)?;
    let tarball = out.join(format!("{name}.tar.gz"));
    pack(&stage, &tarball, epoch)?;
    let sha256 = write_sha256(&tarball)?;
    eprintln!("xtask: dist: {} sha256 {sha256}", tarball.display());
    Ok(Dist { tarball, name })
}

/// SOURCE_DATE_EPOCH when set (the reproducible-builds convention), else the time of the
/// last commit: every file in the tarball carries it, so two builds of one commit agree.
fn source_date_epoch(root: &Path) -> anyhow::Result<u64> {
    if let Ok(value) = std::env::var("SOURCE_DATE_EPOCH") {
        return value
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={value:?} is not a number of seconds"));
    }
    let out = test_harness::run(
        Command::new("git")
            .args(["log", "-1", "--format=%ct"])
            .current_dir(root),
    )
    .context("the last commit's time (set SOURCE_DATE_EPOCH outside a git checkout)")?;
    out.trim()
        .parse()
        .with_context(|| format!("git log printed {out:?}, not a time"))
}

/// The static release binaries, with every path that could end up in them remapped.
fn build(root: &Path, target_dir: &Path) -> anyhow::Result<()> {
    let home = PathBuf::from(std::env::var("HOME").unwrap_or_default());
    let cargo_home =
        std::env::var("CARGO_HOME").map_or_else(|_| home.join(".cargo"), PathBuf::from);
    let rustup_home =
        std::env::var("RUSTUP_HOME").map_or_else(|_| home.join(".rustup"), PathBuf::from);
    // rustc uses the last prefix that matches: the checkout last, so that it wins where it
    // lies inside one of the others.
    let remaps = [
        (rustup_home, REMAPPED_RUSTUP_HOME),
        (cargo_home, REMAPPED_CARGO_HOME),
        (root.to_path_buf(), REMAPPED_SOURCE),
    ];
    let wrapper = write_rustc_wrapper(target_dir, &remaps)?;
    let cflags: Vec<String> = remaps
        .iter()
        .map(|(from, to)| format!("-ffile-prefix-map={}={to}", from.display()))
        .collect();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--locked", "--target", TARGET])
        .args([
            "--package",
            "fault-daemon",
            "--package",
            "faultctl",
            "--bins",
        ])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(root)
        // A wrapper rather than RUSTFLAGS: aya-build's own cargo build of the eBPF programs
        // sets its compiler flags itself (the object's BTF names source files), but runs
        // rustc through the same RUSTC_WRAPPER.
        .env("RUSTC_WRAPPER", &wrapper)
        .env(
            format!("CFLAGS_{}", TARGET.replace('-', "_")),
            cflags.join(" "),
        )
        // Fixed, not the commit's time: cc makes every C build depend on it, so each new
        // commit would rebuild ring and all above it. The binaries carry no date.
        .env("SOURCE_DATE_EPOCH", "0")
        .env("CARGO_INCREMENTAL", "0")
        .status()
        .context("running cargo build for the dist")?;
    if !status.success() {
        bail!("cargo build --release --target {TARGET} failed ({status})");
    }
    Ok(())
}

/// A RUSTC_WRAPPER that runs rustc with `--remap-path-prefix` for each of `remaps`, so that
/// no path of this machine reaches the binaries (panic locations, debug info, the eBPF
/// object's BTF).
fn write_rustc_wrapper(dir: &Path, remaps: &[(PathBuf, &str)]) -> anyhow::Result<PathBuf> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut script = String::from(
        "#!/bin/sh\n# cargo xtask dist: rustc with the build paths remapped.\nrustc=\"$1\"; shift\nexec \"$rustc\" \"$@\"",
    );
    for (from, to) in remaps {
        script.push_str(&format!(" '--remap-path-prefix={}={to}'", from.display()));
    }
    script.push('\n');
    let path = dir.join("rustc-remap");
    fs::write(&path, script).with_context(|| format!("writing {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

/// The tarball's tree: binaries, systemd unit, example config, completions, man page, the
/// Dockerfile (so the unpacked directory is the image's build context), README, LICENSE.
fn populate(root: &Path, bin: &Path, stage: &Path) -> anyhow::Result<()> {
    let deploy = root.join("deploy");
    let faultctl = bin.join("faultctl");
    let files: Vec<(&str, Content, u32)> = vec![
        ("bin/faultd", Content::Copy(bin.join("faultd")), 0o755),
        ("bin/faultctl", Content::Copy(faultctl.clone()), 0o755),
        (
            "lib/systemd/system/faultd.service",
            Content::Copy(deploy.join("faultd.service")),
            0o644,
        ),
        (
            "etc/faultd/faultd.toml",
            Content::Copy(deploy.join("faultd.toml")),
            0o644,
        ),
        (
            "Dockerfile",
            Content::Copy(deploy.join("Dockerfile")),
            0o644,
        ),
        (
            "README.md",
            Content::Copy(deploy.join("dist/README.md")),
            0o644,
        ),
        ("LICENSE", Content::Copy(deploy.join("dist/LICENSE")), 0o644),
        (
            "share/man/man1/faultctl.1",
            Content::Output(&faultctl, &["man"]),
            0o644,
        ),
        (
            "share/bash-completion/completions/faultctl",
            Content::Output(&faultctl, &["completions", "bash"]),
            0o644,
        ),
        (
            "share/zsh/site-functions/_faultctl",
            Content::Output(&faultctl, &["completions", "zsh"]),
            0o644,
        ),
        (
            "share/fish/vendor_completions.d/faultctl.fish",
            Content::Output(&faultctl, &["completions", "fish"]),
            0o644,
        ),
    ];
    for (path, content, mode) in files {
        let dest = stage.join(path);
        fs::create_dir_all(dest.parent().unwrap())
            .with_context(|| format!("creating {}", dest.display()))?;
        let bytes = content.bytes()?;
        fs::write(&dest, bytes).with_context(|| format!("writing {}", dest.display()))?;
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(&dest, fs::Permissions::from_mode(mode))
            .with_context(|| format!("chmod {}", dest.display()))?;
    }
    Ok(())
}

enum Content<'a> {
    Copy(PathBuf),
    /// What the freshly built (static) faultctl prints: completions and the man page.
    Output(&'a Path, &'a [&'a str]),
}

impl Content<'_> {
    fn bytes(&self) -> anyhow::Result<Vec<u8>> {
        match self {
            Content::Copy(path) => {
                fs::read(path).with_context(|| format!("reading {}", path.display()))
            }
            Content::Output(exe, args) => {
                let out = Command::new(exe)
                    .args(*args)
                    .output()
                    .with_context(|| format!("running {} {}", exe.display(), args.join(" ")))?;
                if !out.status.success() {
                    bail!(
                        "{} {} failed ({}): {}",
                        exe.display(),
                        args.join(" "),
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    );
                }
                Ok(out.stdout)
            }
        }
    }
}

/// GNU tar and gzip with everything that varies between builds pinned: entry order, mtimes,
/// owners, modes (directories 0755; files as staged, minus group/other write) and the gzip
/// header's name and time (`-n`).
fn pack(stage: &Path, tarball: &Path, epoch: u64) -> anyhow::Result<()> {
    let parent = stage.parent().unwrap();
    let name = stage.file_name().unwrap();
    let script = format!(
        "set -o pipefail; tar --create --format=gnu --sort=name --mtime=@{epoch} \
         --owner=0 --group=0 --numeric-owner --mode=go-w,u+w \
         --directory \"$1\" \"$2\" | gzip -9 -n > \"$3\""
    );
    let status = Command::new("bash")
        .args(["-c", &script, "pack"])
        .arg(parent)
        .arg(name)
        .arg(tarball)
        .status()
        .context("running tar | gzip")?;
    if !status.success() {
        bail!("packing {} failed ({status})", tarball.display());
    }
    Ok(())
}

/// `<tarball>.sha256` in `sha256sum -c` format, next to the tarball; returns the digest.
fn write_sha256(tarball: &Path) -> anyhow::Result<String> {
    let dir = tarball.parent().unwrap();
    let file = tarball.file_name().unwrap().to_string_lossy().into_owned();
    let line = test_harness::run(Command::new("sha256sum").arg(&file).current_dir(dir))?;
    let sha256 = line
        .split_whitespace()
        .next()
        .context("sha256sum printed nothing")?
        .to_string();
    let sum_file = dir.join(format!("{file}.sha256"));
    fs::write(&sum_file, &line).with_context(|| format!("writing {}", sum_file.display()))?;
    Ok(sha256)
}

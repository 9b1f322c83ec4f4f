//! Which daemons a command talks to: `--addr` (repeatable) and `--hosts FILE`.

use std::path::Path;

use anyhow::{Context as _, bail};
use faultd_api::partition::NodeAddr;

/// The daemons' addresses, as given: every `--addr`, then the lines of `--hosts`; each
/// `ADDRESS` or `NODE_IP=ADDRESS`. Empty means "the default daemon". A file that cannot be
/// read, a file with no address, a malformed address or one given twice is bad input
/// (exit 1), found before any daemon is contacted.
pub fn from_args(addrs: &[String], hosts: Option<&Path>) -> anyhow::Result<Vec<NodeAddr>> {
    let mut nodes: Vec<NodeAddr> = Vec::new();
    for addr in addrs {
        push(&mut nodes, addr.trim(), "--addr")?;
    }
    if let Some(path) = hosts {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("--hosts {}", path.display()))?;
        let before = nodes.len();
        for (line, addr) in parse_hosts(&text) {
            push(
                &mut nodes,
                addr,
                &format!("--hosts {}:{line}", path.display()),
            )?;
        }
        if nodes.len() == before {
            bail!(
                "--hosts {}: no address in it (one per line, `#` starts a comment)",
                path.display()
            );
        }
    }
    Ok(nodes)
}

/// The addresses of a hosts file, with their line numbers: one per line; `#` starts a
/// comment; blank lines are skipped.
pub fn parse_hosts(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().filter_map(|(i, line)| {
        let addr = line.split('#').next().unwrap_or_default().trim();
        (!addr.is_empty()).then_some((i + 1, addr))
    })
}

fn push(nodes: &mut Vec<NodeAddr>, text: &str, whence: &str) -> anyhow::Result<()> {
    if text.is_empty() {
        bail!("{whence}: an empty address");
    }
    if text.split_whitespace().count() > 1 {
        bail!("{whence}: {text:?} is not one address (one per line)");
    }
    let node = NodeAddr::parse(text).map_err(|e| anyhow::anyhow!("{whence}: {e}"))?;
    if nodes.iter().any(|n| n.addr == node.addr) {
        bail!(
            "{whence}: {} is given twice; that daemon would get the request twice",
            node.addr
        );
    }
    nodes.push(node);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts_file(text: &str) -> tempfile_path::TempPath {
        tempfile_path::TempPath::with(text)
    }

    /// A file removed on drop (faultctl has no tempfile dependency).
    mod tempfile_path {
        use std::path::PathBuf;
        use std::sync::atomic::{AtomicU32, Ordering};

        pub struct TempPath(pub PathBuf);

        impl TempPath {
            pub fn with(text: &str) -> Self {
                static SEQ: AtomicU32 = AtomicU32::new(0);
                let path = std::env::temp_dir().join(format!(
                    "faultctl-hosts-{}-{}",
                    std::process::id(),
                    SEQ.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::write(&path, text).unwrap();
                Self(path)
            }
        }

        impl Drop for TempPath {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn hosts_files_have_one_address_a_line_and_comments() {
        let text = "# the etcd nodes\nunix:/run/a.sock\n\n  10.0.0.2:7447  # b\n#c\n";
        let got: Vec<_> = parse_hosts(text).collect();
        assert_eq!(got, [(2, "unix:/run/a.sock"), (4, "10.0.0.2:7447")]);
    }

    #[test]
    fn addr_flags_come_first_then_the_hosts_file() {
        let file = hosts_file("b:1\nc:1\n");
        let nodes = from_args(&["a:1".into()], Some(&file.0)).unwrap();
        let addrs: Vec<&str> = nodes.iter().map(|n| n.addr.as_str()).collect();
        assert_eq!(addrs, ["a:1", "b:1", "c:1"]);
        let with_ip = from_args(&["198.18.0.1=unix:/a".into()], None).unwrap();
        assert_eq!(with_ip[0].ip, "198.18.0.1".parse().ok());
        assert!(from_args(&[], None).unwrap().is_empty());
    }

    #[test]
    fn bad_hosts_and_repeated_addresses_are_refused_by_name() {
        let twice = from_args(&["a:1".into(), "10.0.0.1=a:1".into()], None).unwrap_err();
        assert!(
            format!("{twice:#}").contains("a:1 is given twice"),
            "{twice:#}"
        );

        let file = hosts_file("a:1\n# only a comment\nb:1 c:1\n");
        let err = format!("{:#}", from_args(&[], Some(&file.0)).unwrap_err());
        assert!(
            err.contains(":3") && err.contains("not one address"),
            "{err}"
        );

        let empty = hosts_file("# nothing\n\n");
        let err = format!("{:#}", from_args(&[], Some(&empty.0)).unwrap_err());
        assert!(err.contains("no address"), "{err}");

        let err = format!("{:#}", from_args(&["node-a=b:1".into()], None).unwrap_err());
        assert!(err.contains("not an IP address"), "{err}");

        let missing = std::path::Path::new("/nonexistent/faultd-hosts");
        let err = format!("{:#}", from_args(&[], Some(missing)).unwrap_err());
        assert!(err.contains("--hosts /nonexistent/faultd-hosts"), "{err}");
    }
}

//! A scenario: a server and a client with faultd on the server's side, over one
//! namespace's `lo` or across a veth, IPv4 or IPv6.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use serde_json::Value;

use super::*;

/// Where a scenario runs: one namespace's `lo`, or across a veth (faultd on the server's end).
pub enum Net {
    Lo(Netns),
    Veth(VethPair),
}

pub struct Scenario {
    pub net: Net,
    pub server_addr: &'static str,
    _daemon: Daemon,
}

impl Scenario {
    pub fn lo_v4(tag: &str) -> Self {
        let ns = Netns::new(tag);
        let daemon = Daemon::start(&ns, &["lo"]);
        Self {
            net: Net::Lo(ns),
            server_addr: "127.0.0.1",
            _daemon: daemon,
        }
    }

    /// One namespace's `lo`, over IPv6 (`::1`).
    pub fn lo_v6(tag: &str) -> Self {
        Self {
            server_addr: "::1",
            ..Self::lo_v4(tag)
        }
    }

    pub fn veth(tag: &str, server_addr: &'static str) -> Self {
        let pair = VethPair::new(tag);
        let daemon = Daemon::start(&pair.server, &[SERVER_IF]);
        Self {
            net: Net::Veth(pair),
            server_addr,
            _daemon: daemon,
        }
    }

    /// All three: IPv4 on lo, IPv4 and IPv6 across a veth.
    pub fn each(tag: &str, test: impl Fn(&Scenario)) {
        for s in [
            Scenario::lo_v4(&format!("{tag}l")),
            Scenario::veth(&format!("{tag}4"), SERVER_V4),
            Scenario::veth(&format!("{tag}6"), SERVER_V6),
        ] {
            eprintln!("scenario: {} {}", s.kind(), s.server_addr);
            test(&s);
        }
    }

    pub fn kind(&self) -> &str {
        match self.net {
            Net::Lo(_) => "lo",
            Net::Veth(_) => "veth",
        }
    }

    pub fn server_ns(&self) -> &Netns {
        match &self.net {
            Net::Lo(ns) => ns,
            Net::Veth(p) => &p.server,
        }
    }

    pub fn client_ns(&self) -> &Netns {
        match &self.net {
            Net::Lo(ns) => ns,
            Net::Veth(p) => &p.client,
        }
    }

    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.server_addr.parse().unwrap(), port)
    }

    pub fn listen(&self, port: u16) -> TcpListener {
        let addr = self.addr(port);
        self.server_ns().run(|| TcpListener::bind(addr).unwrap())
    }

    pub fn connect(&self, port: u16) -> std::io::Result<TcpStream> {
        let addr = self.addr(port);
        self.client_ns()
            .run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(2)))
    }

    /// An established, checked connection: (client, server).
    pub fn pair(&self, listener: &TcpListener, port: u16) -> (TcpStream, TcpStream) {
        let mut client = self.connect(port).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        client.set_nodelay(true).unwrap();
        server.set_nodelay(true).unwrap();
        echo(&mut client, &mut server, b"ping");
        (client, server)
    }

    pub fn faultctl(&self, args: &[&str]) -> String {
        self.server_ns().faultctl_ok(args)
    }

    pub fn events(&self) -> Vec<Value> {
        let text = self.faultctl(&["events", "--json"]);
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

pub fn echo(from: &mut TcpStream, to: &mut TcpStream, msg: &[u8]) {
    from.write_all(msg).unwrap();
    assert_eq!(
        read_exact_within(to, msg.len(), Duration::from_secs(5)).unwrap(),
        msg
    );
}

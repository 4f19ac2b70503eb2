//! A TCP relay a test can cut and mend: a network partition between two processes (a NATS leaf
//! node and its hub, say) without stopping either of them.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// Relays connections from a loopback port to a target address while open; cut, it drops
/// every connection it carries and refuses new ones until mended. Dropping it stops it.
pub struct Relay {
    port: u16,
    open: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Relay {
    /// Starts relaying from a free loopback port to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the relay's port");
        let port = listener.local_addr().expect("relay address").port();
        let (open, _) = watch::channel(true);
        let task = tokio::spawn(accept(listener, target, open.clone()));
        Self { port, open, task }
    }

    /// The loopback port that leads to the target.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Drops every relayed connection and refuses new ones: a partition.
    pub fn cut(&self) {
        self.open.send_replace(false);
    }

    /// Accepts connections again: the partition heals.
    pub fn mend(&self) {
        self.open.send_replace(true);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept(listener: TcpListener, target: SocketAddr, open: watch::Sender<bool>) {
    // Owned here, so aborting this task drops every connection it relays.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((inbound, _)) = accepted else { continue };
                if *open.borrow() {
                    connections.spawn(relay(inbound, target, open.subscribe()));
                }
                // Cut: the inbound socket is dropped (closed) at once.
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn relay(mut inbound: TcpStream, target: SocketAddr, mut open: watch::Receiver<bool>) {
    let Ok(mut outbound) = TcpStream::connect(target).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
        _ = open.wait_for(|open| !*open) => {}
    }
}

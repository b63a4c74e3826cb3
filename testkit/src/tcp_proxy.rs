//! A TCP proxy on a loopback port that a test can make unreachable: [`TcpProxy::stall`] stops every
//! byte in both directions (data in flight is dropped, sockets stay open, new connections are
//! accepted and never answered), like a database host that stops responding. [`TcpProxy::restore`]
//! closes every stalled connection (so the server rolls back what they had open) and forwards again.

use std::net::SocketAddr;

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The running proxy. Dropping it stops accepting; connections end when their peers close.
pub struct TcpProxy {
    addr: SocketAddr,
    stalled: watch::Sender<bool>,
    server: JoinHandle<()>,
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.server.abort();
        // Wakes held connections so they close.
        self.stalled.send_replace(false);
    }
}

impl TcpProxy {
    /// Forwards a random loopback port to `target`.
    pub async fn start(target: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let (stalled, watcher) = watch::channel(false);
        let server = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(forward(client, target, watcher.clone()));
            }
        });
        Ok(Self { addr, stalled, server })
    }

    /// The address to connect to instead of the target.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops forwarding: every connection hangs, new ones included.
    pub fn stall(&self) {
        self.stalled.send_replace(true);
    }

    /// Closes every stalled connection and forwards again.
    pub fn restore(&self) {
        self.stalled.send_replace(false);
    }
}

async fn forward(mut client: TcpStream, target: SocketAddr, mut stalled: watch::Receiver<bool>) {
    if *stalled.borrow_and_update() {
        hold(&mut stalled).await;
        return;
    }
    let Ok(mut server) = TcpStream::connect(target).await else { return };
    let cut = tokio::select! {
        _ = copy_bidirectional(&mut client, &mut server) => false,
        // Dropping the copy loses whatever it had read and not yet written, as a dead link would.
        _ = stalled.wait_for(|s| *s) => true,
    };
    if cut {
        hold(&mut stalled).await;
    }
    // Both sockets close here.
}

/// Waits (holding the caller's sockets open) until the proxy is restored or dropped.
async fn hold(stalled: &mut watch::Receiver<bool>) {
    let _ = stalled.wait_for(|s| !*s).await;
}

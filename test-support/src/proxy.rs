//! TCP proxies between a service and the real server behind it: one a test
//! can cut (a real network break, without stopping the server for others),
//! and one in front of MongoDB that holds back a chosen command (a commit
//! that lands late, a statement slower than a deadline) or renames it (a
//! server that does not know it).

use std::net::SocketAddr;

use tokio::{
    net::{TcpListener, TcpStream},
    task::JoinSet,
};

pub struct CuttableProxy {
    pub addr: SocketAddr,
    upstream: SocketAddr,
    connections: Option<tokio::task::JoinHandle<()>>,
}

impl CuttableProxy {
    /// Listens on a free 127.0.0.1 port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let mut proxy = CuttableProxy {
            addr,
            upstream,
            connections: None,
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&mut self, listener: TcpListener) {
        let upstream = self.upstream;
        self.connections = Some(tokio::spawn(async move {
            // Dropping the set (when this task is aborted) aborts every
            // connection: the cut is immediate and total.
            let mut links = JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                links.spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        }));
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&mut self) {
        if let Some(task) = self.connections.take() {
            task.abort();
        }
    }

    /// Listens again on the same port.
    pub async fn restore(&mut self) {
        let listener = TcpListener::bind(self.addr).await.expect("rebind proxy");
        self.serve(listener);
    }
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.cut();
    }
}

/// A proxy in front of MongoDB that holds back one command: each OP_MSG
/// whose command is `command` (e.g. `commitTransaction`) waits `delay`
/// before it goes on to the server, so a test can make a commit land after
/// a deadline; or, renamed, reaches the server as a command it does not
/// know (a server too old for it). Everything else, and every reply, passes
/// straight through.
/// Clients must connect with `directConnection=true`, or the driver finds
/// the real member's address and goes around it.
pub struct DelayingProxy {
    pub addr: SocketAddr,
    delay: Rule,
    held: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

/// What happens to the chosen command.
#[derive(Clone)]
enum Action {
    Hold(std::time::Duration),
    /// Sent under this name instead (as long as the real one).
    Rename(String),
}

/// OP_MSG, the only opcode the driver sends to a modern server.
const OP_MSG: i32 = 2013;

impl DelayingProxy {
    /// Listens on a free 127.0.0.1 port and forwards to `upstream`, holding
    /// nothing back until [`DelayingProxy::hold`].
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let delay = std::sync::Arc::new(std::sync::Mutex::new(None));
        let held = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (rule, count) = (delay.clone(), held.clone());
        let task = tokio::spawn(async move {
            let mut links = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let (rule, count) = (rule.clone(), count.clone());
                links.spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        let _ = relay_holding(client, server, rule, count).await;
                    }
                });
            }
        });
        DelayingProxy {
            addr,
            delay,
            held,
            task,
        }
    }

    /// From now on every `command` waits `delay` on its way to the server.
    pub fn hold(&self, command: &str, delay: std::time::Duration) {
        *self.delay.lock().expect("proxy rule") = Some((command.to_string(), Action::Hold(delay)));
    }

    /// From now on every `command` reaches the server named `to` (as long
    /// as `command`), which it answers as a command it does not know.
    pub fn rename(&self, command: &str, to: &str) {
        assert_eq!(
            command.len(),
            to.len(),
            "a rename keeps the message's length"
        );
        *self.delay.lock().expect("proxy rule") =
            Some((command.to_string(), Action::Rename(to.to_string())));
    }

    /// How many commands were held back or renamed so far.
    pub fn held(&self) -> u64 {
        self.held.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for DelayingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Rule = std::sync::Arc<std::sync::Mutex<Option<(String, Action)>>>;

/// Client to server message by message (each read whole by its length
/// prefix, held back if the rule names its command); server to client as a
/// byte stream.
async fn relay_holding(
    client: TcpStream,
    server: TcpStream,
    rule: Rule,
    held: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    let replies =
        tokio::spawn(async move { tokio::io::copy(&mut from_server, &mut to_client).await });
    let mut header = [0_u8; 4];
    loop {
        if from_client.read_exact(&mut header).await.is_err() {
            break;
        }
        let length = usize::try_from(i32::from_le_bytes(header)).unwrap_or(0);
        let mut message = vec![0_u8; length.max(4)];
        message[..4].copy_from_slice(&header);
        from_client.read_exact(&mut message[4..]).await?;
        let action = {
            let rule = rule.lock().expect("proxy rule");
            rule.as_ref()
                .filter(|(command, _)| command_of(&message).as_deref() == Some(command.as_str()))
                .map(|(_, action)| action.clone())
        };
        if let Some(action) = action {
            held.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            match action {
                Action::Hold(delay) => tokio::time::sleep(delay).await,
                // The body's first element: type byte at 25, its key at 26.
                Action::Rename(to) => {
                    if let Some(key) = message.get_mut(26..26 + to.len()) {
                        key.copy_from_slice(to.as_bytes());
                    }
                }
            }
        }
        to_server.write_all(&message).await?;
    }
    replies.abort();
    Ok(())
}

/// The command an OP_MSG carries: the first key of its body section
/// (header 16 bytes, flags 4, then section kind 0 and the body document).
fn command_of(message: &[u8]) -> Option<String> {
    let opcode = i32::from_le_bytes(message.get(12..16)?.try_into().ok()?);
    if opcode != OP_MSG || *message.get(20)? != 0 {
        return None;
    }
    let body = message.get(21..)?;
    let length = usize::try_from(i32::from_le_bytes(body.get(..4)?.try_into().ok()?)).ok()?;
    let document = mongodb::bson::RawDocument::from_bytes(body.get(..length)?).ok()?;
    let (key, _) = document.iter().next()?.ok()?;
    Some(key.to_string())
}

//! A MailTrap-like SMTP server for one test: `scripts/stack/mailtrap_like.py`
//! (aiosmtpd, installed into `.stack/venv-mailtrap` by `scripts/stack.sh up`)
//! run as a child process on free 127.0.0.1 ports.
//!
//! It keeps MailTrap's sandbox rules, which MailDev and Mailpit do not: AUTH
//! required, STARTTLS required when `tls` is on, a per-inbox rate limit
//! answered with MailTrap's `550 5.7.0 Requested action not taken: too many
//! emails per second`, at most `max_connections` authenticated connections
//! (`535 5.7.8 Too many connections per account`) and `max_messages_per_connection`
//! messages on one (`421 4.7.0 Too many messages per connection`, then it
//! hangs up). Its control API lists what it accepted and breaks it on purpose
//! (refused logins, rejected recipients, the server going away).
//!
//! Each test starts its own; dropping it kills the process (by its own PID)
//! and removes its files, except when the test is panicking: then the
//! server's log is kept and its end printed.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use serde::Deserialize;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

/// The venv's interpreter and the server, relative to the workspace root
/// (`VENV_MAILTRAP` and `MAILTRAP_SCRIPT` in `scripts/stack.sh`).
pub const PYTHON: &str = ".stack/venv-mailtrap/bin/python";
pub const SCRIPT: &str = "scripts/stack/mailtrap_like.py";

/// The only address it binds.
pub const HOST: &str = "127.0.0.1";

const START_TIMEOUT: Duration = Duration::from_secs(20);
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct MailtrapOptions {
    pub username: String,
    pub password: String,
    /// Accepted emails per `window_secs` sliding window; 0 is unlimited.
    pub rate: u32,
    pub window_secs: u32,
    /// Offer and require STARTTLS, with a certificate for `localhost` and
    /// `127.0.0.1` from a fresh CA (see [`MailtrapLike::ca_file`]).
    pub tls: bool,
    /// Authenticated connections at once; 0 is unlimited.
    pub max_connections: u32,
    /// Messages (DATA transactions answered, accepted or throttled) on one
    /// connection before its next MAIL FROM gets 421; 0 is unlimited.
    pub max_messages_per_connection: u32,
}

impl Default for MailtrapOptions {
    /// MailTrap's documented limits, without a rate limit.
    fn default() -> Self {
        MailtrapOptions {
            username: "inbox-user".to_string(),
            password: "inbox-pass".to_string(),
            rate: 0,
            window_secs: 10,
            tls: false,
            max_connections: 10,
            max_messages_per_connection: 100,
        }
    }
}

/// One message the server accepted (250 at the end of DATA).
#[derive(Debug, Clone, Deserialize)]
pub struct AcceptedMessage {
    /// The Message-ID header as sent, angle brackets included.
    pub message_id: Option<String>,
    /// The envelope sender (MAIL FROM).
    pub mail_from: String,
    /// The envelope recipients that were accepted (RCPT TO).
    pub rcpt_tos: Vec<String>,
    /// The Subject header, RFC 2047 words decoded.
    pub subject: Option<String>,
    /// The whole message as received (headers and body).
    pub data: String,
    /// Unix seconds.
    pub received_at: f64,
    /// Which SMTP connection carried it (numbered from 1 in connect order).
    #[serde(default)]
    pub connection_id: u64,
    /// Whether that connection had done STARTTLS.
    #[serde(default)]
    pub tls: bool,
}

/// Counters since the server started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Stats {
    pub accepted: u64,
    /// Messages refused with the rate limit's 550.
    pub throttled: u64,
    /// AUTH attempts refused (wrong credentials, refuse mode, too many connections).
    pub auth_refused: u64,
    /// RCPT TO answered with a reply set by [`MailtrapLike::reject_recipient`].
    pub rejected_recipients: u64,
    pub connections_total: u64,
    /// Peak of SMTP connections open at once (authenticated or not).
    pub max_concurrent_connections: u64,
    /// Most messages (DATA transactions answered) on one connection.
    pub max_messages_on_one_connection: u64,
    #[serde(default)]
    pub open_connections: u64,
    #[serde(default)]
    pub listening: bool,
}

#[derive(Deserialize)]
struct Ports {
    smtp_port: u16,
    control_port: u16,
}

pub struct MailtrapLike {
    /// `kill_on_drop`: SIGKILL to this PID when dropped. Its stdin stays
    /// open meanwhile; the server (`--stop-on-stdin-eof`) also exits when it
    /// closes, so it never outlives the test process.
    _child: Child,
    smtp_port: u16,
    control: String,
    http: reqwest::Client,
    options: MailtrapOptions,
    dir: PathBuf,
    log_path: PathBuf,
    ca_file: Option<PathBuf>,
}

impl MailtrapLike {
    /// Starts a server on free ports and waits (20 s at most) until it
    /// listens. Panics if it is not installed: tests fail, never skip.
    pub async fn start(options: MailtrapOptions) -> MailtrapLike {
        let root = crate::workspace_root();
        let python = root.join(PYTHON);
        let script = root.join(SCRIPT);
        assert!(
            python.is_file(),
            "the MailTrap-like test SMTP server is not installed: {} is missing; \
             run `scripts/stack.sh up` (or `make stack-up`), which installs it",
            python.display()
        );
        assert!(script.is_file(), "{} is missing", script.display());

        let dir = std::env::temp_dir().join(crate::unique("mailtrap"));
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("creating the temp dir {}: {e}", dir.display()));
        let ca_file = options.tls.then(|| write_certificates(&dir));
        let log_path = dir.join("server.log");
        let log = std::fs::File::create(&log_path)
            .unwrap_or_else(|e| panic!("creating {}: {e}", log_path.display()));

        let mut command = Command::new(&python);
        command
            .arg(&script)
            .args(["--host", HOST, "--port", "0", "--control-port", "0"])
            .arg("--username")
            .arg(&options.username)
            .arg("--password")
            .arg(&options.password)
            .arg("--rate")
            .arg(options.rate.to_string())
            .arg("--window-secs")
            .arg(options.window_secs.to_string())
            .arg("--max-connections")
            .arg(options.max_connections.to_string())
            .arg("--max-messages-per-connection")
            .arg(options.max_messages_per_connection.to_string())
            .arg("--stop-on-stdin-eof");
        if options.tls {
            command
                .arg("--cert")
                .arg(dir.join("server.pem"))
                .arg("--key")
                .arg(dir.join("server.key"));
        }
        let mut child = command
            .current_dir(&root)
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {} {}: {e}", python.display(), script.display()));

        let stdout = child.stdout.take().expect("the server's stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let line = match tokio::time::timeout(START_TIMEOUT, lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) => panic!(
                "the MailTrap-like server exited before listening; its log ({}):\n{}",
                log_path.display(),
                read_log(&log_path)
            ),
            Ok(Err(e)) => panic!("reading the MailTrap-like server's stdout: {e}"),
            Err(_) => panic!(
                "the MailTrap-like server did not listen within {START_TIMEOUT:?}; its log ({}):\n{}",
                log_path.display(),
                read_log(&log_path)
            ),
        };
        let ports: Ports = serde_json::from_str(&line).unwrap_or_else(|e| {
            panic!("the MailTrap-like server printed {line:?} instead of its ports: {e}")
        });

        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(CONTROL_TIMEOUT)
            .build()
            .expect("an HTTP client for the control API");
        MailtrapLike {
            _child: child,
            smtp_port: ports.smtp_port,
            control: format!("http://{HOST}:{}", ports.control_port),
            http,
            options,
            dir,
            log_path,
            ca_file,
        }
    }

    /// The address it listens on (its certificate also names `localhost`).
    pub fn host(&self) -> &'static str {
        HOST
    }

    pub fn smtp_port(&self) -> u16 {
        self.smtp_port
    }

    pub fn username(&self) -> &str {
        &self.options.username
    }

    pub fn password(&self) -> &str {
        &self.options.password
    }

    pub fn options(&self) -> &MailtrapOptions {
        &self.options
    }

    /// The PEM of the CA that signed the server's certificate (`tls: true`
    /// only): what a client must trust.
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.ca_file.clone()
    }

    /// The server's log so far: one line per SMTP event.
    pub fn log(&self) -> String {
        read_log(&self.log_path)
    }

    /// Every message accepted so far (since the last [`clear`](Self::clear)), oldest first.
    pub async fn messages(&self) -> Vec<AcceptedMessage> {
        let body = self.call(reqwest::Method::GET, "/messages", None).await;
        serde_json::from_value(body.clone())
            .unwrap_or_else(|e| panic!("GET /messages: unexpected answer ({e}): {body}"))
    }

    /// Empties the list of accepted messages (counters are kept).
    pub async fn clear(&self) {
        self.call(reqwest::Method::DELETE, "/messages", None).await;
    }

    pub async fn stats(&self) -> Stats {
        let body = self.call(reqwest::Method::GET, "/stats", None).await;
        serde_json::from_value(body.clone())
            .unwrap_or_else(|e| panic!("GET /stats: unexpected answer ({e}): {body}"))
    }

    /// From now on every AUTH, even with valid credentials, gets `reply`
    /// (a 4xx/5xx line, e.g. `535 5.7.0 Monthly messages limit reached`).
    pub async fn refuse_logins(&self, reply: &str) {
        self.call(
            reqwest::Method::POST,
            "/auth",
            Some(json!({ "refuse": true, "reply": reply })),
        )
        .await;
    }

    /// Valid credentials are accepted again.
    pub async fn accept_logins(&self) {
        self.call(
            reqwest::Method::POST,
            "/auth",
            Some(json!({ "refuse": false })),
        )
        .await;
    }

    /// RCPT TO of `rcpt` (any case) gets `reply`, e.g.
    /// `550 5.1.1 <x@y>: Recipient address rejected: User unknown`.
    pub async fn reject_recipient(&self, rcpt: &str, reply: &str) {
        self.call(
            reqwest::Method::POST,
            "/reject",
            Some(json!({ "rcpt": rcpt, "reply": reply })),
        )
        .await;
    }

    /// Stops listening and drops every open SMTP connection: connecting is
    /// refused until [`come_back`](Self::come_back).
    pub async fn go_down(&self) {
        self.call(reqwest::Method::POST, "/down", None).await;
    }

    /// Listens again, on the same port.
    pub async fn come_back(&self) {
        self.call(reqwest::Method::POST, "/up", None).await;
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.control);
        let mut request = self.http.request(method.clone(), &url);
        if let Some(body) = &body {
            request = request.json(body);
        }
        let response = request.send().await.unwrap_or_else(|e| {
            panic!(
                "{method} {url} (MailTrap-like control API): {e}\nserver log:\n{}",
                self.log()
            )
        });
        let status = response.status();
        let text = response
            .text()
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: reading the answer: {e}"));
        assert!(
            status.is_success(),
            "{method} {url} answered {status}: {text}"
        );
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {url}: the answer is not JSON ({e}): {text}"))
    }
}

impl Drop for MailtrapLike {
    fn drop(&mut self) {
        // The child is killed right after this, when `_child` drops.
        if std::thread::panicking() {
            let log = read_log(&self.log_path);
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            eprintln!(
                "MailTrap-like server log kept in {} (last lines):\n{tail}",
                self.log_path.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn read_log(path: &Path) -> String {
    std::fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()))
}

/// A fresh CA and a server certificate for `localhost` and `127.0.0.1`
/// signed by it, as PEM files in `dir`: `ca.pem`, `server.pem`, `server.key`.
/// Returns the CA's path.
fn write_certificates(dir: &Path) -> PathBuf {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };

    let ca_key = KeyPair::generate().expect("a CA key pair");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "mailtrap-like test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).expect("the CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate().expect("a server key pair");
    let mut params = CertificateParams::new(vec!["localhost".to_string(), HOST.to_string()])
        .expect("server certificate parameters");
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = params
        .signed_by(&server_key, &issuer)
        .expect("the server certificate");

    let write = |name: &str, pem: String| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path
    };
    write("server.pem", server_cert.pem());
    write("server.key", server_key.serialize_pem());
    write("ca.pem", ca_cert.pem())
}

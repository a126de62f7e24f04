//! The real service binaries as child processes: spawned with an explicit
//! environment, logging to files, killed with SIGKILL or stopped with SIGTERM
//! by PID. A process still running when its handle is dropped is killed, so
//! a failing scenario leaves nothing behind.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Api,
    Processor,
}

impl Kind {
    pub fn binary(self) -> &'static str {
        match self {
            Kind::Api => "order-api",
            Kind::Processor => "order-processor",
        }
    }

    fn health_path(self) -> &'static str {
        match self {
            Kind::Api => "/api/health",
            Kind::Processor => "/processor/api/health",
        }
    }
}

/// How to (re)start one service: binary, environment, port, log directory.
#[derive(Debug, Clone)]
pub struct Launch {
    pub kind: Kind,
    /// `api-1`, `processor`: names its log files.
    pub label: String,
    pub binary: PathBuf,
    pub env: Vec<(String, String)>,
    pub port: u16,
    pub log_dir: PathBuf,
}

pub struct Service {
    pub launch: Launch,
    child: Option<Child>,
    starts: u32,
    /// Every process id this service has run as: what its records in the
    /// database name it by (`<pid>-<random>`).
    pub pids: Vec<u32>,
}

/// A port nothing listens on now (the OS picks it).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

impl Service {
    pub fn new(launch: Launch) -> Self {
        Service {
            launch,
            child: None,
            starts: 0,
            pids: Vec::new(),
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.launch.port)
    }

    /// Whether `name` (a published row's `published_by`, an inbox entry's
    /// `handled_by`) is one of this service's processes.
    pub fn wrote(&self, name: &str) -> bool {
        let pid = name
            .split('-')
            .next()
            .and_then(|pid| pid.parse::<u32>().ok());
        pid.is_some_and(|pid| self.pids.contains(&pid))
    }

    /// Starts the process and waits until its health endpoint answers.
    pub async fn start(&mut self, http: &reqwest::Client) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("{} is already running", self.launch.label);
        }
        self.starts += 1;
        let log_path = self
            .launch
            .log_dir
            .join(format!("{}.{}.log", self.launch.label, self.starts));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let mut command = Command::new(&self.launch.binary);
        command
            .env_clear()
            .envs(inherited())
            .envs(self.launch.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.launch.log_dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        let child = command
            .spawn()
            .with_context(|| format!("spawning {}", self.launch.binary.display()))?;
        self.pids.extend(child.id());
        self.child = Some(child);
        self.wait_healthy(http, &log_path).await
    }

    async fn wait_healthy(&mut self, http: &reqwest::Client, log: &Path) -> anyhow::Result<()> {
        let url = format!("{}{}", self.base_url(), self.launch.kind.health_path());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(response) = http.get(&url).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                bail!(
                    "{} exited during start-up ({status}); see {}",
                    self.launch.label,
                    log.display()
                );
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "{} did not answer {url} within 60 s; see {}",
                    self.launch.label,
                    log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL, and waits until the process is gone.
    pub async fn kill9(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.start_kill().context("sending SIGKILL")?;
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        }
        Ok(())
    }

    /// SIGTERM (graceful: the services drain and stop), SIGKILL after 30 s.
    pub async fn terminate(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if let Some(pid) = child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        if tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .is_err()
        {
            child.start_kill().context("sending SIGKILL")?;
            let _ = child.wait().await;
        }
        Ok(())
    }

    /// Whether the process is still alive (it may have crashed on its own).
    pub fn running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.child = None;
                false
            }
            None => false,
        }
    }
}

/// The only variables the services get from the suite's own environment:
/// everything else is set explicitly (and `ENV_FILE` points at an empty file,
/// so no developer's `.env` leaks in).
fn inherited() -> Vec<(String, String)> {
    ["PATH", "HOME", "TMPDIR"]
        .into_iter()
        .filter_map(|name| std::env::var(name).ok().map(|v| (name.to_string(), v)))
        .collect()
}

//! A real `redis-server` on a free loopback port, in a temp dir, with no
//! persistence; killed with its process group on drop. Faults are explicit:
//! `freeze` (SIGSTOP), `thaw` (SIGCONT), `kill` and `restart` on the same port.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, Proc, TempDir, PATIENCE, POLL};

pub struct Redis {
    pub port: u16,
    proc: Option<Proc>,
    dir: TempDir,
    starts: usize,
}

impl Redis {
    pub async fn start() -> Redis {
        let mut r = Redis { port: free_port(), proc: None, dir: TempDir::new("redis"), starts: 0 };
        r.spawn().await;
        r
    }

    /// `redis://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        self.starts += 1;
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .current_dir(self.dir.path());
        let mut proc = Proc::spawn("redis-server", cmd, self.dir.path().join(format!("redis-{}.log", self.starts)));
        let deadline = Instant::now() + PATIENCE;
        while self.cli(&["PING"]).as_deref() != Some("PONG") {
            proc.assert_running();
            assert!(Instant::now() < deadline, "redis-server did not answer PING; log:\n{}", proc.log());
            tokio::time::sleep(POLL).await;
        }
        self.proc = Some(proc);
    }

    /// Runs `redis-cli` against this server; its trimmed stdout, `None` if it failed.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && !text.starts_with("Could not connect")).then_some(text)
    }

    /// Number of keys (`DBSIZE`).
    pub fn dbsize(&self) -> usize {
        self.cli(&["DBSIZE"]).and_then(|s| s.parse().ok()).unwrap_or(0)
    }

    fn signal(&self, sig: &str) {
        let pid = self.proc.as_ref().expect("redis is running").pid();
        let ok = Command::new("kill").args([sig, &pid.to_string()]).status().map(|s| s.success()).unwrap_or(false);
        assert!(ok, "kill {sig} {pid}");
    }

    /// SIGSTOP: the socket stays open, nothing answers.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    /// Kills the server (connections reset, port closed); the data is gone.
    pub fn kill(&mut self) {
        self.proc = None;
    }

    /// Starts a fresh, empty server on the same port.
    pub async fn restart(&mut self) {
        self.kill();
        // The port was ours a moment ago; wait for the kernel to let it go if needed.
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpListener::bind(("127.0.0.1", self.port)).is_err() && Instant::now() < deadline {
            tokio::time::sleep(POLL).await;
        }
        self.spawn().await;
    }
}

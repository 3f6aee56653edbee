//! A real 3-master Redis Cluster (no replicas) on free loopback ports, in a
//! temp dir, with no persistence; every node is killed with its process group
//! on drop. Each node gets its client port and an explicit cluster-bus port
//! (`--cluster-port`), both from `free_port`, so the default `port + 10000`
//! bus port can neither collide nor overflow. `kill(i)` takes one master down
//! for good (its slots have no replica to fail over to).

use std::process::{Command, Stdio};
use std::time::Instant;

use super::{free_port, Proc, TempDir, PATIENCE, POLL};

/// `cluster-node-timeout` of every node: after a master dies, the survivors
/// mark the cluster `fail` (and answer `CLUSTERDOWN`) within about this long.
pub const NODE_TIMEOUT_MS: u64 = 1000;

pub struct ClusterNode {
    pub port: u16,
    pub bus_port: u16,
    proc: Option<Proc>,
}

pub struct RedisCluster {
    // Field order matters: the processes die before their directory goes.
    pub nodes: Vec<ClusterNode>,
    dir: TempDir,
}

impl RedisCluster {
    /// Starts 3 masters, joins them with `redis-cli --cluster create`, and
    /// waits until every node reports `cluster_state:ok`.
    pub async fn start() -> RedisCluster {
        let dir = TempDir::new("redis-cluster");
        let mut nodes = Vec::new();
        for _ in 0..3 {
            let (port, bus_port) = (free_port(), free_port());
            let mut cmd = Command::new("redis-server");
            cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes", "--cluster-port", &bus_port.to_string()])
                .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(dir.path())
                .current_dir(dir.path());
            let proc = Proc::spawn("redis-server", cmd, dir.path().join(format!("redis-{port}.log")));
            nodes.push(ClusterNode { port, bus_port, proc: Some(proc) });
        }
        let mut cluster = RedisCluster { nodes, dir };
        let deadline = Instant::now() + PATIENCE;
        for i in 0..cluster.nodes.len() {
            while cluster.cli(i, &["PING"]).as_deref() != Some("PONG") {
                cluster.nodes[i].proc.as_mut().expect("started").assert_running();
                assert!(Instant::now() < deadline, "redis-server :{} did not answer PING", cluster.nodes[i].port);
                tokio::time::sleep(POLL).await;
            }
        }

        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for n in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", n.port));
        }
        let out = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );

        // Every node, not just the first: a client may learn the topology from any of them.
        for i in 0..cluster.nodes.len() {
            loop {
                let info = cluster.cli(i, &["CLUSTER", "INFO"]).unwrap_or_default();
                if info.lines().any(|l| l.trim() == "cluster_state:ok") {
                    break;
                }
                cluster.nodes[i].proc.as_mut().expect("started").assert_running();
                assert!(
                    Instant::now() < deadline,
                    "node :{} never reached cluster_state:ok; last CLUSTER INFO:\n{info}",
                    cluster.nodes[i].port
                );
                tokio::time::sleep(POLL).await;
            }
        }
        cluster
    }

    /// The seed node URLs, `redis://127.0.0.1:PORT`, for `cache.redis.cluster`.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| format!("redis://127.0.0.1:{}", n.port)).collect()
    }

    /// Runs `redis-cli -p PORT ARGS` against node `i` (no `-c`: no redirects
    /// followed); its trimmed stdout, `None` if it failed.
    pub fn cli(&self, i: usize, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli")
            .args(["-p", &self.nodes[i].port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && !text.starts_with("Could not connect")).then_some(text)
    }

    /// Keys held by node `i` (its `DBSIZE`; 0 if it does not answer).
    pub fn dbsize(&self, i: usize) -> usize {
        self.cli(i, &["DBSIZE"]).and_then(|s| s.parse().ok()).unwrap_or(0)
    }

    /// Keys held by the live nodes together.
    pub fn total_keys(&self) -> usize {
        (0..self.nodes.len()).filter(|&i| self.is_alive(i)).map(|i| self.dbsize(i)).sum()
    }

    pub fn is_alive(&self, i: usize) -> bool {
        self.nodes[i].proc.is_some()
    }

    /// Kills master `i` (SIGKILL to its process group): its connections reset,
    /// its port closes, its keys and slots are gone.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].proc = None;
    }

    /// The directory holding the nodes' logs and `nodes-PORT.conf` files.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

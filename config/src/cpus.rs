//! How many CPUs this process may use: the cgroup CPU quota when one is set
//! (v2 `cpu.max`, v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`), else the
//! scheduler's view (`available_parallelism`: affinity mask / host cores).
//!
//! A sidecar limited to one CPU that starts one data-plane thread per host
//! core only adds context switches and run-queue waits: the defaults of
//! `listeners.http.threads` and `runtime.onnx.pool_threads` follow this count.

use std::fs;
use std::path::{Path, PathBuf};

/// CPUs this process may use: min(cgroup quota rounded down (at least 1),
/// `available_parallelism`).
pub fn available_cpus() -> usize {
    let sched = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    match cgroup_quota_cpus(Path::new("/")) {
        Some(q) => q.min(sched),
        None => sched,
    }
}

/// The tightest CPU quota on this process's cgroup path, as whole CPUs
/// (rounded down, at least 1), reading files under `root` (`/` in production,
/// a fixture directory in tests). `None` when no quota applies or the files
/// cannot be read.
pub fn cgroup_quota_cpus(root: &Path) -> Option<usize> {
    let membership = fs::read_to_string(root.join("proc/self/cgroup")).ok()?;
    let fs_root = root.join("sys/fs/cgroup");
    let mut best: Option<f64> = None;
    for line in membership.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let quota = if id == "0" && controllers.is_empty() {
            // cgroup v2 (unified): <root>/<path>/cpu.max, "max 100000" or "50000 100000".
            walk_up(&fs_root, path, |dir| read_v2(&dir.join("cpu.max")))
        } else if controllers.split(',').any(|c| c == "cpu") {
            // cgroup v1: the cpu controller's hierarchy, mounted as `cpu,cpuacct` or `cpu`.
            ["cpu,cpuacct", "cpuacct,cpu", "cpu"]
                .iter()
                .map(|m| fs_root.join(m))
                .find(|m| m.is_dir())
                .and_then(|mount| walk_up(&mount, path, read_v1))
        } else {
            None
        };
        if let Some(q) = quota {
            best = Some(best.map_or(q, |b: f64| b.min(q)));
        }
    }
    best.map(|q| (q.floor() as usize).max(1))
}

/// The smallest quota from the cgroup `path` (relative to `mount`) up to the
/// mount's root. Inside a container with its own cgroup namespace the path is
/// `/` and the container's limit sits at the mount root itself.
fn walk_up(mount: &Path, path: &str, read: impl Fn(&Path) -> Option<f64>) -> Option<f64> {
    let mut dir: PathBuf = mount.join(path.trim_start_matches('/'));
    let mut best: Option<f64> = None;
    loop {
        if let Some(q) = read(&dir) {
            best = Some(best.map_or(q, |b: f64| b.min(q)));
        }
        if dir.as_path() == mount || !dir.pop() || !dir.starts_with(mount) {
            break;
        }
    }
    best
}

fn read_v2(file: &Path) -> Option<f64> {
    let text = fs::read_to_string(file).ok()?;
    let mut it = text.split_whitespace();
    let (quota, period) = (it.next()?, it.next()?);
    if quota == "max" {
        return None;
    }
    ratio(quota.parse().ok()?, period.parse().ok()?)
}

fn read_v1(dir: &Path) -> Option<f64> {
    let quota: i64 = fs::read_to_string(dir.join("cpu.cfs_quota_us")).ok()?.trim().parse().ok()?;
    let period: i64 = fs::read_to_string(dir.join("cpu.cfs_period_us")).ok()?.trim().parse().ok()?;
    ratio(quota, period)
}

/// quota / period when both are positive (-1 = no limit in v1).
fn ratio(quota: i64, period: i64) -> Option<f64> {
    (quota > 0 && period > 0).then(|| quota as f64 / period as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture(PathBuf);
    impl Fixture {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("switchyard-cpus-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Fixture(dir)
        }
        fn file(&self, rel: &str, text: &str) -> &Self {
            let p = self.0.join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, text).unwrap();
            self
        }
    }
    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn v2_quota_of_a_nested_cgroup_and_its_parents() {
        let f = Fixture::new("v2");
        f.file("proc/self/cgroup", "0::/kubepods/pod1/ctr\n")
            .file("sys/fs/cgroup/kubepods/pod1/ctr/cpu.max", "max 100000\n")
            .file("sys/fs/cgroup/kubepods/pod1/cpu.max", "250000 100000\n")
            .file("sys/fs/cgroup/kubepods/cpu.max", "800000 100000\n");
        // The pod's 2.5 CPUs is the tightest; rounded down.
        assert_eq!(cgroup_quota_cpus(&f.0), Some(2));
    }

    #[test]
    fn v2_unlimited_and_sub_cpu_quotas() {
        let f = Fixture::new("v2max");
        f.file("proc/self/cgroup", "0::/\n").file("sys/fs/cgroup/cpu.max", "max 100000\n");
        assert_eq!(cgroup_quota_cpus(&f.0), None);
        f.file("sys/fs/cgroup/cpu.max", "50000 100000\n");
        // Half a CPU still gets one thread.
        assert_eq!(cgroup_quota_cpus(&f.0), Some(1));
    }

    #[test]
    fn v1_cfs_quota_in_a_hybrid_layout() {
        let f = Fixture::new("v1");
        f.file("proc/self/cgroup", "4:memory:/x\n2:cpu,cpuacct:/docker/abc\n0::/\n")
            .file("sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "100000\n")
            .file("sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n")
            .file("sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "-1\n")
            .file("sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000\n");
        assert_eq!(cgroup_quota_cpus(&f.0), Some(1));
        f.file("sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "-1\n");
        assert_eq!(cgroup_quota_cpus(&f.0), None);
    }

    #[test]
    fn missing_or_garbled_files_mean_no_quota() {
        let f = Fixture::new("none");
        assert_eq!(cgroup_quota_cpus(&f.0), None);
        f.file("proc/self/cgroup", "garbage\n0::/a\n").file("sys/fs/cgroup/a/cpu.max", "lots 100000\n");
        assert_eq!(cgroup_quota_cpus(&f.0), None);
        assert!(available_cpus() >= 1);
    }
}

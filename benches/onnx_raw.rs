//! Raw in-process ONNX Runtime baseline for the embedded backend (issue 3 item 8):
//! `Session::run` latency and throughput per batch size, with the session
//! settings Switchyard uses (`intra_op_threads` 1, `inter_op_threads` 1, default
//! graph optimisation) and the same per-call work as its pool threads do
//! (input handed in place with `TensorRef::from_array_view`, output copied out).
//!
//! `threads = N` runs N std threads, each with its own session, like
//! Switchyard's pool with `instances: N`.
//!
//!     ORT_DYLIB_PATH=$PWD/.switchyard/lib/libonnxruntime.so \
//!       cargo bench --bench onnx_raw -- --model examples/models/mlp_heavy/1/model.onnx \
//!       --batches 1,2,4,8,16,32,64 --threads 1,2 --seconds 2
//!
//! Prints one TSV line per (model, batch, threads):
//! `model batch threads calls p50_us p99_us mean_us rows_per_s calls_per_s cpu_ticks`,
//! `cpu_ticks` being the CPU time the timed calls' threads used, in clock ticks
//! (`getconf CLK_TCK`), from /proc so no load or warm-up counts (0 off Linux and with `--paced`).
//!
//! With `--paced RATE` it instead makes RATE calls per second (a low, open-loop
//! rate like the served latency runs) two ways: `inline` in the timing thread,
//! and `handoff` sent to a worker thread owning the session and answered on a
//! channel, as Switchyard's pool does; `threads` then names the way. The
//! difference is the cost of waking a parked thread and being woken back.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use ort::session::Session;
use ort::value::{TensorRef, ValueType};

struct Args {
    models: Vec<PathBuf>,
    batches: Vec<usize>,
    threads: Vec<usize>,
    seconds: f64,
    library: PathBuf,
    /// When set: calls paced at this rate (per second), in the calling thread and
    /// handed to a worker thread and back, instead of the tight loops.
    paced: Option<f64>,
}

fn parse_list(s: &str) -> Vec<usize> {
    s.split(',').filter(|x| !x.is_empty()).map(|x| x.trim().parse().expect("a number")).collect()
}

fn args() -> Args {
    let mut a = Args {
        models: Vec::new(),
        batches: vec![1, 2, 4, 8, 16, 32, 64],
        threads: vec![1, 2],
        seconds: 2.0,
        library: std::env::var_os("ORT_DYLIB_PATH")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(".switchyard/lib/libonnxruntime.so")),
        paced: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        match k.as_str() {
            "--model" => a.models.push(PathBuf::from(it.next().expect("--model PATH"))),
            "--batches" => a.batches = parse_list(&it.next().expect("--batches LIST")),
            "--threads" => a.threads = parse_list(&it.next().expect("--threads LIST")),
            "--seconds" => a.seconds = it.next().expect("--seconds S").parse().expect("seconds"),
            "--library" => a.library = PathBuf::from(it.next().expect("--library PATH")),
            "--paced" => a.paced = Some(it.next().expect("--paced RATE").parse().expect("rate")),
            // `cargo bench` passes `--bench`; ignore it and anything else cargo adds.
            _ => {}
        }
    }
    if a.models.is_empty() {
        a.models = vec![
            PathBuf::from("examples/models/mlp/1/model.onnx"),
            PathBuf::from("examples/models/mlp_heavy/1/model.onnx"),
        ];
    }
    a
}

/// A session built the way `runtime/src/backend/onnx/model.rs::build_session` builds one.
fn session(env: &ort::environment::Environment, path: &Path) -> Session {
    let build = || -> Result<Session, String> {
        Session::builder(env)
            .map_err(|e| e.to_string())?
            .with_intra_threads(1)
            .map_err(|e| e.to_string())?
            .with_inter_threads(1)
            .map_err(|e| e.to_string())?
            .commit_from_file(path)
            .map_err(|e| e.to_string())
    };
    build().unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
}

/// Input name, feature count (second dim) and output name of a `[N, F] -> [N, K]` model.
fn signature(s: &Session) -> (String, usize, String) {
    let input = &s.inputs()[0];
    let features = match input.dtype() {
        ValueType::Tensor { shape, .. } => shape[1] as usize,
        other => panic!("unexpected input type {other:?}"),
    };
    (input.name().to_owned(), features, s.outputs()[0].name().to_owned())
}

/// One call as a Switchyard pool thread makes it: borrowed input, output copied to bytes.
fn call(s: &mut Session, input: &str, output: &str, shape: &[i64], data: &[f32]) -> usize {
    let v = TensorRef::from_array_view((shape.to_vec(), data)).expect("input tensor");
    let outs = s.run(vec![(Cow::Borrowed(input), ort::session::SessionInputValue::from(v))]).expect("run");
    let (_, y) = outs.get(output).expect("output").try_extract_tensor::<f32>().expect("f32 output");
    // SAFETY: f32 has no padding; the byte view lives no longer than `y`.
    let bytes = unsafe { std::slice::from_raw_parts(y.as_ptr().cast::<u8>(), std::mem::size_of_val(y)) };
    let copied = bytes.to_vec();
    std::hint::black_box(&copied);
    copied.len()
}

/// CPU time (user + system) of the calling thread so far, in clock ticks; 0 where /proc has no answer.
fn thread_cpu_ticks() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/thread-self/stat") else { return 0 };
    // The fields after the command name (which may hold spaces) are `) state ppid ...`; utime, stime are 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    tick(11) + tick(12)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn model_label(model: &Path) -> String {
    model
        .parent()
        .and_then(Path::parent)
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| model.display().to_string())
}

fn print_line(label: &str, batch: usize, way: &str, mut lat: Vec<u64>, secs: f64) {
    lat.sort_unstable();
    let calls = lat.len();
    let mean = lat.iter().sum::<u64>() as f64 / calls.max(1) as f64;
    println!(
        "{label}\t{batch}\t{way}\t{calls}\t{:.1}\t{:.1}\t{:.1}\t{:.0}\t{:.0}\t0",
        percentile(&lat, 0.5) as f64 / 1e3,
        percentile(&lat, 0.99) as f64 / 1e3,
        mean / 1e3,
        (calls * batch) as f64 / secs,
        calls as f64 / secs,
    );
}

/// Low-rate calls: inline, then through a worker thread (std channels park both sides, like the pool's).
fn paced(env: &ort::environment::Environment, a: &Args, rate: f64) {
    let gap = Duration::from_secs_f64(1.0 / rate);
    let n = ((a.seconds * rate) as usize).max(10);
    // ONNX_RAW_SPIN=1: wait by spinning instead of sleeping (inline way only), to tell
    // the cost of a sleeping CPU (caches, idle states) from the cost of the call.
    let spin = std::env::var_os("ONNX_RAW_SPIN").is_some_and(|v| v == "1");
    for model in &a.models {
        let label = model_label(model);
        let mut s = session(env, model);
        let (input, features, output) = signature(&s);
        for &batch in &a.batches {
            let shape = vec![batch as i64, features as i64];
            let data: Vec<f32> = (0..batch * features).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
            for _ in 0..20 {
                call(&mut s, &input, &output, &shape, &data);
            }
            let start = Instant::now();
            let mut lat = Vec::with_capacity(n);
            for i in 0..n {
                let at = start + gap * i as u32;
                if spin {
                    while Instant::now() < at {
                        std::hint::spin_loop();
                    }
                } else if let Some(d) = at.checked_duration_since(Instant::now()) {
                    std::thread::sleep(d);
                }
                let t = Instant::now();
                call(&mut s, &input, &output, &shape, &data);
                lat.push(t.elapsed().as_nanos() as u64);
            }
            print_line(&label, batch, "inline", lat, start.elapsed().as_secs_f64());
            let (job_tx, job_rx) = std::sync::mpsc::sync_channel::<std::sync::mpsc::Sender<usize>>(256);
            let start = std::thread::scope(|scope| {
                let (s, input, output, shape, data) = (&mut s, &input, &output, &shape, &data);
                scope.spawn(move || {
                    for reply in job_rx.iter() {
                        let _ = reply.send(call(s, input, output, shape, data));
                    }
                });
                let start = Instant::now();
                let mut lat = Vec::with_capacity(n);
                for i in 0..n {
                    let at = start + gap * i as u32;
                    if let Some(d) = at.checked_duration_since(Instant::now()) {
                        std::thread::sleep(d);
                    }
                    let t = Instant::now();
                    let (tx, rx) = std::sync::mpsc::channel();
                    job_tx.send(tx).expect("worker alive");
                    rx.recv().expect("worker answered");
                    lat.push(t.elapsed().as_nanos() as u64);
                }
                drop(job_tx);
                (start, lat)
            });
            let (start, lat) = start;
            print_line(&label, batch, "handoff", lat, start.elapsed().as_secs_f64());
        }
    }
}

fn main() {
    let a = args();
    let env = ort::init_from(&a.library)
        .unwrap_or_else(|e| panic!("loading {}: {e}", a.library.display()))
        .with_name("onnx_raw")
        .with_telemetry(false)
        .build()
        .expect("ONNX Runtime environment");
    println!("model\tbatch\tthreads\tcalls\tp50_us\tp99_us\tmean_us\trows_per_s\tcalls_per_s\tcpu_ticks");
    if let Some(rate) = a.paced {
        paced(&env, &a, rate);
        return;
    }
    for model in &a.models {
        let label = model
            .parent()
            .and_then(Path::parent)
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| model.display().to_string());
        let max_threads = a.threads.iter().copied().max().unwrap_or(1);
        // One session per thread, built once per model and reused for every point.
        let mut sessions: Vec<Session> = (0..max_threads).map(|_| session(&env, model)).collect();
        let (input, features, output) = signature(&sessions[0]);
        for &batch in &a.batches {
            let shape = vec![batch as i64, features as i64];
            let data: Arc<Vec<f32>> =
                Arc::new((0..batch * features).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect());
            for s in sessions.iter_mut() {
                for _ in 0..20 {
                    call(s, &input, &output, &shape, &data);
                }
            }
            for &threads in &a.threads {
                let dur = Duration::from_secs_f64(a.seconds);
                let barrier = Arc::new(Barrier::new(threads));
                let (lat, elapsed, cpu) = std::thread::scope(|scope| {
                    let handles: Vec<_> = sessions
                        .iter_mut()
                        .take(threads)
                        .map(|s| {
                            let (input, output, shape, data, barrier) =
                                (&input, &output, &shape, data.clone(), barrier.clone());
                            scope.spawn(move || {
                                let mut lat = Vec::with_capacity(1 << 16);
                                barrier.wait();
                                let cpu = thread_cpu_ticks();
                                let start = Instant::now();
                                let end = start + dur;
                                loop {
                                    let t = Instant::now();
                                    if t >= end {
                                        break;
                                    }
                                    call(s, input, output, shape, &data);
                                    lat.push(t.elapsed().as_nanos() as u64);
                                }
                                (lat, start.elapsed(), thread_cpu_ticks() - cpu)
                            })
                        })
                        .collect();
                    let mut all = Vec::new();
                    let mut elapsed = Duration::ZERO;
                    let mut cpu = 0;
                    for h in handles {
                        let (l, e, c) = h.join().expect("bench thread");
                        all.extend(l);
                        elapsed = elapsed.max(e);
                        cpu += c;
                    }
                    (all, elapsed, cpu)
                });
                let mut lat = lat;
                lat.sort_unstable();
                let calls = lat.len();
                let mean = lat.iter().sum::<u64>() as f64 / calls.max(1) as f64;
                let secs = elapsed.as_secs_f64();
                println!(
                    "{label}\t{batch}\t{threads}\t{calls}\t{:.1}\t{:.1}\t{:.1}\t{:.0}\t{:.0}\t{cpu}",
                    percentile(&lat, 0.5) as f64 / 1e3,
                    percentile(&lat, 0.99) as f64 / 1e3,
                    mean / 1e3,
                    (calls * batch) as f64 / secs,
                    calls as f64 / secs,
                );
            }
        }
    }
}

//! bench/cri's measuring program: pods through containerd 1.6's CRI plugin, Warren's handler
//! against runc's in the same run, rounds interleaved so that drift hits both alike.
//!
//! Per handler: the time from RunPodSandbox to a started container (sequential pods, each
//! a sandbox plus one sleeping busybox container), pods per second over a batch, the shims'
//! PSS per running pod, and the teardown of a pod (StopContainer..RemovePodSandbox).
//! Usage: cri-bench [PODS] [ROUNDS] (default 20 3).

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use warren_tests::cri::{CriHost, Pod};
use warren_tests::Test;

const HANDLERS: [&str; 2] = ["warren", "runc"];

#[derive(Default)]
struct Samples {
    start_ms: Vec<f64>,
    stop_ms: Vec<f64>,
    pods_per_s: Vec<f64>,
    pss_kib_per_pod: Vec<f64>,
}

fn main() -> Result<()> {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse()).collect::<Result<_, _>>()?;
    let pods = args.first().copied().unwrap_or(20);
    let rounds = args.get(1).copied().unwrap_or(3);
    ensure!(pods > 0 && rounds > 0, "usage: cri-bench [PODS>0] [ROUNDS>0]");
    let t = Test::new("cri_bench");
    let h = CriHost::start(&t, 7)?;
    h.pull_busybox()?;
    let mut samples: Vec<Samples> = HANDLERS.iter().map(|_| Samples::default()).collect();
    for round in 0..rounds {
        for (i, handler) in HANDLERS.iter().enumerate() {
            batch(&h, handler, round, pods, &mut samples[i])?;
            eprint!(".");
        }
    }
    eprintln!();
    report(pods, rounds, &samples);
    drop(h);
    t.assert_no_leftovers();
    Ok(())
}

/// `n` pods started one after another, measured, then torn down one after another.
fn batch(h: &CriHost, handler: &'static str, round: usize, n: usize, s: &mut Samples) -> Result<()> {
    let begin = Instant::now();
    let mut running = Vec::new();
    for i in 0..n {
        let t0 = Instant::now();
        let mut pod = Pod::run(h, handler, &format!("b-{handler}-{round}-{i}"))?;
        let c = pod.start("sleeper", "exec sleep 3600", |_| {})?;
        s.start_ms.push(ms(t0.elapsed()));
        running.push((pod, c));
    }
    s.pods_per_s.push(n as f64 / begin.elapsed().as_secs_f64());
    let pss: u64 = h.shims(handler).iter().map(|(pid, _)| pss_kib(*pid)).sum();
    s.pss_kib_per_pod.push(pss as f64 / n as f64);
    for (pod, c) in running {
        let t0 = Instant::now();
        pod.remove(&[&c]).with_context(|| format!("{handler}: tear down"))?;
        s.stop_ms.push(ms(t0.elapsed()));
    }
    ensure!(h.shims(handler).is_empty(), "{handler}: shims left after the batch: {:?}", h.shims(handler));
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Proportional set size of a process (smaps_rollup), KiB; 0 when it is gone.
fn pss_kib(pid: i32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn quantile(v: &[f64], q: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn report(pods: usize, rounds: usize, samples: &[Samples]) {
    println!("bench/cri: {pods} pods x {rounds} rounds per handler (sandbox + 1 container each, sequential)");
    println!();
    println!("| handler | start p50 ms | start p90 ms | pods/s | shim PSS per pod KiB | teardown p50 ms |");
    println!("|---|---|---|---|---|---|");
    let row = |s: &Samples| {
        [
            quantile(&s.start_ms, 0.5),
            quantile(&s.start_ms, 0.9),
            quantile(&s.pods_per_s, 0.5),
            quantile(&s.pss_kib_per_pod, 0.5),
            quantile(&s.stop_ms, 0.5),
        ]
    };
    let rows: Vec<[f64; 5]> = samples.iter().map(row).collect();
    for (handler, r) in HANDLERS.iter().zip(&rows) {
        println!("| {handler} | {:.1} | {:.1} | {:.1} | {:.0} | {:.1} |", r[0], r[1], r[2], r[3], r[4]);
    }
    let ratio: Vec<String> = (0..5).map(|k| format!("{:.2}x", rows[0][k] / rows[1][k])).collect();
    println!("| warren/runc | {} |", ratio.join(" | "));
}

//! IPAM benchmarks: allocations per second on a /16 and memory for 10,000 allocated
//! addresses. Prints a table and writes JSON (`cargo bench -p rama-ipam`; set
//! RAMA_BENCH_OUT to choose the directory, default bench/results).
use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicUsize, Ordering},
    time::Instant,
};

use rama_ipam::{Ipam, NetworkSpec, NetworkType, PodKey, Request, SubnetSpec};

/// Counts live heap bytes, to measure the allocator's memory.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: delegates to the system allocator and only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn ipam(cidr: &str) -> Ipam {
    let mut ipam = Ipam::new(
        vec![NetworkSpec {
            name: "overlay".into(),
            network_type: NetworkType::Overlay,
        }],
        vec![SubnetSpec {
            name: "s".into(),
            network: "overlay".into(),
            cidr: Some(cidr.parse().expect("cidr")),
            ..Default::default()
        }],
    )
    .expect("valid");
    ipam.default_network_type = Some(NetworkType::Overlay);
    ipam
}

fn request(i: usize) -> Request {
    Request {
        pod: Some(PodKey::new("bench", format!("pod-{i}"))),
        node: "n1".into(),
        ..Default::default()
    }
}

fn main() {
    let reqs: Vec<Request> = (0..65_000).map(request).collect();

    // Fill a /16 almost completely.
    let mut a = ipam("10.0.0.0/16");
    let start = Instant::now();
    for r in &reqs {
        a.allocate(r).expect("allocate");
    }
    let fill = reqs.len() as f64 / start.elapsed().as_secs_f64();

    // Steady churn on the full /16: release one, allocate one (fragmented free set).
    let start = Instant::now();
    let churn = 50_000;
    for i in 0..churn {
        let old = &reqs[(i * 7919) % reqs.len()];
        let pod = old.pod.clone().expect("pod");
        a.release(&pod);
        a.allocate(old).expect("reallocate");
    }
    let churn_rate = churn as f64 / start.elapsed().as_secs_f64();

    // Memory for 10,000 allocated addresses.
    let before = LIVE.load(Ordering::Relaxed);
    let mut m = ipam("10.1.0.0/16");
    for r in reqs.iter().take(10_000) {
        m.allocate(r).expect("allocate");
    }
    let bytes = LIVE.load(Ordering::Relaxed) - before;
    drop(m);

    println!("IPAM (rama-ipam, one /16)");
    println!("{:<44} {:>14}", "measure", "value");
    println!(
        "{:<44} {:>14.0}",
        "allocations/s, filling 65,000 addresses", fill
    );
    println!(
        "{:<44} {:>14.0}",
        "release+allocate/s on the full /16", churn_rate
    );
    println!(
        "{:<44} {:>14}",
        "heap bytes for 10,000 allocated addresses", bytes
    );
    println!(
        "{:<44} {:>14.1}",
        "bytes per allocated address",
        bytes as f64 / 10_000.0
    );

    let date = std::process::Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let out_dir = std::env::var("RAMA_BENCH_OUT")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../bench/results").to_owned());
    let json = serde_json::json!({
        "date": date,
        "allocations_per_second_fill_slash16": fill,
        "release_allocate_per_second_full_slash16": churn_rate,
        "heap_bytes_10000_allocations": bytes,
        "goal_allocations_per_second": 50_000,
    });
    let _ = std::fs::create_dir_all(&out_dir);
    let path = format!("{out_dir}/ipam-{date}.json");
    match std::fs::write(&path, serde_json::to_string_pretty(&json).expect("json")) {
        Ok(()) => println!("wrote {path}"),
        Err(e) => eprintln!("could not write {path}: {e}"),
    }
}

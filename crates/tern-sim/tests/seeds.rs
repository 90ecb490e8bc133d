//! The simulation in the test command: `TERN_SIM_SEEDS` seeds (default 1,000) from
//! `TERN_SIM_FIRST` (default 0), or the one seed `TERN_SIM_SEED` (to replay a failure).

use tern_sim::{run, Failure, Options, Summary};

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn every_seed_keeps_the_invariants() {
    let options = Options::default();
    let seeds: Vec<u64> = match env("TERN_SIM_SEED") {
        Some(s) => vec![s],
        None => {
            let first = env("TERN_SIM_FIRST").unwrap_or(0);
            (first..first + env("TERN_SIM_SEEDS").unwrap_or(1000)).collect()
        }
    };
    let mut total = Summary::default();
    let mut failures: Vec<Failure> = Vec::new();
    for &seed in &seeds {
        match run(seed, &options) {
            Ok(s) => {
                total.published += s.published;
                total.acknowledged += s.acknowledged;
                total.delivered += s.delivered;
                total.resets += s.resets;
                total.takeovers += s.takeovers;
                total.crashes += s.crashes;
            }
            Err(f) => failures.push(f),
        }
    }
    println!("{} seeds: {total:?}", seeds.len());
    if let Some(f) = failures.first() {
        panic!(
            "{} of {} seeds failed; the first:\n{f}",
            failures.len(),
            seeds.len()
        );
    }
    // The runs exercise what the invariants are about.
    if seeds.len() >= 100 {
        assert!(total.acknowledged > seeds.len(), "{total:?}");
        assert!(
            total.crashes > 0 && total.takeovers > 0 && total.resets > 0,
            "{total:?}"
        );
    }
}

#[test]
fn a_seed_replays_exactly() {
    let options = Options::default();
    for seed in [3, 157, 901] {
        let a = run(seed, &options).map_err(|f| f.to_string());
        let b = run(seed, &options).map_err(|f| f.to_string());
        match (a, b) {
            (Ok(a), Ok(b)) => assert_eq!(a.digest, b.digest, "seed {seed} ran differently twice"),
            (a, b) => assert_eq!(a.err(), b.err(), "seed {seed}"),
        }
    }
}

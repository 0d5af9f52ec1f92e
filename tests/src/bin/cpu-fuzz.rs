//! Long-running differential fuzzing of the software CPU against the host.
//!
//! ```text
//! cargo run -p vireo-tests --release --bin cpu-fuzz -- --seconds 600 --category all
//! ```
//!
//! Loops over random seeds (in batches) of the chosen categories and
//! bitnesses; every mismatch is reduced and, unless an equivalent one (same
//! signature) was already saved, written as a regression case under
//! `tests/regressions/` (replayed by the `regressions` test).

use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use vireo_tests::diff::compare::Verdict;
use vireo_tests::diff::gen::Category;
use vireo_tests::diff::{check, emu, native, reduce, regress, suite};

struct Args {
    seconds: u64,
    categories: Vec<Category>,
    bitness: Vec<u32>,
    out: PathBuf,
    max_files: usize,
    all: bool,
    seed: Option<u64>,
    batch: usize,
}

const USAGE: &str =
    "usage: cpu-fuzz [--seconds N] [--category all|NAME[,NAME...]] [--bitness 32|64|both]
                [--out DIR] [--max-files N] [--all] [--seed S] [--batch N]
categories: alu mov cmov atomic shift muldiv string bcd bitops x87 sse memfault branch";

fn parse() -> Result<Args, String> {
    let mut a = Args {
        seconds: 60,
        categories: Category::ALL.to_vec(),
        bitness: vec![64, 32],
        out: regress::default_dir(),
        max_files: 20,
        all: false,
        seed: None,
        batch: 256,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--seconds" => a.seconds = val()?.parse().map_err(|e| format!("--seconds: {e}"))?,
            "--category" => {
                let v = val()?;
                if v != "all" {
                    a.categories = v
                        .split(',')
                        .map(|n| {
                            Category::from_name(n).ok_or_else(|| format!("unknown category {n}"))
                        })
                        .collect::<Result<_, _>>()?;
                }
            }
            "--bitness" => {
                a.bitness = match val()?.as_str() {
                    "32" => vec![32],
                    "64" => vec![64],
                    "both" => vec![64, 32],
                    b => return Err(format!("bad bitness {b}")),
                }
            }
            "--out" => a.out = PathBuf::from(val()?),
            "--max-files" => {
                a.max_files = val()?.parse().map_err(|e| format!("--max-files: {e}"))?
            }
            "--all" => a.all = true,
            "--seed" => a.seed = Some(val()?.parse().map_err(|e| format!("--seed: {e}"))?),
            "--batch" => {
                a.batch = val()?
                    .parse::<usize>()
                    .map_err(|e| format!("--batch: {e}"))?
                    .max(1)
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

fn main() {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("cpu-fuzz: {e}");
            }
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    let nat = match native::NativeRunner::new() {
        Ok(n) => n,
        Err(e) => {
            eprintln!("cpu-fuzz: {e}");
            std::process::exit(1);
        }
    };
    let mut em = match emu::EmuRunner::new() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("cpu-fuzz: {e}");
            std::process::exit(1);
        }
    };
    let _ = std::fs::create_dir_all(&args.out);
    // Signatures already on disk.
    let mut known: BTreeSet<String> = BTreeSet::new();
    if let Ok(rd) = std::fs::read_dir(&args.out) {
        for e in rd.flatten() {
            if let Ok(t) = std::fs::read_to_string(e.path()) {
                for l in t.lines() {
                    if let Some(s) = l.strip_prefix("# signature: ") {
                        known.insert(s.to_string());
                    }
                }
            }
        }
    }
    let meta_seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    });
    println!(
        "cpu-fuzz: meta seed {meta_seed}, {} s, writing to {}",
        args.seconds,
        args.out.display()
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(meta_seed);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.seconds);
    let mut last_report = Instant::now();
    let mut total = 0usize;
    let mut mismatches = 0usize;
    let mut native_errors = 0usize;
    let mut written = 0usize;
    let mut groups: BTreeMap<String, usize> = BTreeMap::new();
    while Instant::now() < deadline {
        let cat = args.categories[rng.gen_range(0..args.categories.len())];
        let bits: Vec<u32> = cat
            .bitnesses()
            .iter()
            .copied()
            .filter(|b| args.bitness.contains(b))
            .collect();
        if bits.is_empty() {
            if args
                .categories
                .iter()
                .all(|c| !c.bitnesses().iter().any(|b| args.bitness.contains(b)))
            {
                eprintln!("cpu-fuzz: no category runs in the chosen bitness");
                std::process::exit(2);
            }
            continue;
        }
        let bitness = bits[rng.gen_range(0..bits.len())];
        let seeds: Vec<u64> = (0..args.batch).map(|_| rng.gen()).collect();
        let results = suite::run_seeds(&nat, &mut em, cat, bitness, seeds.iter().copied());
        total += results.len();
        for r in &results {
            match &r.verdict {
                Verdict::Match => {}
                Verdict::NativeError(e) => {
                    native_errors += 1;
                    if native_errors <= 5 {
                        eprintln!("native error ({}): {e}", r.label);
                    }
                }
                Verdict::Mismatch(_) => {
                    mismatches += 1;
                    let quick = suite::signature(r);
                    if !args.all && known.contains(&quick) {
                        *groups.entry(quick).or_default() += 1;
                        continue;
                    }
                    let small = reduce::reduce(&nat, &mut em, &r.case);
                    let rc = check(
                        &nat,
                        &mut em,
                        vec![(format!("{} (reduced)", r.label), small)],
                    );
                    let Some(rc) = rc.into_iter().next() else {
                        continue;
                    };
                    let sig = suite::signature(&rc);
                    *groups.entry(sig.clone()).or_default() += 1;
                    if (!args.all && known.contains(&sig)) || written >= args.max_files {
                        continue;
                    }
                    known.insert(sig.clone());
                    let name = format!(
                        "{}-{}-{:016x}.case",
                        cat.name(),
                        bitness,
                        r.label
                            .rsplit(' ')
                            .next()
                            .and_then(|s| s.parse::<u64>().ok())
                            .unwrap_or(0)
                    );
                    let mut comment = format!("found by cpu-fuzz: {}\nsignature: {sig}\n", r.label);
                    comment.push_str(&rc.report());
                    let path = args.out.join(&name);
                    match std::fs::write(&path, regress::to_text(&rc.case, &comment)) {
                        Ok(()) => {
                            written += 1;
                            println!("new mismatch [{sig}] -> {}", path.display());
                        }
                        Err(e) => eprintln!("cpu-fuzz: writing {}: {e}", path.display()),
                    }
                }
            }
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            last_report = Instant::now();
            println!(
                "{:5} s: {total} cases, {mismatches} mismatches, {native_errors} native errors, {written} files written",
                start.elapsed().as_secs()
            );
        }
    }
    println!("done: {total} cases, {mismatches} mismatches, {native_errors} native errors, {written} files written");
    if !groups.is_empty() {
        println!("mismatch groups (count, signature):");
        let mut v: Vec<_> = groups.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        for (k, n) in v {
            println!("  {n:6}  {k}");
        }
    }
}

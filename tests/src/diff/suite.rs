//! Running categories of generated cases, grouping and reporting mismatches
//! (shared by the CI tests and the `cpu-fuzz` binary).

use super::compare::Verdict;
use super::emu::EmuRunner;
use super::gen::{Category, Generator};
use super::native::NativeRunner;
use super::{check, decode, reduce, Checked, Outcome};
use std::collections::BTreeMap;
use std::fmt::Write;

/// Runs the cases of `category` in `bitness` for `seeds`.
pub fn run_seeds(
    native: &NativeRunner,
    emu: &mut EmuRunner,
    category: Category,
    bitness: u32,
    seeds: impl IntoIterator<Item = u64>,
) -> Vec<Checked> {
    if bitness == 32 && !native.supports_32bit() {
        eprintln!(
            "note: the host cannot run 32-bit code in compatibility mode; 32-bit cases skipped"
        );
        return Vec::new();
    }
    let g = Generator::new(category, bitness);
    let cases = seeds
        .into_iter()
        .map(|s| (label(category, bitness, s), g.case(s)))
        .collect();
    check(native, emu, cases)
}

/// The label of a generated case.
pub fn label(category: Category, bitness: u32, seed: u64) -> String {
    format!("category {} bitness {bitness} seed {seed}", category.name())
}

fn mnemonic_at(c: &Checked, rip: u64) -> String {
    decode(c.case.bitness, &c.case.code)
        .iter()
        .find(|i| i.ip() == rip)
        .map(|i| format!("{:?}", i.mnemonic()).to_lowercase())
        .unwrap_or_else(|| "?".into())
}

/// A short key grouping similar mismatches: what differs, and the
/// instruction involved (the faulting one, or the last one of the case,
/// which after [`reduce`] is the culprit).
pub fn signature(c: &Checked) -> String {
    let Verdict::Mismatch(lines) = &c.verdict else {
        return "match".into();
    };
    let first = lines
        .iter()
        .find(|l| !l.starts_with('('))
        .map(String::as_str)
        .unwrap_or("");
    if first.starts_with("exception") {
        // The divergence is at the earlier of the two exceptions.
        let f = |o: &Outcome| match o {
            Outcome::Fault(v, s) => Some((s.rip, *v)),
            _ => None,
        };
        let name = |v: u8| super::vector_name(v);
        return match (f(&c.native), f(&c.emu)) {
            (Some((nr, nv)), Some((er, ev))) if nr == er => {
                format!(
                    "exception at {}: native {}, emulated {}",
                    mnemonic_at(c, nr),
                    name(nv),
                    name(ev)
                )
            }
            (n, Some((er, ev))) if n.is_none_or(|(nr, _)| nr > er) => format!(
                "emulated {} at {}, native passes it{}",
                name(ev),
                mnemonic_at(c, er),
                if ev == 6 { " [unimplemented?]" } else { "" }
            ),
            (Some((nr, nv)), _) => format!(
                "native {} at {}, emulated passes it",
                name(nv),
                mnemonic_at(c, nr)
            ),
            _ => "exception".into(),
        };
    }
    let kinds: Vec<String> = lines
        .iter()
        .map(|l| {
            let k = l.split(':').next().unwrap_or("");
            if k.starts_with("memory") {
                "memory".to_string()
            } else if k.starts_with("xmm") {
                "xmm".to_string()
            } else {
                k.to_string()
            }
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let last = decode(c.case.bitness, &c.case.code)
        .last()
        .map(|i| format!("{:?}", i.mnemonic()).to_lowercase())
        .unwrap_or_else(|| "?".into());
    format!("{} after {last}", kinds.join(","))
}

/// Summary of a run: counts, mismatch groups, and full reports of up to
/// `detailed` reduced mismatches (one per group).
pub fn summarize(
    native: &NativeRunner,
    emu: &mut EmuRunner,
    results: &[Checked],
    detailed: usize,
) -> String {
    let mut o = String::new();
    let total = results.len();
    let native_err: Vec<&Checked> = results
        .iter()
        .filter(|c| matches!(c.verdict, Verdict::NativeError(_)))
        .collect();
    let bad: Vec<&Checked> = results
        .iter()
        .filter(|c| matches!(c.verdict, Verdict::Mismatch(_)))
        .collect();
    let faults = results
        .iter()
        .filter(|c| matches!(c.native, Outcome::Fault(..)))
        .count();
    let _ = writeln!(
        o,
        "{total} cases: {} match, {} mismatch, {} native errors ({faults} raise an exception natively)",
        total - bad.len() - native_err.len(),
        bad.len(),
        native_err.len()
    );
    for c in native_err.iter().take(5) {
        if let Verdict::NativeError(e) = &c.verdict {
            let _ = writeln!(o, "  native error in {}: {e}", c.label);
        }
    }
    // Reduce the first case of each group (value mismatches need it to name
    // the culprit).
    let mut groups: BTreeMap<String, (usize, Option<Checked>)> = BTreeMap::new();
    let mut reduced = 0;
    for c in &bad {
        let key0 = signature(c);
        let is_exc = match &c.verdict {
            Verdict::Mismatch(lines) => lines.iter().any(|l| l.starts_with("exception")),
            _ => false,
        };
        let entry_key;
        let mut rep = None;
        if is_exc {
            entry_key = key0;
        } else if reduced < detailed.max(8) * 4 {
            reduced += 1;
            let small = reduce::reduce(native, emu, &c.case);
            let r = check(native, emu, vec![(format!("{} (reduced)", c.label), small)]);
            let r = r.into_iter().next();
            entry_key = r.as_ref().map(signature).unwrap_or(key0);
            rep = r;
        } else {
            entry_key = "value mismatch (not reduced)".into();
        }
        let e = groups.entry(entry_key).or_insert((0, None));
        e.0 += 1;
        if e.1.is_none() {
            e.1 = rep.or_else(|| Some((*c).clone()));
        }
    }
    if !groups.is_empty() {
        let _ = writeln!(o, "mismatch groups (count, signature):");
        let mut v: Vec<_> = groups.iter().collect();
        v.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then(a.0.cmp(b.0)));
        for (k, (n, _)) in v.iter().take(40) {
            let _ = writeln!(o, "  {n:6}  {k}");
        }
        if v.len() > 40 {
            let rest: usize = v[40..].iter().map(|(_, (n, _))| *n).sum();
            let _ = writeln!(o, "  ... and {} more groups ({rest} cases)", v.len() - 40);
        }
        let mut shown = 0;
        for (_, (_, ex)) in v {
            if shown >= detailed {
                break;
            }
            if let Some(ex) = ex {
                let ex = if ex.label.ends_with("(reduced)") || matches!(ex.verdict, Verdict::Match)
                {
                    ex.clone()
                } else {
                    let small = reduce::reduce(native, emu, &ex.case);
                    check(
                        native,
                        emu,
                        vec![(format!("{} (reduced)", ex.label), small)],
                    )
                    .into_iter()
                    .next()
                    .unwrap_or_else(|| ex.clone())
                };
                o.push('\n');
                o.push_str(&ex.report());
                shown += 1;
            }
        }
    }
    o
}

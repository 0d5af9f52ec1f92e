//! Shrinks a failing case: first to its shortest failing prefix, then by
//! deleting single instructions while it still fails (each round runs every
//! candidate in one native batch).

use super::compare::Verdict;
use super::emu::EmuRunner;
use super::native::NativeRunner;
use super::{analysis, check, decode, encode, Case, Outcome};
use iced_x86::Instruction;

/// How a run ended, for "fails the same way": no exception, or which one.
fn kind(o: &Outcome) -> Option<Option<u8>> {
    match o {
        Outcome::Done(_) => Some(None),
        Outcome::Fault(v, _) => Some(Some(*v)),
        Outcome::Error(_) => None,
    }
}

/// What a failure looks like: the native and emulated ends.
type Shape = (Option<Option<u8>>, Option<Option<u8>>);

/// A case with `insns` as its code, if they encode and form a valid
/// sequence.
fn with_insns(base: &Case, insns: &[Instruction]) -> Option<Case> {
    let code = encode(base.bitness, insns).ok()?;
    let dec = decode(base.bitness, &code);
    if dec.len() != insns.len() || analysis::analyze(base.bitness, &dec).is_err() {
        return None;
    }
    Some(Case {
        bitness: base.bitness,
        code,
        init: base.init.clone(),
    })
}

/// Index of the first candidate that fails with the same shape.
fn first_failing(
    native: &NativeRunner,
    emu: &mut EmuRunner,
    cands: &[Case],
    shape: Shape,
) -> Option<usize> {
    if cands.is_empty() {
        return None;
    }
    let labeled = cands.iter().map(|c| (String::new(), c.clone())).collect();
    check(native, emu, labeled).iter().position(|c| {
        matches!(c.verdict, Verdict::Mismatch(_)) && (kind(&c.native), kind(&c.emu)) == shape
    })
}

/// The smallest variant of `case` found that fails the same way (same
/// exception or lack of one on each side); the case itself if it does not
/// fail or cannot be shrunk.
pub fn reduce(native: &NativeRunner, emu: &mut EmuRunner, case: &Case) -> Case {
    let Some(orig) = check(native, emu, vec![(String::new(), case.clone())])
        .into_iter()
        .next()
    else {
        return case.clone();
    };
    if !matches!(orig.verdict, Verdict::Mismatch(_)) {
        return case.clone();
    }
    let shape = (kind(&orig.native), kind(&orig.emu));
    reduce_with(case, |cands| first_failing(native, emu, cands, shape))
}

/// [`reduce`] with any oracle: `first_failing` returns the index of the
/// first candidate that still fails.
pub fn reduce_with(case: &Case, mut first_failing: impl FnMut(&[Case]) -> Option<usize>) -> Case {
    let insns = decode(case.bitness, &case.code);
    // Shortest failing prefix.
    let mut cands = Vec::new();
    for k in 1..=insns.len() {
        if let Some(c) = with_insns(case, &insns[..k]) {
            cands.push((k, c));
        }
    }
    let plain: Vec<Case> = cands.iter().map(|(_, c)| c.clone()).collect();
    let Some(i) = first_failing(&plain) else {
        return case.clone();
    };
    let mut cur: Vec<Instruction> = insns[..cands[i].0].to_vec();
    let mut best = plain[i].clone();
    // Delete single instructions while the case keeps failing.
    loop {
        let mut cands = Vec::new();
        for j in 0..cur.len() {
            let mut v = cur.clone();
            v.remove(j);
            if v.is_empty() {
                continue;
            }
            if let Some(c) = with_insns(case, &v) {
                cands.push((v, c));
            }
        }
        let plain: Vec<Case> = cands.iter().map(|(_, c)| c.clone()).collect();
        match first_failing(&plain) {
            Some(i) => {
                cur = cands[i].0.clone();
                best = plain[i].clone();
            }
            None => break,
        }
    }
    best
}

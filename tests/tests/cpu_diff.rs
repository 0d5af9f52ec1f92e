//! Differential tests of the software CPU against the host CPU.
//!
//! One test per instruction category runs a fixed set of generated
//! sequences (seeds `0..N` in each bitness; `VIREO_DIFF_CASES=N` changes N)
//! natively and on the emulator and fails with a grouped, reduced report of
//! the mismatches. `regressions` replays every case under
//! `tests/regressions/` (written by the `cpu-fuzz` binary).

use vireo_tests::diff::compare::{compare, Verdict};
use vireo_tests::diff::emu::EmuRunner;
use vireo_tests::diff::gen::{Category, Generator};
use vireo_tests::diff::native::NativeRunner;
use vireo_tests::diff::{
    analysis, check, decode, reduce, regress, suite, Case, Outcome, CODE_ADDR,
};

/// Sequences per bitness and category.
fn cases_per_bitness() -> u64 {
    std::env::var("VIREO_DIFF_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

fn runners() -> (NativeRunner, EmuRunner) {
    (
        NativeRunner::new().expect("native runner"),
        EmuRunner::new().expect("emulator runner"),
    )
}

fn run_category(cat: Category) {
    let (nat, mut em) = runners();
    let n = cases_per_bitness();
    let per = if cat.bitnesses().len() == 1 { 2 * n } else { n };
    let mut all = Vec::new();
    for &b in cat.bitnesses() {
        all.extend(suite::run_seeds(&nat, &mut em, cat, b, 0..per));
    }
    let bad = all.iter().filter(|c| c.verdict != Verdict::Match).count();
    if bad > 0 {
        panic!(
            "category {}: {bad} of {} sequences differ from the host CPU\n{}",
            cat.name(),
            all.len(),
            suite::summarize(&nat, &mut em, &all, 3)
        );
    }
}

#[test]
fn alu() {
    run_category(Category::Alu);
}

#[test]
fn mov() {
    run_category(Category::Mov);
}

#[test]
fn cmov_setcc() {
    run_category(Category::Cmov);
}

#[test]
fn atomic() {
    run_category(Category::Atomic);
}

#[test]
fn shift() {
    run_category(Category::Shift);
}

#[test]
fn muldiv() {
    run_category(Category::MulDiv);
}

#[test]
fn string() {
    run_category(Category::String);
}

#[test]
fn bcd() {
    run_category(Category::Bcd);
}

#[test]
fn bitops() {
    run_category(Category::BitOps);
}

#[test]
fn x87() {
    run_category(Category::X87);
}

#[test]
fn sse() {
    run_category(Category::Sse);
}

#[test]
fn memfault() {
    run_category(Category::MemFault);
}

#[test]
fn branch() {
    run_category(Category::Branch);
}

/// Every case in `tests/regressions/` must pass.
#[test]
fn regressions() {
    let (nat, mut em) = runners();
    let files = regress::load_dir(&regress::default_dir());
    let mut cases = Vec::new();
    let mut errors = Vec::new();
    for (p, r) in files {
        match r {
            Ok(c) => cases.push((p.display().to_string(), c)),
            Err(e) => errors.push(format!("{}: {e}", p.display())),
        }
    }
    assert!(
        errors.is_empty(),
        "unreadable regression cases:\n{}",
        errors.join("\n")
    );
    let res = check(&nat, &mut em, cases);
    let bad: Vec<String> = res
        .iter()
        .filter(|c| c.verdict != Verdict::Match)
        .map(|c| c.report())
        .collect();
    assert!(
        bad.is_empty(),
        "{} regression cases fail:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

/// The native runner is deterministic: the same cases give the same
/// outcomes, in both bitnesses and when they fault.
#[test]
fn native_is_deterministic() {
    let nat = NativeRunner::new().expect("native runner");
    let mut cases = Vec::new();
    for cat in Category::ALL {
        for &b in cat.bitnesses() {
            let g = Generator::new(cat, b);
            cases.extend((0..40).map(|s| g.case(s)));
        }
    }
    let a = nat.run(&cases);
    let b = nat.run(&cases);
    let errors: Vec<&Outcome> = a
        .iter()
        .filter(|o| matches!(o, Outcome::Error(_)))
        .collect();
    assert!(errors.is_empty(), "native errors: {errors:?}");
    let faults = a.iter().filter(|o| matches!(o, Outcome::Fault(..))).count();
    assert!(
        faults > 0,
        "some generated cases should fault (#DE, #GP...)"
    );
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_eq!(x, y, "case {i} differs between two native runs");
    }
}

fn simple_case(bitness: u32, code: &[u8]) -> Case {
    let mut c = Generator::new(Category::Alu, bitness).case(7);
    c.code = code.to_vec();
    c
}

/// Native faults are reported with the hardware vector and the address of
/// the faulting instruction; the 32-bit path runs in compatibility mode.
#[test]
fn native_faults_and_modes() {
    let nat = NativeRunner::new().expect("native runner");
    let mut div0 = simple_case(64, &[0x31, 0xc9, 0xf7, 0xf1]); // xor ecx,ecx; div ecx
    div0.init.gpr[2] = 0;
    let ud2 = simple_case(32, &[0x90, 0x0f, 0x0b]); // nop; ud2
    let pf = simple_case(32, &[0xa1, 0, 0, 0, 0]); // mov eax,[0]
                                                   // dec eax in 32-bit code (0x48), which is a REX prefix in 64-bit code.
    let mut dec32 = simple_case(32, &[0x48]);
    dec32.init.gpr[0] = 5;
    let out = nat.run(&[div0, ud2, pf, dec32]);
    match &out[0] {
        Outcome::Fault(0, s) => assert_eq!(s.rip, CODE_ADDR + 2),
        o => panic!("expected #DE: {o:?}"),
    }
    match &out[1] {
        Outcome::Fault(6, s) => assert_eq!(s.rip, CODE_ADDR + 1),
        o => panic!("expected #UD: {o:?}"),
    }
    assert!(
        matches!(out[2], Outcome::Fault(14, _)),
        "expected #PF: {:?}",
        out[2]
    );
    match &out[3] {
        Outcome::Done(s) => assert_eq!(s.gpr[0], 4),
        o => panic!("expected dec eax: {o:?}"),
    }
}

/// The comparison catches a wrong flag, register or memory byte, and
/// ignores undefined flags.
#[test]
fn comparator_detects_differences() {
    let (nat, mut em) = runners();
    // add [r15+8], edx; and eax, ecx (AF undefined at the end).
    let case = simple_case(64, &[0x41, 0x01, 0x57, 0x08, 0x21, 0xc8]);
    let r = check(&nat, &mut em, vec![("t".into(), case.clone())]).remove(0);
    assert_eq!(r.verdict, Verdict::Match, "{}", r.report());
    let an = analysis::analyze(64, &decode(64, &case.code)).expect("valid");
    let Outcome::Done(good) = r.native.clone() else {
        panic!("native failed")
    };
    let mutate = |f: &dyn Fn(&mut vireo_tests::diff::FinalState)| {
        let mut s = good.clone();
        f(&mut s);
        compare(&case, &an, &r.native, &Outcome::Done(s))
    };
    assert!(
        matches!(mutate(&|s| s.rflags ^= 1), Verdict::Mismatch(_)),
        "CF"
    );
    assert!(
        matches!(mutate(&|s| s.rflags ^= 1 << 10), Verdict::Mismatch(_)),
        "DF"
    );
    assert_eq!(
        mutate(&|s| s.rflags ^= 1 << 4),
        Verdict::Match,
        "AF is undefined after AND"
    );
    assert!(
        matches!(mutate(&|s| s.gpr[9] ^= 1 << 63), Verdict::Mismatch(_)),
        "r9"
    );
    assert!(
        matches!(mutate(&|s| s.data[9] ^= 4), Verdict::Mismatch(_)),
        "memory"
    );
    assert!(
        matches!(mutate(&|s| s.rip += 1), Verdict::Mismatch(_)),
        "rip"
    );
    assert!(matches!(
        compare(&case, &an, &r.native, &Outcome::Fault(6, good.clone())),
        Verdict::Mismatch(_)
    ));
}

/// Forward branches merge the undefined state of both paths; backward or
/// misaligned targets are rejected.
#[test]
fn analysis_branches() {
    let an = |code: &[u8]| analysis::analyze(64, &decode(64, code));
    // jz +2; mul ebx (skipped or not): SF may be undefined after the merge,
    // so sets al is rejected; with xor eax,eax instead of the mul it is fine.
    assert!(an(&[0x74, 0x02, 0xf7, 0xe3, 0x0f, 0x98, 0xc0]).is_err());
    assert!(an(&[0x74, 0x02, 0x31, 0xc0, 0x0f, 0x98, 0xc0]).is_ok());
    // mov cl,3 / shl eax,cl where the shift is a branch target: the count
    // is unknown there, so OF/AF/(CF) are undefined at the end.
    let a = an(&[0x74, 0x02, 0xb1, 0x01, 0xd3, 0xe0]).expect("valid");
    assert_ne!(a.end().rflags() & (1 << 11), 0);
    // Backward branch.
    assert!(an(&[0x90, 0xeb, 0xfd]).is_err());
    // push imm; ret: a precise forward target.
    let ret_ok = [0x68, 0xc6, 0x0f, 0x10, 0x00, 0xc3];
    assert!(an(&ret_ok).is_ok());
}

/// Undefined-state analysis: shift counts, BSF sources, REP counts.
#[test]
fn analysis_rules() {
    let flags = |bitness: u32, code: &[u8]| -> Result<(u64, u64), String> {
        let a = analysis::analyze(bitness, &decode(bitness, code))?;
        Ok((a.end().rflags(), a.end().gpr[0]))
    };
    const OF: u64 = 1 << 11;
    const AF: u64 = 1 << 4;
    const CF: u64 = 1;
    // shl eax,1: OF defined; shl eax,2: OF undefined; shl eax,0: nothing.
    assert_eq!(flags(64, &[0xc1, 0xe0, 0x01]).unwrap().0, AF);
    assert_eq!(flags(64, &[0xc1, 0xe0, 0x02]).unwrap().0, AF | OF);
    assert_eq!(flags(64, &[0xc1, 0xe0, 0x00]).unwrap().0, 0);
    // mov cl,9; shl al,cl: CF undefined (count >= 8).
    assert_eq!(
        flags(64, &[0xb1, 0x09, 0xd2, 0xe0]).unwrap().0,
        AF | OF | CF
    );
    // rol eax,3: only OF undefined; then adc reads CF (fine), jo-like reads
    // of OF are rejected: seto al.
    assert_eq!(flags(64, &[0xc1, 0xc0, 0x03]).unwrap().0, OF);
    assert!(flags(64, &[0xc1, 0xc0, 0x03, 0x0f, 0x90, 0xc0]).is_err());
    // bsf eax,ecx: EAX undefined unless ECX was made non-zero just before.
    assert_eq!(flags(64, &[0x0f, 0xbc, 0xc1]).unwrap().1, u64::MAX);
    assert_eq!(
        flags(64, &[0x81, 0xc9, 0x00, 0x01, 0, 0, 0x0f, 0xbc, 0xc1])
            .unwrap()
            .1,
        0
    );
    // mov ecx,0; repe cmpsb: flags untouched, so mul's undefined ones stay.
    let mul = [0xf7, 0xe3];
    let mut code = mul.to_vec();
    code.extend([0xb9, 0, 0, 0, 0, 0xf3, 0xa6]);
    let after_mul = flags(64, &mul).unwrap().0;
    assert_eq!(flags(64, &code).unwrap().0, after_mul);
    code[1 + 2] = 3; // mov ecx,3
    assert_eq!(flags(64, &code).unwrap().0, 0);
    // Writing the base register or RSP is rejected; PUSH is fine.
    assert!(flags(64, &[0x4d, 0x31, 0xff]).is_err()); // xor r15,r15
    assert!(flags(64, &[0x48, 0x89, 0xc4]).is_err()); // mov rsp,rax
    assert!(flags(64, &[0x50]).is_ok()); // push rax
                                         // fnstsw ax after fld1 (C0 C2 C3 undefined): those AX bits undefined.
    assert_eq!(flags(64, &[0xd9, 0xe8, 0xdf, 0xe0]).unwrap().1, 0x4500);
}

/// Regression files round-trip.
#[test]
fn regression_format_roundtrip() {
    for (cat, b) in [
        (Category::X87, 64),
        (Category::Sse, 32),
        (Category::Alu, 64),
    ] {
        let c = Generator::new(cat, b).case(3);
        let text = regress::to_text(&c, "comment\nmore");
        assert_eq!(regress::from_text(&text).expect("parses"), c);
    }
    assert!(regress::from_text("bitness 16").is_err());
    assert!(regress::from_text("gpr 16 0").is_err());
}

/// The reducer finds the shortest failing sequence for a synthetic oracle.
#[test]
fn reducer_shrinks() {
    // nop; inc eax; xor ecx,ecx; nop; add eax,ecx; nop
    let case = simple_case(64, &[0x90, 0xff, 0xc0, 0x31, 0xc9, 0x90, 0x01, 0xc8, 0x90]);
    // "Fails" when it contains both INC and ADD.
    let small = reduce::reduce_with(&case, |cands| {
        cands.iter().position(|c| {
            let m: Vec<_> = decode(64, &c.code).iter().map(|i| i.mnemonic()).collect();
            m.contains(&iced_x86::Mnemonic::Inc) && m.contains(&iced_x86::Mnemonic::Add)
        })
    });
    assert_eq!(small.code, vec![0xff, 0xc0, 0x01, 0xc8]);
}

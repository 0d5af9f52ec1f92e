//! Differential testing of the software CPU against the host CPU.
//!
//! A [`Case`] is a short straight-line sequence of user-level instructions
//! (machine code), a bitness (32 or 64) and an initial machine state. It runs
//! natively ([`native`]: in a forked child, at fixed addresses) and on
//! `vireo_emulator::cpu::Cpu` ([`emu`]: same linear addresses, same state),
//! and the final states are compared ([`compare`]) minus what the
//! architecture leaves undefined ([`analysis`]).
//!
//! Memory layout (identical in both runners):
//! - two code pages from [`CODE_PAGES`]; the sequence starts at [`CODE_ADDR`],
//!   64 bytes before the second page, so that most sequences cross the page
//!   boundary (then comes a jump to the exit stub),
//! - data buffer of [`DATA_SIZE`] bytes at [`DATA_ADDR`]; a base register
//!   (R15 in 64-bit code, EBP in 32-bit code) points at it and the stack
//!   pointer points into its middle.

pub mod analysis;
pub mod compare;
pub mod emu;
pub mod gen;
pub mod native;
pub mod reduce;
pub mod regress;
pub mod suite;

/// Linear address of the code pages.
pub const CODE_PAGES: u64 = 0x0010_0000;
/// Size of the code pages.
pub const CODE_SIZE: usize = 0x2000;
/// Where sequences start.
pub const CODE_ADDR: u64 = CODE_PAGES + 0x1000 - 64;
/// Linear address of the data buffer.
pub const DATA_ADDR: u64 = 0x0011_0000;
/// Size of the data buffer.
pub const DATA_SIZE: usize = 0x1000;
/// Longest sequence of machine code accepted (leaves room for the exit jump).
pub const MAX_CODE: usize = (CODE_PAGES + CODE_SIZE as u64 - CODE_ADDR) as usize - 64;

/// Index of the base register pointing at the data buffer (R15 / EBP).
pub fn base_reg(bitness: u32) -> usize {
    if bitness == 64 {
        15
    } else {
        5
    }
}

/// Architectural RFLAGS bits.
pub mod fl {
    /// Carry.
    pub const CF: u64 = 1 << 0;
    /// Parity.
    pub const PF: u64 = 1 << 2;
    /// Auxiliary carry.
    pub const AF: u64 = 1 << 4;
    /// Zero.
    pub const ZF: u64 = 1 << 6;
    /// Sign.
    pub const SF: u64 = 1 << 7;
    /// Interrupt enable.
    pub const IF: u64 = 1 << 9;
    /// Direction.
    pub const DF: u64 = 1 << 10;
    /// Overflow.
    pub const OF: u64 = 1 << 11;
    /// The six arithmetic flags.
    pub const ARITH: u64 = CF | PF | AF | ZF | SF | OF;
    /// What the comparison looks at.
    pub const COMPARED: u64 = ARITH | DF;
}

/// x87 state in physical-register order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct X87State {
    /// Control word.
    pub cw: u16,
    /// Status word including TOP (bits 11–13).
    pub sw: u16,
    /// Bit i set when physical register Ri is not empty.
    pub valid: u8,
    /// Physical registers R0–R7: (significand, sign|exponent).
    pub regs: [(u64, u16); 8],
}

impl Default for X87State {
    fn default() -> Self {
        X87State {
            cw: 0x037f,
            sw: 0,
            valid: 0,
            regs: [(0, 0); 8],
        }
    }
}

impl X87State {
    /// TOP field of the status word.
    pub fn top(&self) -> u8 {
        ((self.sw >> 11) & 7) as u8
    }

    /// Builds a 512-byte FXSAVE image holding this x87 state, `mxcsr` and
    /// `xmm` (SDM vol. 2 FXSAVE, table 3-53).
    pub fn to_fxsave(&self, mxcsr: u32, xmm: &[u128; 16]) -> [u8; 512] {
        let mut a = [0u8; 512];
        a[0..2].copy_from_slice(&self.cw.to_le_bytes());
        a[2..4].copy_from_slice(&self.sw.to_le_bytes());
        a[4] = self.valid;
        a[24..28].copy_from_slice(&mxcsr.to_le_bytes());
        a[28..32].copy_from_slice(&0xffffu32.to_le_bytes());
        let top = self.top();
        for i in 0..8 {
            // The register area is in stack order: ST(i) = R((TOP + i) mod 8).
            let (m, e) = self.regs[((top as usize) + i) & 7];
            let o = 32 + 16 * i;
            a[o..o + 8].copy_from_slice(&m.to_le_bytes());
            a[o + 8..o + 10].copy_from_slice(&e.to_le_bytes());
        }
        for (i, x) in xmm.iter().enumerate() {
            let o = 160 + 16 * i;
            a[o..o + 16].copy_from_slice(&x.to_le_bytes());
        }
        a
    }

    /// Parses an FXSAVE image: (x87 state, MXCSR, XMM0–15).
    pub fn from_fxsave(a: &[u8; 512]) -> (X87State, u32, [u128; 16]) {
        let u16_at = |o: usize| u16::from_le_bytes([a[o], a[o + 1]]);
        let mut st = X87State {
            cw: u16_at(0),
            sw: u16_at(2),
            valid: a[4],
            regs: [(0, 0); 8],
        };
        let top = st.top() as usize;
        for i in 0..8 {
            let o = 32 + 16 * i;
            let mut m = [0u8; 8];
            m.copy_from_slice(&a[o..o + 8]);
            st.regs[(top + i) & 7] = (u64::from_le_bytes(m), u16_at(o + 8));
        }
        let mxcsr = u32::from_le_bytes([a[24], a[25], a[26], a[27]]);
        let mut xmm = [0u128; 16];
        for (i, x) in xmm.iter_mut().enumerate() {
            let o = 160 + 16 * i;
            let mut b = [0u8; 16];
            b.copy_from_slice(&a[o..o + 16]);
            *x = u128::from_le_bytes(b);
        }
        (st, mxcsr, xmm)
    }

    /// The full 2-bit tag of physical register `i` (SDM vol. 1 §8.1.7):
    /// 0 valid, 1 zero, 2 special, 3 empty.
    pub fn full_tag(&self, i: usize) -> u16 {
        if self.valid & (1 << i) == 0 {
            return 3;
        }
        let (m, se) = self.regs[i];
        let e = se & 0x7fff;
        if e == 0 && m == 0 {
            1
        } else if e == 0x7fff || e == 0 || m >> 63 == 0 {
            2
        } else {
            0
        }
    }

    /// The full tag word.
    pub fn tag_word(&self) -> u16 {
        (0..8).fold(0, |t, i| t | (self.full_tag(i) << (2 * i)))
    }
}

/// The architectural state a case starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitState {
    /// RAX..R15 (in 32-bit cases only the low halves of the first 8 matter).
    pub gpr: [u64; 16],
    /// Arithmetic flags and DF.
    pub rflags: u64,
    /// XMM0–15.
    pub xmm: [u128; 16],
    /// MXCSR.
    pub mxcsr: u32,
    /// x87 state.
    pub x87: X87State,
    /// Contents of the data buffer ([`DATA_SIZE`] bytes).
    pub data: Vec<u8>,
}

/// One test case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    /// 32 or 64.
    pub bitness: u32,
    /// Machine code of the sequence (placed at [`CODE_ADDR`]).
    pub code: Vec<u8>,
    /// Initial state.
    pub init: InitState,
}

/// Architectural state at the end of a run (or at an exception).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinalState {
    /// RAX..R15.
    pub gpr: [u64; 16],
    /// Instruction pointer.
    pub rip: u64,
    /// RFLAGS.
    pub rflags: u64,
    /// XMM0–15.
    pub xmm: [u128; 16],
    /// MXCSR.
    pub mxcsr: u32,
    /// x87 state.
    pub x87: X87State,
    /// Contents of the data buffer.
    pub data: Vec<u8>,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Reached the end of the sequence.
    Done(FinalState),
    /// An exception (vector) was raised; the state is the one at the fault
    /// (RIP = the faulting instruction).
    Fault(u8, FinalState),
    /// The harness failed (crash outside the sequence, timeout, setup error).
    Error(String),
}

impl Outcome {
    /// The final state, if there is one.
    pub fn state(&self) -> Option<&FinalState> {
        match self {
            Outcome::Done(s) | Outcome::Fault(_, s) => Some(s),
            Outcome::Error(_) => None,
        }
    }
}

/// Name of exception vector `v`.
pub fn vector_name(v: u8) -> &'static str {
    match v {
        0 => "#DE",
        1 => "#DB",
        3 => "#BP",
        4 => "#OF",
        5 => "#BR",
        6 => "#UD",
        7 => "#NM",
        8 => "#DF",
        12 => "#SS",
        13 => "#GP",
        14 => "#PF",
        16 => "#MF",
        17 => "#AC",
        19 => "#XM",
        _ => "#?",
    }
}

/// Decodes a case's code into instructions at their run-time addresses.
pub fn decode(bitness: u32, code: &[u8]) -> Vec<iced_x86::Instruction> {
    let mut d =
        iced_x86::Decoder::with_ip(bitness, code, CODE_ADDR, iced_x86::DecoderOptions::NONE);
    let mut v = Vec::new();
    while d.can_decode() {
        v.push(d.decode());
    }
    v
}

/// Intel-syntax disassembly of a case's code, one instruction a line.
pub fn disassemble(bitness: u32, code: &[u8]) -> String {
    use iced_x86::Formatter;
    let mut f = iced_x86::IntelFormatter::new();
    f.options_mut().set_first_operand_char_index(10);
    let mut out = String::new();
    for ins in decode(bitness, code) {
        let start = (ins.ip() - CODE_ADDR) as usize;
        let bytes = &code[start..(start + ins.len()).min(code.len())];
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mut s = String::new();
        f.format(&ins, &mut s);
        out.push_str(&format!("  {:08x}  {:<30} {}\n", ins.ip(), hex, s));
    }
    out
}

/// Encodes instructions one after the other from [`CODE_ADDR`].
pub fn encode(bitness: u32, insns: &[iced_x86::Instruction]) -> Result<Vec<u8>, String> {
    let mut enc = iced_x86::Encoder::new(bitness);
    let mut ip = CODE_ADDR;
    for ins in insns {
        let n = enc.encode(ins, ip).map_err(|e| format!("{e} ({ins:?})"))?;
        ip += n as u64;
    }
    let code = enc.take_buffer();
    if code.len() > MAX_CODE {
        return Err("sequence too long".into());
    }
    Ok(code)
}

/// Which extended state the comparison of a case covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Coverage {
    /// Compare XMM registers and MXCSR.
    pub sse: bool,
    /// Compare the x87 state.
    pub x87: bool,
}

/// A case run on both sides and compared.
#[derive(Debug, Clone)]
pub struct Checked {
    /// Where the case came from (seed and category, or a file name).
    pub label: String,
    /// The case.
    pub case: Case,
    /// Its undefined-state analysis.
    pub analysis: analysis::Analysis,
    /// Host outcome.
    pub native: Outcome,
    /// Emulator outcome.
    pub emu: Outcome,
    /// The comparison.
    pub verdict: compare::Verdict,
}

impl Checked {
    /// The full report.
    pub fn report(&self) -> String {
        compare::report(&self.label, &self.case, &self.analysis, &self.verdict)
    }
}

/// Runs `cases` natively (one batch) and on the emulator, and compares.
pub fn check(
    native: &native::NativeRunner,
    emu: &mut emu::EmuRunner,
    cases: Vec<(String, Case)>,
) -> Vec<Checked> {
    let plain: Vec<Case> = cases.iter().map(|(_, c)| c.clone()).collect();
    let nat = native.run(&plain);
    cases
        .into_iter()
        .zip(nat)
        .map(|((label, case), native)| {
            let an = analysis::analyze(case.bitness, &decode(case.bitness, &case.code));
            match an {
                Ok(analysis) => {
                    let mut emu_out = emu.run(&case);
                    let mut verdict = compare::compare(&case, &analysis, &native, &emu_out);
                    if verdict == compare::Verdict::Match {
                        // Again with whole blocks (Cpu::run), as guests run.
                        let blocks = emu.run_blocks(&case);
                        if let compare::Verdict::Mismatch(lines) =
                            compare::compare(&case, &analysis, &native, &blocks)
                        {
                            let mut v = vec![
                                "(only when run with Cpu::run; Cpu::step matches)".to_string()
                            ];
                            v.extend(lines);
                            verdict = compare::Verdict::Mismatch(v);
                            emu_out = blocks;
                        }
                    }
                    Checked {
                        label,
                        case,
                        analysis,
                        native,
                        emu: emu_out,
                        verdict,
                    }
                }
                Err(e) => Checked {
                    label,
                    case,
                    analysis: analysis::Analysis::default(),
                    native,
                    emu: Outcome::Error(String::new()),
                    verdict: compare::Verdict::NativeError(format!("invalid case: {e}")),
                },
            }
        })
        .collect()
}

//! The arithmetic operations the x87 front end hands to a compute backend.
//!
//! Each operation works on at most two stack operands (`a` = ST(0), `b` =
//! ST(1) or ST(i)) and one memory operand, with the guest's control word, and
//! returns what a real FPU leaves behind: up to two stack values, the memory
//! image of a store, and the status word (exception flags and condition
//! codes). Stack faults, TOP and tags are handled by the caller.

/// An 80-bit extended-precision value: (significand, sign << 15 | exponent).
pub(crate) type F80 = (u64, u16);

/// Result of an operation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Out {
    /// Host ST(0) after the operation.
    pub r0: F80,
    /// Host ST(1) after the operation.
    pub r1: F80,
    /// Memory operand after the operation (stores).
    pub mem: [u8; 10],
    /// Status word after the operation (TOP meaningless).
    pub sw: u16,
}

macro_rules! hops {
    ($($name:ident = $nin:tt $nout:tt $mem:tt $asm:literal;)*) => {
        /// An operation: `NIN` stack inputs loaded as ST(0) = a, ST(1) = b,
        /// the instruction, `NOUT` stack values left.
        #[allow(non_camel_case_types, clippy::upper_case_acronyms)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(u8)]
        pub(crate) enum HOp { $($name),* }

        impl HOp {
            /// Every operation.
            #[cfg(all(test, target_arch = "x86_64"))]
            pub(crate) const ALL: &[HOp] = &[$(HOp::$name),*];

            /// Bytes of the memory operand (0 if none).
            pub(crate) fn mem_len(self) -> usize {
                const LEN: &[usize] = &[$($mem),*];
                LEN[self as usize]
            }
        }

        #[cfg(target_arch = "x86_64")]
        #[allow(non_snake_case)]
        mod host_fns {
            $(
                pub(super) fn $name(f: &mut super::super::host::Frame) {
                    host_x87_op!(f, $nin, $nout, $asm);
                }
            )*
        }

        /// Host implementations, indexed by [`HOp`].
        #[cfg(target_arch = "x86_64")]
        pub(crate) const HOST: &[fn(&mut super::host::Frame)] = &[$(host_fns::$name),*];
    };
}

// Register-form arithmetic is written as raw bytes: assemblers disagree on
// which of FSUB/FSUBR (and FDIV/FDIVR) the ST(i)-destination forms are.
hops! {
    // ST(0) = ST(0) op ST(1)   (D8 /r register forms).
    ADD0 = 2 2 0 ".byte 0xd8, 0xc1";
    MUL0 = 2 2 0 ".byte 0xd8, 0xc9";
    SUB0 = 2 2 0 ".byte 0xd8, 0xe1";
    SUBR0 = 2 2 0 ".byte 0xd8, 0xe9";
    DIV0 = 2 2 0 ".byte 0xd8, 0xf1";
    DIVR0 = 2 2 0 ".byte 0xd8, 0xf9";
    // ST(1) = ST(1) op ST(0)   (DC /r register forms).
    ADD1 = 2 2 0 ".byte 0xdc, 0xc1";
    MUL1 = 2 2 0 ".byte 0xdc, 0xc9";
    SUB1 = 2 2 0 ".byte 0xdc, 0xe9";
    SUBR1 = 2 2 0 ".byte 0xdc, 0xe1";
    DIV1 = 2 2 0 ".byte 0xdc, 0xf9";
    DIVR1 = 2 2 0 ".byte 0xdc, 0xf1";
    // ST(0) = ST(0) op memory.
    ADD_M32 = 1 1 4 "fadd dword ptr [{f} + 64]";
    MUL_M32 = 1 1 4 "fmul dword ptr [{f} + 64]";
    SUB_M32 = 1 1 4 "fsub dword ptr [{f} + 64]";
    SUBR_M32 = 1 1 4 "fsubr dword ptr [{f} + 64]";
    DIV_M32 = 1 1 4 "fdiv dword ptr [{f} + 64]";
    DIVR_M32 = 1 1 4 "fdivr dword ptr [{f} + 64]";
    ADD_M64 = 1 1 8 "fadd qword ptr [{f} + 64]";
    MUL_M64 = 1 1 8 "fmul qword ptr [{f} + 64]";
    SUB_M64 = 1 1 8 "fsub qword ptr [{f} + 64]";
    SUBR_M64 = 1 1 8 "fsubr qword ptr [{f} + 64]";
    DIV_M64 = 1 1 8 "fdiv qword ptr [{f} + 64]";
    DIVR_M64 = 1 1 8 "fdivr qword ptr [{f} + 64]";
    IADD_M16 = 1 1 2 "fiadd word ptr [{f} + 64]";
    IMUL_M16 = 1 1 2 "fimul word ptr [{f} + 64]";
    ISUB_M16 = 1 1 2 "fisub word ptr [{f} + 64]";
    ISUBR_M16 = 1 1 2 "fisubr word ptr [{f} + 64]";
    IDIV_M16 = 1 1 2 "fidiv word ptr [{f} + 64]";
    IDIVR_M16 = 1 1 2 "fidivr word ptr [{f} + 64]";
    IADD_M32 = 1 1 4 "fiadd dword ptr [{f} + 64]";
    IMUL_M32 = 1 1 4 "fimul dword ptr [{f} + 64]";
    ISUB_M32 = 1 1 4 "fisub dword ptr [{f} + 64]";
    ISUBR_M32 = 1 1 4 "fisubr dword ptr [{f} + 64]";
    IDIV_M32 = 1 1 4 "fidiv dword ptr [{f} + 64]";
    IDIVR_M32 = 1 1 4 "fidivr dword ptr [{f} + 64]";
    // Comparisons of ST(0) with ST(1), memory, or 0.
    COM = 2 2 0 ".byte 0xd8, 0xd1";
    UCOM = 2 2 0 ".byte 0xdd, 0xe1";
    COM_M32 = 1 1 4 "fcom dword ptr [{f} + 64]";
    COM_M64 = 1 1 8 "fcom qword ptr [{f} + 64]";
    ICOM_M16 = 1 1 2 "ficom word ptr [{f} + 64]";
    ICOM_M32 = 1 1 4 "ficom dword ptr [{f} + 64]";
    TST = 1 1 0 "ftst";
    // Loads (push).
    LD_M32 = 0 1 4 "fld dword ptr [{f} + 64]";
    LD_M64 = 0 1 8 "fld qword ptr [{f} + 64]";
    ILD_M16 = 0 1 2 "fild word ptr [{f} + 64]";
    ILD_M32 = 0 1 4 "fild dword ptr [{f} + 64]";
    ILD_M64 = 0 1 8 "fild qword ptr [{f} + 64]";
    BLD = 0 1 10 "fbld tbyte ptr [{f} + 64]";
    LD1 = 0 1 0 "fld1";
    LDL2T = 0 1 0 "fldl2t";
    LDL2E = 0 1 0 "fldl2e";
    LDPI = 0 1 0 "fldpi";
    LDLG2 = 0 1 0 "fldlg2";
    LDLN2 = 0 1 0 "fldln2";
    LDZ = 0 1 0 "fldz";
    // Stores of ST(0).
    ST_M32 = 1 1 4 "fst dword ptr [{f} + 64]";
    ST_M64 = 1 1 8 "fst qword ptr [{f} + 64]";
    IST_M16 = 1 1 2 "fist word ptr [{f} + 64]";
    IST_M32 = 1 1 4 "fist dword ptr [{f} + 64]";
    ISTP_M64 = 1 0 8 "fistp qword ptr [{f} + 64]";
    ISTTP_M16 = 1 0 2 "fisttp word ptr [{f} + 64]";
    ISTTP_M32 = 1 0 4 "fisttp dword ptr [{f} + 64]";
    ISTTP_M64 = 1 0 8 "fisttp qword ptr [{f} + 64]";
    BSTP = 1 0 10 "fbstp tbyte ptr [{f} + 64]";
    // ST(0) = f(ST(0)).
    SQRT = 1 1 0 "fsqrt";
    RNDINT = 1 1 0 "frndint";
    SIN = 1 1 0 "fsin";
    COS = 1 1 0 "fcos";
    F2XM1 = 1 1 0 "f2xm1";
    // Replace ST(0) and push.
    SINCOS = 1 2 0 "fsincos";
    PTAN = 1 2 0 "fptan";
    XTRACT = 1 2 0 "fxtract";
    // ST(0) = f(ST(0), ST(1)).
    PREM = 2 2 0 "fprem";
    PREM1 = 2 2 0 "fprem1";
    SCALE = 2 2 0 "fscale";
    // ST(1) = f(ST(1), ST(0)), pop.
    PATAN = 2 1 0 "fpatan";
    YL2X = 2 1 0 "fyl2x";
    YL2XP1 = 2 1 0 "fyl2xp1";
}

/// Runs `op` with control word `cw` on ST(0) = `a`, ST(1) = `b` and memory
/// operand `mem` (SDM vol. 2, the instruction `op` stands for).
#[cfg(target_arch = "x86_64")]
pub(crate) fn compute(op: HOp, cw: u16, a: F80, b: F80, mem: &[u8; 10]) -> Out {
    #[cfg(test)]
    if super::soft::FORCE.with(|f| f.get()) {
        return super::soft::run(op, cw, a, b, mem);
    }
    super::host::run(op, cw, a, b, mem)
}

/// Runs `op` with control word `cw` on ST(0) = `a`, ST(1) = `b` and memory
/// operand `mem` (software approximation).
#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn compute(op: HOp, cw: u16, a: F80, b: F80, mem: &[u8; 10]) -> Out {
    super::soft::run(op, cw, a, b, mem)
}

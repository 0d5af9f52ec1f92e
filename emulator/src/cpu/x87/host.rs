//! Compute backend using the host's own x87 unit (x86-64 hosts): the guest's
//! operands are loaded into the host FPU, the same instruction runs under the
//! guest's control word, and the results and status word are read back, so
//! results are bit-exact, including the transcendental instructions.

use super::ops::{HOp, Out, F80, HOST};

/// Scratch area shared with the assembly (offsets are fixed in
/// `host_x87_op!`).
#[repr(C, align(16))]
#[derive(Default)]
pub(crate) struct Frame {
    /// 0: ST(0) input.
    a: [u8; 16],
    /// 16: ST(1) input.
    b: [u8; 16],
    /// 32: ST(0) output.
    r0: [u8; 16],
    /// 48: ST(1) output.
    r1: [u8; 16],
    /// 64: memory operand.
    mem: [u8; 16],
    /// 80: guest control word.
    cw: u16,
    /// 82: status word after the operation.
    sw: u16,
    /// 84: the host's control word, restored at the end.
    save_cw: u16,
    /// 86: control word with everything masked, for loads and stores.
    masked_cw: u16,
    /// 88: status word on entry (for TOP).
    sw_in: u16,
    /// 90: status word at the end (for TOP).
    sw_out: u16,
}

/// Emits the body of a host operation: save the host control word, load
/// `$nin` operands, clear flags, switch to the guest control word, run `$op`,
/// read the status word, clear flags (so nothing traps later), switch to an
/// all-masked control word, store `$nout` values, restore the control word.
/// The x87 registers are declared clobbered; the stack is left empty.
macro_rules! host_x87_op {
    ($f:expr, $nin:tt, $nout:tt, $op:literal) => {
        // SAFETY: the assembly only touches the x87 unit (declared clobbered,
        // left empty with the caller's control word restored; flags cleared)
        // and the `Frame` behind `$f`, which is valid for reads and writes of
        // all the offsets used.
        unsafe {
            core::arch::asm!(
                "fnstcw word ptr [{f} + 84]",
                "fnstsw word ptr [{f} + 88]",
                "fldcw word ptr [{f} + 86]",
                host_x87_op!(@load $nin),
                "fnclex",
                "fldcw word ptr [{f} + 80]",
                $op,
                "fnstsw word ptr [{f} + 82]",
                "fnclex",
                "fldcw word ptr [{f} + 86]",
                host_x87_op!(@store $nout),
                "fnstsw word ptr [{f} + 90]",
                "fnclex",
                "fldcw word ptr [{f} + 84]",
                f = in(reg) $f as *mut _,
                out("st(0)") _, out("st(1)") _, out("st(2)") _, out("st(3)") _,
                out("st(4)") _, out("st(5)") _, out("st(6)") _, out("st(7)") _,
                options(nostack),
            )
        }
    };
    (@load 0) => { "" };
    (@load 1) => { "fld tbyte ptr [{f}]" };
    (@load 2) => { "fld tbyte ptr [{f} + 16]\nfld tbyte ptr [{f}]" };
    (@store 0) => { "" };
    (@store 1) => { "fstp tbyte ptr [{f} + 32]" };
    (@store 2) => { "fstp tbyte ptr [{f} + 32]\nfstp tbyte ptr [{f} + 48]" };
}

fn put(dst: &mut [u8; 16], v: F80) {
    dst[..8].copy_from_slice(&v.0.to_le_bytes());
    dst[8..10].copy_from_slice(&v.1.to_le_bytes());
}

fn get(src: &[u8; 16]) -> F80 {
    let mut m = [0u8; 8];
    m.copy_from_slice(&src[..8]);
    (u64::from_le_bytes(m), u16::from_le_bytes([src[8], src[9]]))
}

/// Resets the host FPU after an operation that left the stack unbalanced
/// (an unmasked exception or an out-of-range operand stopped a push or pop).
#[cold]
fn reset() {
    let mut cw = 0u16;
    // SAFETY: FNINIT empties the x87 stack (declared clobbered) and the
    // control word saved just before is restored; `cw` is a valid local.
    unsafe {
        core::arch::asm!(
            "fnstcw word ptr [{p}]",
            "fninit",
            "fldcw word ptr [{p}]",
            p = in(reg) &mut cw as *mut u16,
            out("st(0)") _, out("st(1)") _, out("st(2)") _, out("st(3)") _,
            out("st(4)") _, out("st(5)") _, out("st(6)") _, out("st(7)") _,
            options(nostack),
        )
    }
}

/// Runs `op` on the host FPU.
pub(crate) fn run(op: HOp, cw: u16, a: F80, b: F80, mem: &[u8; 10]) -> Out {
    let mut f = Frame {
        cw,
        masked_cw: 0x037f,
        ..Default::default()
    };
    put(&mut f.a, a);
    put(&mut f.b, b);
    f.mem[..10].copy_from_slice(mem);
    HOST[op as usize](&mut f);
    if (f.sw_out ^ f.sw_in) & 0x3800 != 0 {
        reset();
    }
    let mut out_mem = [0u8; 10];
    out_mem.copy_from_slice(&f.mem[..10]);
    Out {
        r0: get(&f.r0),
        r1: get(&f.r1),
        mem: out_mem,
        sw: f.sw,
    }
}

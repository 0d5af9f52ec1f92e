//! Tests: x87 machine code run through `Cpu::run`, with expected values
//! obtained by running the same code on a real x86-64 CPU, plus (on x86-64
//! hosts) a differential fuzzer against the host FPU.

use super::*;
use crate::bus::AddressSpace;
use crate::cpu::{Cpu, Segment, DS, ES, FS, GS, SS};
use crate::memory::GuestRam;
use std::sync::Arc;

const CODE: u64 = 0x1000;
const DATA: u64 = 0x8000;
#[cfg(target_arch = "x86_64")]
const DATA_LEN: usize = 192;

/// A CPU in flat 32-bit protected mode, EBX pointing at the data area.
struct Emu {
    cpu: Cpu,
    space: Arc<AddressSpace>,
}

impl Emu {
    fn new() -> Self {
        let ram = GuestRam::new(1 << 20).unwrap();
        let space = Arc::new(AddressSpace::new(ram));
        let mut cpu = Cpu::new(space.clone());
        // The tests start from the FNINIT state, as an OS leaves it.
        cpu.x87 = X87::default();
        cpu.cr0 |= cr0::PE | cr0::NE;
        cpu.seg[CS] = Segment::flat32(8, true);
        for s in [ES, SS, DS, FS, GS] {
            cpu.seg[s] = Segment::flat32(16, false);
        }
        cpu.gpr[4] = 0x7000;
        Emu { cpu, space }
    }

    /// Runs `code` (then HLT) from `CODE` with EBX = `DATA`.
    fn run(&mut self, code: &[u8]) {
        self.run_at(CODE, DATA, code);
    }

    /// Runs `code` (then HLT) from `at` with EBX = `data`.
    fn run_at(&mut self, at: u64, data: u64, code: &[u8]) {
        let mut c = code.to_vec();
        c.push(0xf4);
        self.space.ram.write_bytes(at, &c);
        self.cpu.cache.clear();
        self.cpu.tlb.flush_all();
        self.cpu.rip = at;
        self.cpu.halted = false;
        self.cpu.shutdown = false;
        self.cpu.last_exception = None;
        self.cpu.gpr[3] = data;
        self.cpu.run(100);
    }

    fn set_data(&self, d: &[u8]) {
        self.space.ram.write_bytes(DATA, d);
    }

    fn data(&self, n: usize) -> Vec<u8> {
        let mut v = vec![0; n];
        self.space.ram.read_bytes(DATA, &mut v);
        v
    }

    fn x(&mut self) -> &mut X87 {
        &mut self.cpu.x87
    }
}

#[cfg(target_arch = "x86_64")]
/// The 108-byte FSAVE image (32-bit protected-mode layout) of `x`.
fn image(x: &X87) -> [u8; 108] {
    let f = EnvFormat {
        wide: true,
        real: false,
    };
    let mut b = [0u8; 108];
    b[..28].copy_from_slice(&env_image(x, &f));
    for i in 0..8 {
        b[28 + 10 * i..38 + 10 * i].copy_from_slice(&f80_bytes(x.st(i)));
    }
    b
}

#[cfg(target_arch = "x86_64")]
/// Loads a 108-byte FSAVE image (32-bit protected-mode layout).
fn from_image(b: &[u8; 108]) -> X87 {
    let mut x = X87::default();
    let top = (u16::from_le_bytes([b[4], b[5]]) >> 11) as usize & 7;
    for i in 0..8 {
        x.regs[(top + i) & 7] = bytes_f80(&b[28 + 10 * i..38 + 10 * i]);
    }
    load_env(
        &mut x,
        &b[..28],
        &EnvFormat {
            wide: true,
            real: false,
        },
    );
    x
}

const ONE: F80 = (1 << 63, 0x3fff);
const TWO: F80 = (1 << 63, 0x4000);
const THREE: F80 = (0xc000_0000_0000_0000, 0x4000);
const PI: F80 = (0xc90f_daa2_2168_c235, 0x4000);
const QNAN: F80 = (0xc000_0000_0000_0001, 0x7fff);
const SNAN: F80 = (0xa000_0000_0000_0000, 0x7fff);
const INF: F80 = (1 << 63, 0x7fff);

fn neg(v: F80) -> F80 {
    (v.0, v.1 ^ 0x8000)
}

fn stack(e: &mut Emu, vals: &[F80]) {
    for v in vals.iter().rev() {
        e.x().push(*v);
    }
}

// ---------------------------------------------------------------------------
// Unit tests. Expected values come from the same code run natively.

#[test]
fn reset_state() {
    let x = X87::default();
    assert_eq!(
        (x.cw, x.status(), x.tag, x.full_tag()),
        (0x037f, 0, 0xffff, 0xffff)
    );
    let x = X87::at_reset();
    assert_eq!(
        (x.cw, x.status(), x.tag, x.full_tag()),
        (0x0040, 0, 0x5555, 0x5555)
    );
}

#[test]
fn load_add_store_m64() {
    let mut e = Emu::new();
    e.set_data(&[0; 16]);
    // fld1; fldpi; faddp; fstp qword [ebx]
    e.run(&[0xd9, 0xe8, 0xd9, 0xeb, 0xde, 0xc1, 0xdd, 0x1b]);
    assert_eq!(e.cpu.last_exception, None);
    let q = u64::from_le_bytes(e.data(8).try_into().unwrap());
    assert_eq!(f64::from_bits(q), 1.0 + std::f64::consts::PI);
    // PE set (C1 cleared by the exact store), stack empty again.
    assert_eq!(e.x().status(), 0x0020);
    assert_eq!(e.x().tag, 0xffff);
}

#[test]
fn rounding_modes_and_precision() {
    // 1/3 in each rounding mode at extended precision: fld1; fld st0+... via
    // fldcw [ebx]; fld1; fidiv word [ebx+2] (3); fstp tbyte [ebx+16]
    let code = [0xd9, 0x2b, 0xd9, 0xe8, 0xde, 0x73, 0x02, 0xdb, 0x7b, 0x10];
    // (control word, significand, status word) from the host.
    let cases: [(u16, u64, u16); 6] = [
        (0x037f, 0xaaaa_aaaa_aaaa_aaab, 0x0020),
        (0x077f, 0xaaaa_aaaa_aaaa_aaaa, 0x0020),
        (0x0b7f, 0xaaaa_aaaa_aaaa_aaab, 0x0020),
        (0x0f7f, 0xaaaa_aaaa_aaaa_aaaa, 0x0020),
        (0x027f, 0xaaaa_aaaa_aaaa_a800, 0x0020), // double precision
        (0x007f, 0xaaaa_ab00_0000_0000, 0x0020), // single precision
    ];
    for (cw, sig, sw) in cases {
        let mut e = Emu::new();
        let mut d = [0u8; 32];
        d[..2].copy_from_slice(&cw.to_le_bytes());
        d[2..4].copy_from_slice(&3u16.to_le_bytes());
        e.set_data(&d);
        e.run(&code);
        let out = e.data(26);
        assert_eq!(bytes_f80(&out[16..26]), (sig, 0x3ffd), "cw {cw:#x}");
        assert_eq!(e.x().status(), sw, "cw {cw:#x}");
    }
}

#[test]
fn compare_and_unordered() {
    let mut e = Emu::new();
    stack(&mut e, &[ONE, TWO]);
    // fcom st1; fnstsw ax
    e.run(&[0xd8, 0xd1, 0xdf, 0xe0]);
    assert_eq!(e.cpu.gpr[0] & 0xffff, 0x3100); // less: C0
    stack(&mut e, &[QNAN]);
    // fucom st1 (QNaN: no IE), fnstsw ax
    e.run(&[0xdd, 0xe1, 0xdf, 0xe0]);
    assert_eq!(e.cpu.gpr[0] & 0xffff, 0x4500 | (5 << 11)); // unordered
                                                           // fcom st1: IE
    e.run(&[0xd8, 0xd1, 0xdf, 0xe0]);
    assert_eq!(e.cpu.gpr[0] & 0xffff, 0x4501 | (5 << 11));
    // fcomip st1: ZF PF CF
    e.run(&[0xdf, 0xf1]);
    let f = e.cpu.flags.get();
    assert_eq!(
        f & (flags::ZF | flags::PF | flags::CF),
        flags::ZF | flags::PF | flags::CF
    );
    assert_eq!(e.x().top, 6);
}

#[test]
fn stack_overflow_and_underflow() {
    let mut e = Emu::new();
    // 9 × fld1: the ninth overflows: IE|SF, C1 = 1, indefinite pushed.
    e.run(&[0xd9, 0xe8].repeat(9));
    assert_eq!(e.x().status(), 0x3a41);
    assert_eq!(e.x().st(0), INDEF);
    assert_eq!(e.x().st(1), ONE);
    // Underflow: fninit; fadd st0, st1 → IE|SF, C1 = 0.
    e.run(&[0xdb, 0xe3, 0xd8, 0xc1]);
    assert_eq!(e.x().status(), 0x0041);
    assert_eq!(e.x().st(0), INDEF);
    // Unmasked: fninit; fldcw [ebx] (IM clear); fld1 ×2; fstp st(2)... use
    // fxch st(3) with st(3) empty: ES and B, no change.
    e.set_data(&0x037eu16.to_le_bytes());
    e.run(&[0xdb, 0xe3, 0xd9, 0x2b, 0xd9, 0xe8, 0xd9, 0xcb]);
    assert_eq!(e.x().status(), 0xb8c1);
    assert_eq!(e.x().st(0), ONE);
    // The next waiting instruction raises #MF (CR0.NE = 1).
    e.run(&[0xd9, 0xe8]);
    assert_eq!(e.cpu.last_exception.map(|x| x.vector), Some(vec::MF));
}

#[test]
fn fxam_classes() {
    // (value, expected C3 C2 C1 C0 bits) from the host.
    let cases: [(F80, u16); 10] = [
        (ONE, 0x0400),
        (neg(ONE), 0x0600),
        ((0, 0), 0x4000),
        ((0, 0x8000), 0x4200),
        ((1, 0), 0x4400),
        ((1 << 63, 0), 0x4400),
        (INF, 0x0500),
        (QNAN, 0x0100),
        ((1 << 62, 0x3fff), 0x0000),
        ((0, 0x7fff), 0x0000),
    ];
    for (v, want) in cases {
        let mut e = Emu::new();
        stack(&mut e, &[v]);
        e.run(&[0xd9, 0xe5]);
        assert_eq!(e.x().status() & 0x4700, want, "{v:x?}");
    }
    let mut e = Emu::new();
    e.run(&[0xd9, 0xe5]);
    assert_eq!(e.x().status() & 0x4700, 0x4100); // empty
}

#[test]
fn integer_store_overflow_and_denormals() {
    let mut e = Emu::new();
    e.set_data(&[0x55; 32]);
    // fld1; fscale would need st1... use: fldpi; fmul st0,st0 x6 → ~ 9.6e2.. ;
    // simpler: fld tbyte [ebx+16] (2^40); fist word [ebx]; fistp dword [ebx+4]
    let mut d = [0u8; 32];
    d[16..26].copy_from_slice(&f80_bytes((1 << 63, 0x3fff + 40)));
    e.set_data(&d);
    e.run(&[0xdb, 0x6b, 0x10, 0xdf, 0x13, 0xdb, 0x5b, 0x04]);
    let out = e.data(8);
    assert_eq!(&out[..2], &[0x00, 0x80]); // integer indefinite
    assert_eq!(&out[4..8], &[0x00, 0x00, 0x00, 0x80]);
    assert_eq!(e.x().status() & 0x3f, IE);
    // A single-precision denormal operand: fld dword [ebx] → DE.
    e.set_data(&1u32.to_le_bytes());
    e.run(&[0xdb, 0xe3, 0xd9, 0x03]);
    assert_eq!(e.x().status(), 0x3802);
    assert_eq!(e.x().st(0), (1 << 63, 0x3f6a)); // 2^-149, normalized
}

#[test]
fn fsave_frstor_roundtrip() {
    let mut e = Emu::new();
    stack(&mut e, &[PI, THREE, (1, 0)]);
    e.x().cw = 0x0b7f;
    e.x().sw = 0x4100 | 0x20;
    // fnsave [ebx]; frstor [ebx]
    e.run(&[0xdd, 0x33]);
    assert_eq!(e.x().cw, 0x037f);
    assert_eq!(e.x().tag, 0xffff);
    let img = e.data(108);
    assert_eq!(
        &img[..12],
        &[0x7f, 0x0b, 0xff, 0xff, 0x20, 0x69, 0xff, 0xff, 0xff, 0x83, 0xff, 0xff]
    );
    e.run(&[0xdd, 0x23]);
    assert_eq!(e.x().cw, 0x0b7f);
    assert_eq!(e.x().status(), 0x6920);
    assert_eq!((e.x().st(0), e.x().st(1), e.x().st(2)), (PI, THREE, (1, 0)));
    assert_eq!(e.x().full_tag(), 0x83ff);
}

#[test]
fn nm_and_wait() {
    let mut e = Emu::new();
    e.cpu.cr0 |= cr0::TS;
    e.run(&[0x9b]); // WAIT executes with TS alone
    assert_eq!(e.cpu.last_exception, None);
    e.run(&[0xd9, 0xe8]);
    assert_eq!(e.cpu.last_exception, Some(Exc::NM));
    let mut e = Emu::new();
    e.cpu.cr0 |= cr0::TS | cr0::MP;
    e.run(&[0x9b]);
    assert_eq!(e.cpu.last_exception, Some(Exc::NM));
    let mut e = Emu::new();
    e.cpu.cr0 |= cr0::EM;
    e.run(&[0x9b]);
    assert_eq!(e.cpu.last_exception, None);
    e.run(&[0xdb, 0xe3]);
    assert_eq!(e.cpu.last_exception, Some(Exc::NM));
}

// ---------------------------------------------------------------------------
// Differential fuzzing against the host FPU.

#[cfg(target_arch = "x86_64")]
mod native {
    use std::sync::{Mutex, OnceLock};

    /// Where the native code runs; the emulator uses the same addresses so
    /// that pointers stored by FSTENV/FSAVE compare equal.
    pub const BASE: u64 = 0x9_0000;
    /// The data area (RBX).
    pub const DATA: u64 = 0x9_8000;
    pub const PRO: &[u8] = &[
        0x53, // push rbx
        0x48, 0x89, 0xf3, // mov rbx, rsi
        0x48, 0x8b, 0x02, // mov rax, [rdx]
        0x50, // push rax
        0x9d, // popfq
        0x48, 0x8b, 0x42, 0x08, // mov rax, [rdx+8]
        0xdd, 0x27, // frstor [rdi]
    ];
    const EPI: &[u8] = &[
        0xdd, 0x37, // fnsave [rdi]
        0x48, 0x89, 0x42, 0x10, // mov [rdx+16], rax
        0x9c, // pushfq
        0x8f, 0x42, 0x18, // pop qword [rdx+24]
        0x5b, // pop rbx
        0xc3, // ret
    ];

    static LOCK: Mutex<()> = Mutex::new(());
    static MAP: OnceLock<usize> = OnceLock::new();

    /// Runs `code` natively at `BASE + PRO.len()` between FRSTOR and FNSAVE
    /// of `state`, with RBX = `DATA` holding `mem`; `regs` = [rflags in,
    /// rax in, rax out, rflags out].
    pub fn run(code: &[u8], state: &mut [u8; 108], mem: &mut [u8], regs: &mut [u64; 4]) {
        let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let p = *MAP.get_or_init(|| {
            // SAFETY: maps 64 KiB at a fixed low address, refusing to replace
            // anything already mapped there.
            let p = unsafe {
                libc::mmap(
                    BASE as *mut libc::c_void,
                    0x1_0000,
                    libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                    -1,
                    0,
                )
            };
            assert_eq!(p as u64, BASE, "cannot map the native test area");
            p as usize
        });
        let mut buf = PRO.to_vec();
        buf.extend_from_slice(code);
        buf.extend_from_slice(EPI);
        assert!(buf.len() <= 0x8000 && mem.len() <= 0x8000);
        // SAFETY: the area is mapped read/write/execute and only used under
        // LOCK. The generated function saves RBX, touches only RAX, the
        // flags, the x87 unit and the data area (the caller passes only x87
        // instructions addressing [rbx + disp8]), leaves the x87 unit
        // initialized (FNSAVE) and returns.
        unsafe {
            std::ptr::copy_nonoverlapping(buf.as_ptr(), p as *mut u8, buf.len());
            let data = (p + (DATA - BASE) as usize) as *mut u8;
            std::ptr::copy_nonoverlapping(mem.as_ptr(), data, mem.len());
            let f: extern "sysv64" fn(*mut u8, *mut u8, *mut u64) = std::mem::transmute(p);
            f(state.as_mut_ptr(), data, regs.as_mut_ptr());
            std::ptr::copy_nonoverlapping(data, mem.as_mut_ptr(), mem.len());
        }
    }
}

#[cfg(target_arch = "x86_64")]
/// xorshift64*.
struct Rng(u64);

#[cfg(target_arch = "x86_64")]
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len() as u64) as usize]
    }
}

#[cfg(target_arch = "x86_64")]
/// An interesting 80-bit value.
fn rand_f80(r: &mut Rng) -> F80 {
    let sign = (r.below(2) as u16) << 15;
    let m = r.next();
    let v = match r.below(16) {
        0 => (0, 0),
        1 => (1 << 63, 0x3fff),
        2 => (1 << 63, 0x7fff),
        3 => (m | (1 << 63) | (1 << 62), 0x7fff),
        4 => ((m | (1 << 63)) & !(1 << 62) | 1, 0x7fff),
        5 => (m & !(1 << 63), 0),
        6 => (m | (1 << 63), 0),
        7 => (m & !(1 << 63), (r.below(0x7ffe) + 1) as u16),
        8 => (m, 0x7fff),
        9 => ((m | (1 << 63)) & !0xff, 0x3fff + r.below(80) as u16 - 40),
        10 => (
            m | (1 << 63),
            r.pick(&[
                1, 2, 0x3c00, 0x3c01, 0x3f80, 0x3f81, 0x4380, 0x43fe, 0x7ffe, 0x407e, 0x407f,
            ]),
        ),
        11 => (
            PI.0,
            r.pick(&[0x4000, 0x4001, 0x4003, 0x403e, 0x403f, 0x3fff]),
        ),
        12 => (
            (m | (1 << 63)) & !((1 << 40) - 1),
            0x3fff + r.below(64) as u16,
        ),
        _ => (m | (1 << 63), (0x3fff + r.below(200) as i64 - 100) as u16),
    };
    (v.0, v.1 | sign)
}

#[cfg(target_arch = "x86_64")]
/// Fills the data area with values of all sizes.
fn rand_mem(r: &mut Rng, d: &mut [u8]) {
    for k in (0..d.len()).step_by(16) {
        let chunk: Vec<u8> = match r.below(9) {
            0 => f80_bytes(rand_f80(r)).to_vec(),
            1 => (r.next() as u32 & 0x807f_ffff
                | (r.pick(&[0, 1, 0x7e, 0x7f, 0x80, 0xfe, 0xff]) << 23))
                .to_le_bytes()
                .to_vec(),
            2 => ((r.next() & 0x800f_ffff_ffff_ffff)
                | (r.pick(&[0u64, 1, 0x3fe, 0x3ff, 0x400, 0x7fe, 0x7ff]) << 52))
                .to_le_bytes()
                .to_vec(),
            3 => r
                .pick(&[
                    0u64,
                    1,
                    0x7fff,
                    0x8000,
                    0xffff,
                    0x7fff_ffff,
                    0x8000_0000,
                    u64::MAX,
                    1 << 63,
                    12345678,
                ])
                .to_le_bytes()
                .to_vec(),
            4 => {
                // Packed BCD, sometimes with bad digits.
                let mut b = [0u8; 10];
                for x in b.iter_mut().take(9) {
                    *x = if r.below(8) == 0 {
                        r.next() as u8
                    } else {
                        ((r.below(10) << 4) | r.below(10)) as u8
                    };
                }
                b[9] = r.pick(&[0u8, 0x80, 0x7f, 0xff]);
                b.to_vec()
            }
            5 => r
                .pick(&[
                    0x037fu16, 0x0f7f, 0x007f, 0x027f, 0x0b7f, 0x0340, 0x1f7f, 0x0000,
                ])
                .to_le_bytes()
                .to_vec(),
            _ => r.next().to_le_bytes().to_vec(),
        };
        let n = chunk.len().min(16).min(d.len() - k);
        d[k..k + n].copy_from_slice(&chunk[..n]);
        if n < 16 && k + 16 <= d.len() {
            let fill = r.next().to_le_bytes();
            d[k + n..k + 16].copy_from_slice(&[fill, fill].concat()[..16 - n]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
/// A random valid x87 instruction (decoded in 32-bit mode, handled by
/// [`lookup`]); memory forms address [ebx + disp8].
fn rand_insn(r: &mut Rng, control: bool, exact_only: bool) -> Vec<u8> {
    loop {
        let esc = 0xd8 + r.below(8) as u8;
        let modrm = r.next() as u8;
        let mut b = vec![];
        if modrm >> 6 == 3 {
            b.extend_from_slice(&[esc, modrm]);
        } else {
            if r.below(6) == 0 {
                b.push(0x66);
            }
            b.extend_from_slice(&[esc, (modrm & 0x38) | 0x43, 8 * r.below(8) as u8]);
        }
        let mut dec = iced_x86::Decoder::with_ip(32, &b, 0, iced_x86::DecoderOptions::NONE);
        let ins = dec.decode();
        if ins.code() == Code::INVALID || ins.len() != b.len() || lookup(&ins).is_none() {
            continue;
        }
        let ctl = matches!(
            ins.mnemonic(),
            iced_x86::Mnemonic::Fldcw | iced_x86::Mnemonic::Fldenv | iced_x86::Mnemonic::Frstor
        );
        if ctl && !control {
            continue;
        }
        use iced_x86::Mnemonic as Mn;
        let approx = matches!(
            ins.mnemonic(),
            Mn::Fsin
                | Mn::Fcos
                | Mn::Fsincos
                | Mn::Fptan
                | Mn::Fpatan
                | Mn::F2xm1
                | Mn::Fyl2x
                | Mn::Fyl2xp1
        );
        if approx && exact_only {
            continue;
        }
        return b;
    }
}

#[cfg(target_arch = "x86_64")]
/// A random FPU state without pending unmasked exceptions.
fn rand_state(r: &mut Rng, masked: bool) -> [u8; 108] {
    let mut x = X87::default();
    for p in 0..8 {
        x.regs[p] = rand_f80(r);
    }
    x.tag = (r.next() as u16) | (r.next() as u16);
    if r.below(4) == 0 {
        x.tag = 0xffff;
    }
    x.top = r.below(8) as u8;
    let pc = r.pick(&[3u16, 3, 2, 0]);
    let rc = r.below(4) as u16;
    let masks = if masked || r.below(2) == 0 {
        0x3f
    } else {
        r.next() as u16 & 0x3f
    };
    x.cw = 0x40 | masks | (pc << 8) | (rc << 10) | (r.below(2) as u16) << 12;
    x.sw = (r.next() as u16 & (C0 | C1 | C2 | C3))
        | (r.next() as u16 & masks & EXC)
        | (r.next() as u16 & SF);
    x.fip = 0x00c0_ffee;
    x.fdp = 0x0bad_f00d;
    x.fop = 0x123;
    image(&x)
}

#[cfg(target_arch = "x86_64")]
fn describe(img: &[u8; 108]) -> String {
    let x = from_image(img);
    let mut s = format!(
        "cw={:04x} sw={:04x} tag={:04x} fip={:x} fdp={:x} fop={:03x}\n",
        x.cw,
        x.status(),
        x.full_tag(),
        x.fip,
        x.fdp,
        x.fop
    );
    for i in 0..8 {
        let v = x.st(i);
        s += &format!(
            "  st{i}: {:04x}:{:016x}{}\n",
            v.1,
            v.0,
            if x.is_empty(i) { " (empty)" } else { "" }
        );
    }
    s
}

/// The x87 pointers of an FSTENV/FSAVE image `native` (protected-mode
/// layout, 32-bit if `wide`, else 16-bit) stored on an AMD host, made
/// comparable with the emulator's `emu` where AMD documents otherwise:
/// - FCS and FDS: AMD keeps and stores the selectors; Intel cores with
///   CPUID.(EAX=07H,ECX=0):EBX[13] (FCS/FDS deprecated, SDM vol. 1 §8.1.8),
///   as the emulator, store zero.
/// - FOP and FDP while FSW.ES is clear: AMD records them for every
///   non-control x87 instruction (AMD APM vol. 1, "Pointers and Opcode
///   State"); Intel cores record FOP only for an instruction that raised an
///   unmasked exception (FOP compatibility mode off, SDM vol. 1 §8.1.9.1)
///   and, with CPUID.(EAX=07H,ECX=0):EBX[6] (FDP_EXCPTN_ONLY, §8.1.8), FDP
///   likewise. With ES set the last such instruction raised one on both,
///   and they are compared.
/// - Any of FIP, FOP and FDP that reads zero: AMD's FXSAVE and XSAVE keep
///   no pointers while ES is clear (AMD APM vol. 4 and 5, FXSAVE and
///   FXRSTOR; see `fxrstor_fxsave64_match_host`), so a context switch
///   between the FRSTOR before the code and the FNSAVE after it zeroes them
///   all, and only those a later instruction records come back. (FIP and
///   FDP are not zero otherwise: code and data lie at non-zero addresses.)
///
/// Everything else is compared as it is.
#[cfg(target_arch = "x86_64")]
fn amd_env_pointers(native: &mut [u8], emu: &[u8], wide: bool) {
    let (fsw, fip, fcs, fop, fdp, fds) = if wide {
        (4, 12..16, 16..18, 18..20, 20..24, 24..26)
    } else {
        (2, 6..8, 8..10, 10..10, 10..12, 12..14)
    };
    let zero = |r: &std::ops::Range<usize>| native[r.clone()].iter().all(|&b| b == 0);
    let mut take = vec![fcs, fds];
    if native[fsw] & 0x80 == 0 {
        take.extend([fop.clone(), fdp.clone()]);
    }
    take.extend([fip, fop, fdp].into_iter().filter(zero));
    for r in take {
        native[r.clone()].copy_from_slice(&emu[r]);
    }
}

/// [`amd_env_pointers`] for the images the FNSTENV/FNSAVE instructions of
/// `code` stored in the data area (`native` and `emu` after the run).
/// False if a later instruction of `code` reads or overwrites such an image
/// (the values loaded then differ as the pointers do, or its FSW is gone),
/// so the run cannot be compared.
#[cfg(target_arch = "x86_64")]
fn amd_stored_pointers(code: &[u8], native: &mut [u8], emu: &[u8]) -> bool {
    use iced_x86::Code as C;
    let mut dec = iced_x86::Decoder::with_ip(32, code, 0, iced_x86::DecoderOptions::NONE);
    let mut images = vec![];
    while dec.can_decode() {
        let ins = dec.decode();
        if !(0..ins.op_count()).any(|i| ins.op_kind(i) == iced_x86::OpKind::Memory) {
            continue;
        }
        let at = ins.memory_displacement32() as usize;
        let end = at + ins.memory_size().size();
        if images.iter().any(|&(a, e, _)| at < e && a < end) {
            return false;
        }
        let wide = match ins.code() {
            C::Fnstenv_m28byte | C::Fnsave_m108byte => true,
            C::Fnstenv_m14byte | C::Fnsave_m94byte => false,
            _ => continue,
        };
        images.push((at, at + if wide { 28 } else { 14 }, wide));
    }
    for (at, end, wide) in images {
        if end <= native.len() && end <= emu.len() {
            amd_env_pointers(&mut native[at..end], &emu[at..end], wide);
        }
    }
    true
}

/// Runs `code` natively and in the emulator from the same state; returns a
/// description of the differences.
#[cfg(target_arch = "x86_64")]
fn differ(
    e: &mut Emu,
    code: &[u8],
    state: &[u8; 108],
    mem: &[u8],
    fl: u64,
    rax: u64,
) -> Option<String> {
    let mut nstate = *state;
    let mut nmem = mem.to_vec();
    let mut regs = [fl, rax, 0, 0];
    native::run(code, &mut nstate, &mut nmem, &mut regs);
    e.cpu.x87 = from_image(state);
    e.cpu.flags.set(fl);
    e.cpu.gpr[0] = rax & 0xffff_ffff;
    e.space.ram.write_bytes(native::DATA, mem);
    e.run_at(native::BASE + native::PRO.len() as u64, native::DATA, code);
    let eimg = image(&e.cpu.x87);
    let mut edata = vec![0; mem.len()];
    e.space.ram.read_bytes(native::DATA, &mut edata);
    // On AMD hosts, the pointers (final and stored) where AMD differs.
    let (mut npointers, mut nmem_cmp) = (nstate, nmem.clone());
    if crate::cpu::tests::host_is_amd() {
        amd_env_pointers(&mut npointers, &eimg, true);
        if !amd_stored_pointers(code, &mut nmem_cmp, &edata) {
            return None;
        }
    }
    let mut why = vec![];
    if let Some(x) = e.cpu.last_exception {
        why.push(format!("emulator raised {x:?}"));
    }
    if nstate[..12] != eimg[..12] {
        why.push("control/status/tag".into());
    }
    if npointers[12..28] != eimg[12..28] {
        why.push("pointers".into());
    }
    if nstate[28..] != eimg[28..] {
        why.push("registers".into());
    }
    if nmem_cmp != edata {
        why.push("memory".into());
    }
    if regs[2] & 0xffff != e.cpu.gpr[0] & 0xffff {
        why.push(format!(
            "ax {:x} vs {:x}",
            regs[2] & 0xffff,
            e.cpu.gpr[0] & 0xffff
        ));
    }
    let ar = flags::ARITH;
    if regs[3] & ar != e.cpu.flags.get() & ar {
        why.push(format!(
            "eflags {:x} vs {:x}",
            regs[3] & ar,
            e.cpu.flags.get() & ar
        ));
    }
    if why.is_empty() {
        return None;
    }
    let mut s = format!(
        "code {:02x?}: {}\ninitial {}",
        code,
        why.join(", "),
        describe(state)
    );
    s += &format!("native  {}emulated {}", describe(&nstate), describe(&eimg));
    if nmem != edata {
        s += &format!(
            "mem in  {:02x?}\nnative  {:02x?}\nemul    {:02x?}\n",
            &mem[..64],
            &nmem[..64],
            &edata[..64]
        );
    }
    Some(s)
}

#[cfg(target_arch = "x86_64")]
/// Mnemonics of the instructions in `code`.
fn names(code: &[u8]) -> String {
    let mut dec = iced_x86::Decoder::with_ip(32, code, 0, iced_x86::DecoderOptions::NONE);
    let mut v = vec![];
    while dec.can_decode() {
        v.push(format!("{:?}", dec.decode().code()));
    }
    v.join(" ")
}

#[cfg(target_arch = "x86_64")]
fn fuzz(seed: u64, iters: usize, max_len: u64) {
    fuzz_with(seed, iters, max_len, false);
}

/// `soft`: run the emulator on the software backend (without the
/// instructions it only approximates, and with masked exceptions only).
#[cfg(target_arch = "x86_64")]
fn fuzz_with(seed: u64, iters: usize, max_len: u64, soft: bool) {
    let mut r = Rng(seed);
    let mut e = Emu::new();
    super::soft::FORCE.with(|f| f.set(soft));
    let mut fails: std::collections::BTreeMap<String, (usize, String)> = Default::default();
    let mut total = 0;
    for _ in 0..iters {
        let n = 1 + r.below(max_len);
        let mut code = vec![];
        for _ in 0..n {
            code.extend(rand_insn(&mut r, n == 1 && !soft, soft));
        }
        let state = rand_state(&mut r, n > 1 || (soft && max_len > 1));
        let mut mem = vec![0u8; DATA_LEN];
        rand_mem(&mut r, &mut mem);
        let fl = (r.next() & flags::ARITH) | 0x202;
        let rax = r.next();
        if let Some(s) = differ(&mut e, &code, &state, &mem, fl, rax) {
            total += 1;
            let key = if max_len == 1 {
                names(&code)
            } else {
                String::new()
            };
            let ent = fails.entry(key).or_insert((0, s));
            ent.0 += 1;
        }
    }
    super::soft::FORCE.with(|f| f.set(false));
    if total > 0 {
        let mut msg = format!("{total} of {iters} differ\n");
        for (k, (n, s)) in fails.iter().take(12) {
            msg += &format!("=== {k}: {n} times\n{s}\n");
        }
        let keys: Vec<String> = fails.iter().map(|(k, (n, _))| format!("{k}:{n}")).collect();
        msg += &keys.join(", ");
        panic!("{msg}");
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn fuzz_single_instructions() {
    fuzz(0x1234_5678_9abc_def1, 60000, 1);
}

#[cfg(target_arch = "x86_64")]
#[test]
fn fuzz_sequences() {
    fuzz(0x0fed_cba9_8765_4321, 5000, 6);
}

#[cfg(target_arch = "x86_64")]
#[test]
fn fuzz_soft_backend() {
    fuzz_with(0x5eed_0000_1111_2222, 30000, 3, true);
    fuzz_with(0x5eed_0000_1111_2223, 30000, 1, true);
}

/// Long run: `cargo test -p vireo-emulator --lib x87::tests::fuzz_long -- --ignored`
/// (`X87_SEED=n` picks the seed, `X87_SOFT=1` fuzzes the software backend).
#[cfg(target_arch = "x86_64")]
#[test]
#[ignore]
fn fuzz_long() {
    let seed = std::env::var("X87_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    let soft = std::env::var("X87_SOFT").is_ok();
    fuzz_with(seed, 500_000, 1, soft);
    fuzz_with(seed + 1, 500_000, 4, soft);
}

// ---------------------------------------------------------------------------
// The portable software backend, checked against the host FPU.

/// Operations the software backend computes approximately (in `f64`).
#[cfg(target_arch = "x86_64")]
fn soft_approx(op: HOp) -> bool {
    use HOp::*;
    matches!(
        op,
        SIN | COS | PTAN | SINCOS | F2XM1 | PATAN | YL2X | YL2XP1
    )
}

#[cfg(target_arch = "x86_64")]
#[test]
fn soft_backend_matches_host() {
    use HOp::*;
    let seed = std::env::var("X87_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(99);
    let iters = std::env::var("X87_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300_000);
    let mut r = Rng(seed);
    let mut bad = vec![];
    let mut count = 0;
    for _ in 0..iters {
        let op = r.pick(HOp::ALL);
        let cw = 0x3f | (r.pick(&[3u16, 2, 0]) << 8) | (r.below(4) as u16) << 10;
        let (a, b) = (rand_f80(&mut r), rand_f80(&mut r));
        let mut m = [0u8; 16];
        rand_mem(&mut r, &mut m);
        let mem: [u8; 10] = m[..10].try_into().unwrap();
        let h = super::host::run(op, cw, a, b, &mem);
        let s = super::soft::run(op, cw, a, b, &mem);
        let n = op.mem_len();
        let stores = matches!(
            op,
            ST_M32
                | ST_M64
                | IST_M16
                | IST_M32
                | ISTP_M64
                | ISTTP_M16
                | ISTTP_M32
                | ISTTP_M64
                | BSTP
        );
        let compares = matches!(
            op,
            COM | UCOM | COM_M32 | COM_M64 | ICOM_M16 | ICOM_M32 | TST
        );
        let cc = if compares {
            C0 | C2 | C3
        } else if matches!(op, PREM | PREM1) && !(h.r0.1 & 0x7fff == 0x7fff && h.r0.0 << 1 != 0) {
            C0 | C1 | C2 | C3
        } else {
            C1
        };
        let same = if !soft_approx(op) {
            let regs = if stores || compares {
                true
            } else if matches!(op, ADD1 | MUL1 | SUB1 | SUBR1 | DIV1 | DIVR1 | XTRACT) {
                h.r1 == s.r1 && (op != XTRACT || h.r0 == s.r0)
            } else {
                h.r0 == s.r0
            };
            let memok = !stores || h.mem[..n] == s.mem[..n];
            regs && memok && (h.sw & (0x3f | cc)) == (s.sw & (0x3f | cc))
        } else {
            // Approximate: for moderate normal operands in the instruction's
            // domain, results within 1e-14 relative, same IE/DE/ZE.
            let close = |x: F80, y: F80| {
                x == y || {
                    let (fx, fy) = (super::soft::to_f64_pub(x), super::soft::to_f64_pub(y));
                    fx.is_finite() && (fx - fy).abs() <= 1e-13 * fx.abs().max(1.0)
                }
            };
            let fa = super::soft::to_f64_pub(a);
            let normal = |v: F80| v.1 & 0x7fff > 0x3f00 && v.1 & 0x7fff < 0x40ff && v.0 >> 63 == 1;
            let domain = match op {
                F2XM1 => fa.abs() < 1.0,
                YL2XP1 => fa.abs() < 0.29,
                YL2X => fa > 0.0,
                SIN | COS | SINCOS => fa.abs() < 8.0,
                PTAN => fa.abs() < 8.0 && fa.cos().abs() > 1e-3,
                _ => true,
            };
            if normal(a) && normal(b) && domain {
                count += 1;
                let res = |o: &super::ops::Out| {
                    if matches!(op, PTAN | SINCOS) {
                        o.r1
                    } else {
                        o.r0
                    }
                };
                close(res(&h), res(&s)) && (h.sw & 0x7) == (s.sw & 0x7)
            } else {
                true
            }
        };
        if !same && bad.len() < 20 {
            bad.push(format!(
                "{op:?} cw={cw:04x} a={:04x}:{:016x} b={:04x}:{:016x} mem={:02x?}\n  host r0={:04x}:{:016x} r1={:04x}:{:016x} sw={:04x} mem={:02x?}\n  soft r0={:04x}:{:016x} r1={:04x}:{:016x} sw={:04x} mem={:02x?}",
                a.1, a.0, b.1, b.0, &mem[..n],
                h.r0.1, h.r0.0, h.r1.1, h.r1.0, h.sw & !0x3800, &h.mem[..n],
                s.r0.1, s.r0.0, s.r1.1, s.r1.0, s.sw, &s.mem[..n]
            ));
        }
    }
    assert!(count > 1000);
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// The unit tests above, run again on the software backend.
#[cfg(target_arch = "x86_64")]
#[test]
fn soft_backend_unit_tests() {
    super::soft::FORCE.with(|f| f.set(true));
    load_add_store_m64();
    rounding_modes_and_precision();
    compare_and_unordered();
    stack_overflow_and_underflow();
    fxam_classes();
    integer_store_overflow_and_denormals();
    fsave_frstor_roundtrip();
    snan_operands();
    pending_exception_and_mf();
    fstenv_real_mode_layout();
    frndint_and_fist_rounding();
    super::soft::FORCE.with(|f| f.set(false));
}

// ---------------------------------------------------------------------------
// More unit tests (expected values from native runs unless noted).

#[test]
fn snan_operands() {
    let mut e = Emu::new();
    // fld dword [ebx] of an SNaN: IE, quieted.
    e.set_data(&0x7fa0_0000u32.to_le_bytes());
    e.run(&[0xd9, 0x03]);
    assert_eq!(e.x().st(0), (0xe000_0000_0000_0000, 0x7fff));
    assert_eq!(e.x().status(), 0x3801);
    // fucom st1 with an SNaN in ST(1): IE even for the unordered compare.
    let mut e = Emu::new();
    stack(&mut e, &[ONE, SNAN]);
    e.run(&[0xdd, 0xe1]);
    assert_eq!(e.x().status(), 0x7501);
    // fadd: QNaN-ized SNaN result.
    e.run(&[0xd8, 0xc1]);
    assert_eq!(e.x().st(0), (0xe000_0000_0000_0000, 0x7fff));
}

#[test]
fn pending_exception_and_mf() {
    let mut e = Emu::new();
    // fldcw [ebx] with ZM clear; fldz; fld1; fdivrp → 1/0: ZE pending.
    e.set_data(&0x037bu16.to_le_bytes());
    e.run(&[0xd9, 0x2b, 0xd9, 0xee, 0xd9, 0xe8, 0xde, 0xf1]);
    assert_eq!(e.cpu.last_exception, None);
    assert_eq!(e.x().status() & 0x80ff, 0x8084);
    // The destination is unchanged (unmasked ZE), no pop.
    assert_eq!((e.x().st(0), e.x().st(1), e.x().top), (ONE, (0, 0), 6));
    // FNSTSW AX does not wait; FWAIT raises #MF.
    e.run(&[0xdf, 0xe0]);
    assert_eq!(
        (e.cpu.last_exception, e.cpu.gpr[0] & 0xffff),
        (None, 0xb084)
    );
    e.run(&[0x9b]);
    assert_eq!(e.cpu.last_exception.map(|x| x.vector), Some(vec::MF));
    // With CR0.NE clear the exception is not reported (no FERR# wiring).
    e.cpu.cr0 &= !cr0::NE;
    e.run(&[0x9b]);
    assert_eq!(e.cpu.last_exception, None);
    // FNCLEX clears it.
    e.cpu.cr0 |= cr0::NE;
    e.run(&[0xdb, 0xe2, 0x9b]);
    assert_eq!(e.cpu.last_exception, None);
    assert_eq!(e.x().status() & 0x80ff, 0);
    // Pointers: FIP and FOP of the faulting FDIVRP (CPUID FDP_EXCPTN_ONLY
    // model: FOP = 0x6f1, FIP its offset).
    assert_eq!((e.x().fip, e.x().fop), (CODE + 6, 0x6f1));
}

#[test]
fn fstenv_real_mode_layout() {
    // Layouts from SDM vol. 1 figures 8-10 and 8-12 (no native run possible).
    let ram = GuestRam::new(1 << 20).unwrap();
    let space = Arc::new(AddressSpace::new(ram));
    let mut cpu = Cpu::new(space.clone());
    cpu.seg[CS] = Segment::real(0x100);
    cpu.seg[DS] = Segment::real(0x800);
    cpu.rip = 0x10;
    // fninit; fldcw [bx] (IM clear); fld1; fld1; fdiv st0,st0... use
    // fsqrt of -1: fchs; fsqrt → IE pending; fnstenv [bx+2] (16-bit);
    // o32 fnstenv [bx+0x20]; hlt
    let code = [
        0xdb, 0xe3, 0xd9, 0x2f, 0xd9, 0xe8, 0xd9, 0xe0, 0xd9, 0xfa, 0xd9, 0x77, 0x02, 0x66, 0xd9,
        0x77, 0x20, 0xf4,
    ];
    space.ram.write_bytes(0x1010, &code);
    space.ram.write_bytes(0x8000, &0x037eu16.to_le_bytes());
    cpu.gpr[3] = 0;
    cpu.run(20);
    assert_eq!(cpu.last_exception, None);
    let mut b = [0u8; 64];
    space.ram.read_bytes(0x8000, &mut b);
    let w = |k: usize| u16::from_le_bytes([b[k], b[k + 1]]);
    let d = |k: usize| u32::from_le_bytes([b[k], b[k + 1], b[k + 2], b[k + 3]]);
    // FSQRT at CS:8 = linear 0x1018; opcode D9 FA → 0x1fa; no memory operand.
    assert_eq!(
        [w(2), w(4), w(6), w(8), w(10), w(12), w(14)],
        [0x037e, 0xb881, 0x3fff, 0x1018, 0x01fa, 0, 0]
    );
    // FNSTENV masked all exceptions (so ES and B cleared): the second image
    // shows cw 0x037f and sw 0x3801.
    assert_eq!(
        [
            d(0x20),
            d(0x24),
            d(0x28),
            d(0x2c),
            d(0x30),
            d(0x34),
            d(0x38)
        ],
        [
            0xffff_037f,
            0xffff_3801,
            0xffff_3fff,
            0xffff_1018,
            0x01fa,
            0xffff_0000,
            0
        ]
    );
    // FLDENV of the 16-bit image gets the pointers back.
    let mut x = X87::default();
    load_env(
        &mut x,
        &b[2..16],
        &EnvFormat {
            wide: false,
            real: true,
        },
    );
    assert_eq!(
        (x.cw, x.status(), x.fip, x.fop, x.fdp),
        (0x037e, 0xb881, 0x1018, 0x1fa, 0)
    );
    load_env(
        &mut x,
        &b[0x20..0x3c],
        &EnvFormat {
            wide: true,
            real: true,
        },
    );
    assert_eq!(
        (x.cw, x.status(), x.fip, x.fop, x.fdp),
        (0x037f, 0x3801, 0x1018, 0x1fa, 0)
    );
}

#[test]
fn fsave_page_fault_changes_nothing() {
    // 32-bit paging, identity map of the first 4 MiB except the page at
    // 0x9000; FNSAVE [0x8fc0] (108 bytes) would cross into it.
    let mut e = Emu::new();
    let (pd, pt) = (0x10000u64, 0x11000u64);
    e.space.ram.write_u32(pd, pt as u32 | 3);
    for i in 0..1024u64 {
        let pte = if i == 9 { 0 } else { (i << 12) as u32 | 3 };
        e.space.ram.write_u32(pt + 4 * i, pte);
    }
    e.cpu.cr3 = pd;
    e.cpu.cr0 |= cr0::PG;
    e.cpu.tlb.flush_all();
    stack(&mut e, &[PI]);
    e.space.ram.write_bytes(0x8fc0, &[0x5a; 64]);
    // mov ebx, 0x8fc0 is set up by run_at; fnsave [ebx]
    e.run_at(CODE, 0x8fc0, &[0xdd, 0x33]);
    assert_eq!(e.cpu.last_exception.map(|x| x.vector), Some(vec::PF));
    let mut b = [0u8; 64];
    e.space.ram.read_bytes(0x8fc0, &mut b);
    assert_eq!(b, [0x5a; 64]);
    assert_eq!((e.x().st(0), e.x().top), (PI, 7));
}

#[test]
fn frndint_and_fist_rounding() {
    // fld tbyte [ebx]; fldcw [ebx+16]; frndint; fistp word [ebx+32]:
    // 2.5 and -2.5 in each rounding mode.
    for (v, results) in [
        ((0xa000_0000_0000_0000, 0x4000), [2u16, 2, 3, 2]),
        (
            (0xa000_0000_0000_0000, 0xc000),
            [0xfffe, 0xfffd, 0xfffe, 0xfffe],
        ),
    ] {
        for (rc, want) in results.iter().enumerate() {
            let mut e = Emu::new();
            let mut d = [0u8; 48];
            d[..10].copy_from_slice(&f80_bytes(v));
            d[16..18].copy_from_slice(&(0x037f | (rc as u16) << 10).to_le_bytes());
            e.set_data(&d);
            e.run(&[0xdb, 0x2b, 0xd9, 0x6b, 0x10, 0xd9, 0xfc, 0xdf, 0x5b, 0x20]);
            assert_eq!(
                u16::from_le_bytes(e.data(34)[32..34].try_into().unwrap()),
                *want
            );
            assert_eq!(e.x().status() & 0x3f, 0x20);
        }
    }
}

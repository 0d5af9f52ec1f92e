//! Tests: machine code run through `Cpu::run` with descriptor tables, TSSs
//! and page tables built in guest RAM.

use super::super::exec::CpuExit;
use super::super::{
    attr, cr0, cr4, efer, flags, reg, vec, Cpu, DescriptorTable, Segment, CS, DS, ES, SS,
};
use super::cpuid::{cpuid_features, cpuid_leaf};
use super::desc::Desc;
use crate::bus::AddressSpace;
use crate::memory::GuestRam;
use iced_x86::code_asm::*;
use std::sync::Arc;

type Asm = CodeAssembler;
type AR = Result<(), IcedError>;

const GDT: u64 = 0x1000;
const IDT: u64 = 0x2000;
const TSS: u64 = 0x3000;
const TSS2: u64 = 0x3200;
const RES: u64 = 0x5000;
const CODE: u64 = 0x10000;
const USER: u64 = 0x10800;
const H0: u64 = 0x11000;
const H1: u64 = 0x11400;
const K_STACK: u64 = 0x80000;
const U_STACK: u64 = 0x70000;

// 32-bit layout selectors.
const K_CS: u16 = 0x08;
const K_DS: u16 = 0x10;
const U_CS: u16 = 0x1b;
const U_DS: u16 = 0x23;
const TSS_SEL: u16 = 0x28;
const TSS2_SEL: u16 = 0x30;
const CGATE: u16 = 0x38;
const NP_DATA: u16 = 0x48;
const XO_CODE: u16 = 0x50;
const NP_CODE: u16 = 0x70;

struct M {
    cpu: Cpu,
    space: Arc<AddressSpace>,
}

fn seg_desc(base: u32, limit: u32, access: u8, fl: u8) -> u64 {
    (limit as u64 & 0xffff)
        | ((base as u64 & 0xff_ffff) << 16)
        | ((access as u64) << 40)
        | (((limit as u64 >> 16) & 0xf) << 48)
        | ((fl as u64 & 0xf) << 52)
        | ((base as u64 >> 24) << 56)
}

fn gate(sel: u16, off: u32, access: u8, params: u8) -> u64 {
    (off as u64 & 0xffff)
        | ((sel as u64) << 16)
        | ((params as u64) << 32)
        | ((access as u64) << 40)
        | ((off as u64 >> 16) << 48)
}

impl M {
    fn new() -> Self {
        let ram = GuestRam::new(4 << 20).unwrap();
        let space = Arc::new(AddressSpace::new(ram));
        let cpu = Cpu::new(space.clone());
        M { cpu, space }
    }
    fn w(&self, a: u64, b: &[u8]) {
        assert!(self.space.ram.write_bytes(a, b));
    }
    fn w16(&self, a: u64, v: u16) {
        self.w(a, &v.to_le_bytes());
    }
    fn w32(&self, a: u64, v: u32) {
        self.w(a, &v.to_le_bytes());
    }
    fn w64(&self, a: u64, v: u64) {
        self.w(a, &v.to_le_bytes());
    }
    fn r64(&self, a: u64) -> u64 {
        let mut b = [0u8; 8];
        assert!(self.space.ram.read_bytes(a, &mut b));
        u64::from_le_bytes(b)
    }
    fn r32(&self, a: u64) -> u32 {
        self.r64(a) as u32
    }
    fn code(&self, bits: u32, at: u64, f: impl FnOnce(&mut Asm) -> AR) {
        let mut a = Asm::new(bits).unwrap();
        f(&mut a).unwrap();
        let b = a.assemble(at).unwrap();
        self.w(at, &b);
    }
    fn gdt(&self, sel: u16, d: u64) {
        self.w64(GDT + (sel & !7) as u64, d);
    }
    fn seg(&self, sel: u16) -> Segment {
        let raw = self.r64(GDT + (sel & !7) as u64);
        Desc {
            raw,
            hi: 0,
            addr: 0,
        }
        .seg(sel)
    }
    fn idt32(&self, v: u8, sel: u16, off: u64, access: u8) {
        self.w64(IDT + v as u64 * 8, gate(sel, off as u32, access, 0));
    }
    fn idt64(&self, v: u8, sel: u16, off: u64, access: u8, ist: u8) {
        self.w64(IDT + v as u64 * 16, gate(sel, off as u32, access, ist));
        self.w64(IDT + v as u64 * 16 + 8, off >> 32);
    }
    fn run(&mut self) -> CpuExit {
        self.cpu.run(10_000)
    }
    fn gpr(&self, r: usize) -> u64 {
        self.cpu.gpr[r]
    }
    fn load_tr(&mut self, sel: u16) {
        let a = GDT + (sel & !7) as u64 + 5;
        let mut b = [0u8];
        self.space.ram.read_bytes(a, &mut b);
        self.w(a, &[b[0] | 2]);
        let mut s = self.seg(sel);
        s.attr |= 2;
        if self.cpu.long_mode() {
            s.base |= self.r64(GDT + (sel & !7) as u64 + 8) << 32;
        }
        self.cpu.tr = s;
    }
}

/// 32-bit protected mode, flat ring-0 segments, empty IDT, a TSS with
/// ESP0 = K_STACK.
fn pm32() -> M {
    let mut m = M::new();
    m.gdt(K_CS, seg_desc(0, 0xfffff, 0x9a, 0xc));
    m.gdt(K_DS, seg_desc(0, 0xfffff, 0x92, 0xc));
    m.gdt(U_CS, seg_desc(0, 0xfffff, 0xfa, 0xc));
    m.gdt(U_DS, seg_desc(0, 0xfffff, 0xf2, 0xc));
    m.gdt(
        TSS_SEL,
        seg_desc(TSS as u32, 0x67 + 0x2000 / 8 + 1, 0x89, 0),
    );
    m.gdt(TSS2_SEL, seg_desc(TSS2 as u32, 0x67, 0x89, 0));
    m.gdt(0x40, seg_desc(0, 0xffff, 0x9a, 0));
    m.gdt(NP_DATA, seg_desc(0, 0xfffff, 0x12, 0xc));
    m.gdt(XO_CODE, seg_desc(0, 0xfffff, 0x98, 0xc));
    m.gdt(NP_CODE, seg_desc(0, 0xfffff, 0x1a, 0xc));
    m.cpu.gdtr = DescriptorTable {
        base: GDT,
        limit: 0xff,
    };
    m.cpu.idtr = DescriptorTable {
        base: IDT,
        limit: 0x7ff,
    };
    m.w32(TSS + 4, K_STACK as u32);
    m.w32(TSS + 8, K_DS as u32);
    m.w16(TSS + 0x66, 0x68);
    m.cpu.cr0 |= cr0::PE;
    m.cpu.seg[CS] = m.seg(K_CS);
    for s in [ES, SS, DS, 4, 5] {
        m.cpu.seg[s] = m.seg(K_DS);
    }
    m.load_tr(TSS_SEL);
    m.cpu.gpr[reg::RSP] = K_STACK;
    m.cpu.rip = CODE;
    m.cpu.cpl = 0;
    m
}

// 64-bit layout selectors (SYSCALL/SYSRET compatible).
const L_KCS: u16 = 0x08;
const L_KDS: u16 = 0x10;
const L_UDS: u16 = 0x23;
const L_UCS64: u16 = 0x2b;
const L_TSS: u16 = 0x30;
const L_GATE: u16 = 0x40;
const PT: u64 = 0x23000;

/// IA-32e 64-bit mode: identity-mapped 0–4 MiB (4-KiB pages below 2 MiB),
/// all user-accessible; a 64-bit TSS with RSP0 = K_STACK.
fn lm64() -> M {
    let mut m = M::new();
    m.gdt(L_KCS, seg_desc(0, 0xfffff, 0x9a, 0xa));
    m.gdt(L_KDS, seg_desc(0, 0xfffff, 0x92, 0xc));
    m.gdt(0x18, seg_desc(0, 0xfffff, 0xfa, 0xc));
    m.gdt(L_UDS, seg_desc(0, 0xfffff, 0xf2, 0xc));
    m.gdt(L_UCS64, seg_desc(0, 0xfffff, 0xfa, 0xa));
    m.gdt(L_TSS, seg_desc(TSS as u32, 0x67, 0x89, 0));
    m.gdt(L_TSS + 8, 0);
    m.cpu.gdtr = DescriptorTable {
        base: GDT,
        limit: 0xff,
    };
    m.cpu.idtr = DescriptorTable {
        base: IDT,
        limit: 0xfff,
    };
    m.w64(0x20000, 0x21000 | 7);
    m.w64(0x21000, 0x22000 | 7);
    m.w64(0x22000, PT | 7);
    m.w64(0x22008, 0x20_0000 | 0x87);
    for i in 0..512u64 {
        m.w64(PT + i * 8, (i << 12) | 7);
    }
    m.cpu.cr3 = 0x20000;
    m.cpu.cr4 = cr4::PAE;
    m.cpu.cr0 |= cr0::PE | cr0::PG;
    m.cpu.efer = efer::LME | efer::LMA | efer::NXE;
    m.cpu.seg[CS] = m.seg(L_KCS);
    for s in [ES, SS, DS, 4, 5] {
        m.cpu.seg[s] = m.seg(L_KDS);
    }
    m.w64(TSS + 4, K_STACK);
    m.load_tr(L_TSS);
    m.cpu.gpr[reg::RSP] = K_STACK;
    m.cpu.rip = CODE;
    m
}

/// A 32-bit ring-0 handler that records the vector, error code (if
/// `with_code`) and return EIP at RES, then halts.
fn recorder32(m: &M, at: u64, v: u8, with_code: bool) {
    m.code(32, at, |a| {
        // A return to ring 3 may have nulled DS: use the kernel's.
        a.push(K_DS as u32)?;
        a.pop(ds)?;
        a.mov(dword_ptr(RES), v as u32)?;
        if with_code {
            a.pop(eax)?;
            a.mov(dword_ptr(RES + 4), eax)?;
        }
        a.mov(eax, dword_ptr(esp))?;
        a.mov(dword_ptr(RES + 8), eax)?;
        a.hlt()
    });
}

#[test]
fn real_mode_int_and_iret() {
    let mut m = M::new();
    m.cpu.seg[CS] = Segment::real(0);
    m.cpu.seg[SS] = Segment::real(0);
    m.cpu.gpr[reg::RSP] = 0x7000;
    m.cpu.rip = 0x7c00;
    m.w16(0x21 * 4, 0x1000);
    m.w16(0x21 * 4 + 2, 0x0100);
    // Handler at 0100:1000 = 0x2000 linear.
    m.code(16, 0x2000, |a| {
        a.pushf()?;
        a.pop(dx)?;
        a.mov(ax, 0x1234)?;
        a.iret()
    });
    m.code(16, 0x7c00, |a| {
        a.sti()?;
        a.int(0x21)?;
        a.mov(bx, ax)?;
        a.pushf()?;
        a.pop(cx)?;
        a.hlt()
    });
    assert_eq!(m.run(), CpuExit::Halted);
    assert_eq!(m.gpr(reg::RBX), 0x1234);
    assert_eq!(m.gpr(reg::RSP), 0x7000);
    assert_eq!(m.gpr(reg::RDX) & flags::IF, 0, "IF cleared in the handler");
    assert_ne!(m.gpr(reg::RCX) & flags::IF, 0, "IF restored by IRET");
    assert_eq!(m.cpu.seg[CS].selector, 0);
}

#[test]
fn real_to_protected_to_long_mode() {
    let m0 = pm32();
    let mut m = M::new();
    m.w(GDT, &{
        let mut b = vec![0u8; 0x100];
        m0.space.ram.read_bytes(GDT, &mut b);
        b
    });
    m.gdt(0x58, seg_desc(0, 0xfffff, 0x9a, 0xa));
    // GDTR image at 0xf00.
    m.w16(0xf00, 0xff);
    m.w32(0xf02, GDT as u32);
    m.cpu.seg[CS] = Segment::real(0);
    m.cpu.rip = 0x7c00;
    let pm = 0x7d00u32;
    m.code(16, 0x7c00, |a| {
        a.cli()?;
        a.lgdt(ptr(0xf00))?;
        a.mov(eax, cr0)?;
        a.or(eax, 1)?;
        a.mov(cr0, eax)?;
        a.db(&[0x66, 0xea])?;
        a.dd(&[pm])?;
        a.dw(&[K_CS])
    });
    // Identity map 0-4 MiB with 2-MiB pages for the long-mode step.
    m.w64(0x20000, 0x21000 | 3);
    m.w64(0x21000, 0x22000 | 3);
    m.w64(0x22000, 0x83);
    m.w64(0x22008, 0x20_0000 | 0x83);
    let lm = 0x7e00u32;
    m.code(32, pm as u64, |a| {
        a.mov(ax, K_DS as u32)?;
        a.mov(ds, ax)?;
        a.mov(ss, ax)?;
        a.mov(esp, 0x9000)?;
        a.mov(eax, cr4)?;
        a.or(eax, cr4::PAE as u32)?;
        a.mov(cr4, eax)?;
        a.mov(eax, 0x20000)?;
        a.mov(cr3, eax)?;
        a.mov(ecx, 0xc000_0080u32)?;
        a.rdmsr()?;
        a.or(eax, efer::LME as u32)?;
        a.wrmsr()?;
        a.mov(eax, cr0)?;
        a.or(eax, 0x8000_0000u32)?;
        a.mov(cr0, eax)?;
        a.db(&[0xea])?;
        a.dd(&[lm])?;
        a.dw(&[0x58])
    });
    m.code(64, lm as u64, |a| {
        a.mov(rax, 0x1234_5678_9abc_def0u64)?;
        a.hlt()
    });
    assert_eq!(m.run(), CpuExit::Halted);
    assert!(m.cpu.mode64());
    assert_eq!(m.cpu.efer & efer::LMA, efer::LMA);
    assert_eq!(m.gpr(reg::RAX), 0x1234_5678_9abc_def0);
    assert_eq!(m.cpu.seg[SS].selector, K_DS);
    assert_eq!(m.cpu.seg[SS].attr & attr::DB, attr::DB);
    // The accessed bit was set in the data descriptor.
    assert_eq!((m.r64(GDT + 0x10) >> 40) & 0xff, 0x93);
}

#[test]
fn bad_selector_raises_gp_with_selector_code() {
    for (sel, v, code) in [
        (XO_CODE, vec::GP, XO_CODE as u32),
        (0x1f8, vec::GP, 0x1f8),
        (0x0c, vec::GP, 0x0c),
        (NP_DATA, vec::NP, NP_DATA as u32),
    ] {
        let mut m = pm32();
        recorder32(&m, H0, v, true);
        m.idt32(v, K_CS, H0, 0x8e);
        m.code(32, CODE, |a| {
            a.mov(eax, sel as u32)?;
            a.mov(ds, ax)?;
            a.hlt()
        });
        assert_eq!(m.run(), CpuExit::Halted);
        assert_eq!(m.r32(RES), v as u32);
        assert_eq!(m.r32(RES + 4), code, "selector {sel:#x}");
        assert_eq!(m.r32(RES + 8) as u64, CODE + 5);
        assert_eq!(m.cpu.seg[DS].selector, K_DS);
    }
}

#[test]
fn page_fault_error_codes_and_cr2() {
    // (address, access kind, ring 3?, pte modifier, expected code)
    #[derive(Clone, Copy)]
    enum K {
        Read,
        Write,
        Exec,
    }
    let cases: [(u64, K, bool, u64, u64, bool); 7] = [
        (0x1f_0000, K::Read, false, 0, 0x0, true),
        (0x1f_1000, K::Write, true, 5, 0x7, true),
        (0x1f_2000, K::Read, true, 3, 0x5, true),
        (0x1f_3000, K::Exec, false, 7 | (1 << 63), 0x11, true),
        (0x1f_4000, K::Read, false, 7 | (1 << 63), 0x9, false),
        (0x1f_5000, K::Write, false, 5, 0x3, true),
        (0x1f_6000, K::Write, true, 0, 0x6, true),
    ];
    for (i, &(addr, kind, user, pte, code, nxe)) in cases.iter().enumerate() {
        let mut m = lm64();
        m.w64(PT + (addr >> 12) * 8, if pte == 0 { 0 } else { addr | pte });
        if !nxe {
            m.cpu.efer &= !efer::NXE;
        }
        m.cpu.cr0 |= cr0::WP;
        m.code(64, H0, |a| {
            a.pop(rax)?;
            a.mov(rbx, cr2)?;
            a.hlt()
        });
        m.idt64(vec::PF, L_KCS, H0, 0x8e, 0);
        m.w(addr, &[0xc3]);
        let body = |a: &mut Asm| -> AR {
            a.mov(rsi, addr)?;
            match kind {
                K::Read => a.mov(rdx, qword_ptr(rsi))?,
                K::Write => a.mov(qword_ptr(rsi), rdx)?,
                K::Exec => a.call(rsi)?,
            }
            a.hlt()
        };
        if user {
            m.code(64, USER, body);
            m.code(64, CODE, |a| {
                a.push(L_UDS as i32)?;
                a.push(U_STACK as i32)?;
                a.push(0x202)?;
                a.push(L_UCS64 as i32)?;
                a.push(USER as i32)?;
                a.iretq()
            });
        } else {
            m.code(64, CODE, body);
        }
        assert_eq!(m.run(), CpuExit::Halted, "case {i}");
        assert_eq!(m.gpr(reg::RAX), code, "case {i}: error code");
        assert_eq!(m.gpr(reg::RBX), addr, "case {i}: CR2");
        assert_eq!(m.cpu.last_exception.map(|e| e.vector), Some(vec::PF));
    }
}

/// Ring 0 code that IRETs to ring-3 code at USER (32-bit).
fn enter_ring3_32(m: &M, fl: u32) {
    m.code(32, CODE, |a| {
        a.push(U_DS as u32)?;
        a.push(U_STACK as u32)?;
        a.push(fl)?;
        a.push(U_CS as u32)?;
        a.push(USER as u32)?;
        a.iretd()
    });
}

#[test]
fn ring3_interrupt_switches_stack_through_tss() {
    let mut m = pm32();
    enter_ring3_32(&m, 0x202);
    m.code(32, USER, |a| {
        a.mov(eax, 0x55)?;
        a.int(0x80)?;
        a.mov(ecx, eax)?;
        a.mov(edi, ss)?;
        a.int(0x81)
    });
    m.code(32, H0, |a| {
        a.mov(ebx, esp)?;
        a.mov(edx, dword_ptr(esp + 12))?;
        a.mov(esi, dword_ptr(esp + 16))?;
        a.add(eax, 1)?;
        a.iretd()
    });
    m.code(32, H1, |a| a.hlt());
    m.idt32(0x80, K_CS, H0, 0xee);
    m.idt32(0x81, K_CS, H1, 0xee);
    assert_eq!(m.run(), CpuExit::Halted);
    assert_eq!(m.gpr(reg::RBX), K_STACK - 20);
    assert_eq!(m.gpr(reg::RDX), U_STACK);
    assert_eq!(m.gpr(reg::RSI), U_DS as u64);
    assert_eq!(m.gpr(reg::RCX), 0x56);
    assert_eq!(m.gpr(reg::RDI), U_DS as u64);
    assert_eq!(m.cpu.cpl, 0);
    assert_eq!(m.cpu.seg[SS].selector, K_DS);
    // IRET to ring 3 nulled DS (DPL 0).
    assert_eq!(m.cpu.seg[DS].selector, 0);
    // A ring-3 INT through a DPL-0 gate is #GP(vector*8+2).
    let mut m = pm32();
    enter_ring3_32(&m, 0x202);
    m.code(32, USER, |a| a.int(0x80));
    m.idt32(0x80, K_CS, H0, 0x8e);
    recorder32(&m, H1, vec::GP, true);
    m.idt32(vec::GP, K_CS, H1, 0x8e);
    assert_eq!(m.run(), CpuExit::Halted);
    assert_eq!(m.r32(RES + 4), 0x80 * 8 + 2);
    assert_eq!(m.r32(RES + 8) as u64, USER);
}

#[test]
fn ist_stack_in_long_mode() {
    let mut m = lm64();
    let ist = 0x18_00f8u64;
    m.w64(TSS + 0x24, ist);
    m.idt64(0x40, L_KCS, H0, 0x8e, 1);
    m.code(64, H0, |a| {
        a.mov(rbx, rsp)?;
        a.hlt()
    });
    m.code(64, CODE, |a| {
        a.mov(rsp, 0x8008u64)?;
        a.int(0x40)?;
        a.hlt()
    });
    assert_eq!(m.run(), CpuExit::Halted);
    let top = ist & !0xf;
    assert_eq!(m.gpr(reg::RBX), top - 40);
    assert_eq!(m.r64(top - 16), 0x8008, "saved RSP");
    assert_eq!(m.r64(top - 8), L_KDS as u64, "saved SS");
    assert_eq!(m.r64(top - 32), L_KCS as u64, "saved CS");
    let ret = m.r64(top - 40);
    assert_eq!(m.r32(ret - 2) & 0xffff, 0x40cd, "return RIP after INT");
}

#[test]
fn call_gate_ring3_to_ring0_and_retf() {
    let mut m = pm32();
    m.gdt(CGATE, gate(K_CS, H0 as u32, 0xec, 2));
    enter_ring3_32(&m, 0x202);
    m.code(32, USER, |a| {
        a.push(0x1111_1111)?;
        a.push(0x2222_2222)?;
        a.db(&[0x9a, 0, 0, 0, 0])?;
        a.dw(&[CGATE | 3])?;
        a.mov(edi, esp)?;
        a.mov(ebp, cs)?;
        a.int(0x81)
    });
    m.code(32, H0, |a| {
        a.mov(eax, dword_ptr(esp + 8))?;
        a.mov(ebx, dword_ptr(esp + 12))?;
        a.mov(ecx, dword_ptr(esp + 4))?;
        a.mov(edx, esp)?;
        a.mov(esi, cs)?;
        a.retf_1(8)
    });
    m.code(32, H1, |a| a.hlt());
    m.idt32(0x81, K_CS, H1, 0xee);
    assert_eq!(m.run(), CpuExit::Halted);
    assert_eq!(m.gpr(reg::RAX), 0x2222_2222);
    assert_eq!(m.gpr(reg::RBX), 0x1111_1111);
    assert_eq!(m.gpr(reg::RCX), U_CS as u64);
    assert_eq!(m.gpr(reg::RDX), K_STACK - 24);
    assert_eq!(m.gpr(reg::RSI), K_CS as u64);
    assert_eq!(m.gpr(reg::RDI), U_STACK);
    assert_eq!(m.gpr(reg::RBP), U_CS as u64);
}

#[test]
fn long_mode_call_gate() {
    let mut m = lm64();
    m.gdt(L_GATE, gate(L_KCS, H0 as u32, 0xec, 0));
    m.gdt(L_GATE + 8, 0);
    m.code(64, CODE, |a| {
        a.push(L_UDS as i32)?;
        a.push(U_STACK as i32)?;
        a.push(0x202)?;
        a.push(L_UCS64 as i32)?;
        a.push(USER as i32)?;
        a.iretq()
    });
    m.w(USER, &[0x48, 0xff, 0x1c, 0x25]);
    m.w32(USER + 4, (USER + 0x100) as u32);
    m.w64(USER + 0x100, 0);
    m.w16(USER + 0x108, L_GATE | 3);
    m.code(64, USER + 8, |a| {
        a.mov(rdi, rsp)?;
        a.int(0x81)
    });
    m.code(64, H0, |a| {
        a.mov(rbx, rsp)?;
        a.mov(rcx, qword_ptr(rsp + 8))?;
        a.mov(rdx, qword_ptr(rsp + 24))?;
        a.db(&[0x48, 0xcb])
    });
    m.code(64, H1, |a| a.hlt());
    m.idt64(0x81, L_KCS, H1, 0xee, 0);
    assert_eq!(m.run(), CpuExit::Halted);
    assert_eq!(m.gpr(reg::RBX), K_STACK - 32);
    assert_eq!(m.gpr(reg::RCX), L_UCS64 as u64);
    assert_eq!(m.gpr(reg::RDX), L_UDS as u64);
    assert_eq!(m.gpr(reg::RDI), U_STACK);
}

#[test]
fn syscall_sysret_round_trip() {
    let mut m = lm64();
    let entry = H0;
    m.code(64, CODE, |a| {
        a.mov(ecx, 0xc000_0080u32)?;
        a.rdmsr()?;
        a.or(eax, 1)?;
        a.wrmsr()?;
        a.mov(ecx, 0xc000_0081u32)?;
        a.xor(eax, eax)?;
        a.mov(edx, (0x18 << 16) | L_KCS as u32)?;
        a.wrmsr()?;
        a.mov(ecx, 0xc000_0082u32)?;
        a.mov(eax, entry as u32)?;
        a.xor(edx, edx)?;
        a.wrmsr()?;
        a.mov(ecx, 0xc000_0084u32)?;
        a.mov(eax, 0x200)?;
        a.wrmsr()?;
        a.mov(rsp, U_STACK)?;
        a.mov(rcx, USER)?;
        a.mov(r11, 0x202u64)?;
        a.sysretq()
    });
    m.code(64, USER, |a| {
        a.mov(rax, 42u64)?;
        a.syscall()?;
        a.mov(rsi, rax)?;
        a.mov(rbp, cs)?;
        a.int(0x81)
    });
    m.code(64, entry, |a| {
        a.mov(rbx, rcx)?;
        a.mov(rdx, r11)?;
        a.pushfq()?;
        a.pop(r12)?;
        a.mov(r13, cs)?;
        a.add(rax, 1)?;
        a.sysretq()
    });
    m.code(64, H1, |a| a.hlt());
    m.idt64(0x81, L_KCS, H1, 0xee, 0);
    assert_eq!(m.run(), CpuExit::Halted);
    let after_syscall = m.gpr(reg::RBX);
    assert_eq!(
        m.r32(after_syscall - 2) & 0xffff,
        0x050f,
        "RCX = after SYSCALL"
    );
    assert_eq!(m.gpr(reg::RDX) & 0x202, 0x202);
    assert_eq!(m.gpr(12) & flags::IF, 0, "FMASK cleared IF");
    assert_eq!(m.gpr(13), L_KCS as u64);
    assert_eq!(m.gpr(reg::RSI), 43);
    assert_eq!(m.gpr(reg::RBP), L_UCS64 as u64);
    // SYSCALL with EFER.SCE clear is #UD.
    let mut m = lm64();
    m.code(64, CODE, |a| a.syscall());
    m.code(64, H0, |a| a.hlt());
    m.idt64(vec::UD, L_KCS, H0, 0x8e, 0);
    assert_eq!(m.run(), CpuExit::Halted);
    assert_eq!(m.cpu.last_exception, Some(super::super::Exc::UD));
}

#[test]
fn sysenter_sysexit() {
    let mut m = pm32();
    m.code(32, CODE, |a| {
        a.mov(ecx, 0x174)?;
        a.mov(eax, K_CS as u32)?;
        a.xor(edx, edx)?;
        a.wrmsr()?;
        a.mov(ecx, 0x175)?;
        a.mov(eax, K_STACK as u32)?;
        a.wrmsr()?;
        a.mov(ecx, 0x176)?;
        a.mov(eax, H0 as u32)?;
        a.wrmsr()?;
        a.mov(edx, USER as u32)?;
        a.mov(ecx, U_STACK as u32)?;
        a.sysexit()
    });
    m.code(32, USER, |a| {
        a.mov(edi, cs)?;
        a.mov(ebp, esp)?;
        a.mov(eax, 7)?;
        a.sysenter()
    });
    m.code(32, H0, |a| {
        a.mov(ebx, esp)?;
        a.mov(esi, cs)?;
        a.hlt()
    });
    assert_eq!(m.run(), CpuExit::Halted);
    assert_eq!(m.gpr(reg::RDI), U_CS as u64);
    assert_eq!(m.gpr(reg::RBP), U_STACK);
    assert_eq!(m.gpr(reg::RBX), K_STACK);
    assert_eq!(m.gpr(reg::RSI), K_CS as u64);
    assert_eq!(m.gpr(reg::RAX), 7);
    assert_eq!(m.cpu.seg[SS].selector, K_DS);
    assert_eq!(m.cpu.cpl, 0);
}

/// 32-bit paging with one 4-MiB identity page (0–4 MiB); 4–8 MiB unmapped.
fn enable_paging32(m: &mut M) {
    m.w32(0x20000, 0x87);
    m.cpu.cr3 = 0x20000;
    m.cpu.cr4 |= cr4::PSE;
    m.cpu.cr0 |= cr0::PG;
}

#[test]
fn double_fault_on_fault_during_page_fault_delivery() {
    let mut m = pm32();
    enable_paging32(&mut m);
    m.idt32(vec::PF, NP_CODE, H0, 0x8e);
    recorder32(&m, H1, vec::DF, true);
    m.idt32(vec::DF, K_CS, H1, 0x8e);
    m.code(32, CODE, |a| {
        a.mov(eax, dword_ptr(0x40_0000))?;
        a.hlt()
    });
    assert_eq!(m.run(), CpuExit::Halted);
    assert_eq!(m.r32(RES), vec::DF as u32);
    assert_eq!(m.r32(RES + 4), 0);
    assert_eq!(m.cpu.cr2, 0x40_0000);
    // Benign then contributory is handled serially: #UD with a bad gate
    // becomes #GP(6*8+2+1), no double fault.
    let mut m = pm32();
    m.w64(IDT + vec::UD as u64 * 8, 0);
    recorder32(&m, H1, vec::GP, true);
    m.idt32(vec::GP, K_CS, H1, 0x8e);
    m.code(32, CODE, |a| a.ud2());
    assert_eq!(m.run(), CpuExit::Halted);
    assert_eq!(m.r32(RES + 4), vec::UD as u32 * 8 + 2 + 1);
}

#[test]
fn triple_fault_shuts_down() {
    let mut m = pm32();
    m.cpu.idtr.limit = 0;
    m.code(32, CODE, |a| a.ud2());
    assert_eq!(m.run(), CpuExit::Shutdown);
    // With paging: #PF whose delivery faults on an unmapped stack twice.
    let mut m = pm32();
    enable_paging32(&mut m);
    m.idt32(vec::PF, K_CS, H0, 0x8e);
    m.idt32(vec::DF, K_CS, H0, 0x8e);
    m.code(32, CODE, |a| {
        a.mov(esp, 0x40_1000)?;
        a.mov(eax, dword_ptr(0x40_0000))
    });
    assert_eq!(m.run(), CpuExit::Shutdown);
}

/// Writes a 32-bit TSS image for a ring-0 task at `eip` with stack `esp`.
fn tss_image(m: &M, at: u64, eip: u64, stack_top: u64) {
    m.w32(at + 0x20, eip as u32);
    m.w32(at + 0x24, 2);
    m.w32(at + 0x38, stack_top as u32);
    for (i, sel) in [K_DS, K_CS, K_DS, K_DS, K_DS, K_DS].iter().enumerate() {
        m.w32(at + 0x48 + 4 * i as u64, *sel as u32);
    }
}

#[test]
fn double_fault_task_gate_switches_task() {
    let mut m = pm32();
    tss_image(&m, TSS2, H1, 0x60000);
    m.w64(IDT + vec::DF as u64 * 8, gate(TSS2_SEL, 0, 0x85, 0));
    // #GP's gate names a non-present code segment: #GP, then #NP → #DF.
    m.idt32(vec::GP, NP_CODE, H0, 0x8e);
    m.code(32, H1, |a| {
        a.pop(eax)?;
        a.mov(ebx, dword_ptr(TSS2))?;
        a.str(ecx)?;
        a.mov(edx, esp)?;
        a.pushfd()?;
        a.pop(esi)?;
        a.hlt()
    });
    m.code(32, CODE, |a| {
        a.mov(eax, XO_CODE as u32)?;
        a.mov(ds, ax)
    });
    assert_eq!(m.run(), CpuExit::Halted);
    assert_eq!(m.gpr(reg::RAX), 0, "#DF error code");
    assert_eq!(m.gpr(reg::RBX), TSS_SEL as u64, "back link");
    assert_eq!(m.gpr(reg::RCX), TSS2_SEL as u64);
    assert_eq!(m.gpr(reg::RDX), 0x60000);
    assert_ne!(m.gpr(reg::RSI) & flags::NT, 0);
    assert_eq!(m.cpu.tr.selector, TSS2_SEL);
    assert_ne!(m.cpu.cr0 & cr0::TS, 0);
    // The old task's state: EIP of the faulting instruction, EAX.
    assert_eq!(m.r32(TSS + 0x20) as u64, CODE + 5);
    assert_eq!(m.r32(TSS + 0x28), XO_CODE as u32);
    // Both TSS descriptors busy.
    assert_eq!((m.r64(GDT + TSS_SEL as u64) >> 40) & 0xf, 0xb);
    assert_eq!((m.r64(GDT + TSS2_SEL as u64) >> 40) & 0xf, 0xb);
}

#[test]
fn call_to_tss_and_iret_back() {
    let mut m = pm32();
    tss_image(&m, TSS2, H1, 0x60000);
    m.code(32, H1, |a| {
        a.mov(dword_ptr(RES), 0x77)?;
        a.mov(eax, 0x99)?;
        a.iretd()?;
        // A second CALL to the task resumes here.
        a.mov(dword_ptr(RES + 4), 0x88)?;
        a.iretd()
    });
    m.code(32, CODE, |a| {
        a.mov(eax, 0x1234)?;
        a.db(&[0x9a, 0, 0, 0, 0])?;
        a.dw(&[TSS2_SEL])?;
        a.mov(ebx, eax)?;
        a.db(&[0x9a, 0, 0, 0, 0])?;
        a.dw(&[TSS2_SEL])?;
        a.pushfd()?;
        a.pop(esi)?;
        a.hlt()
    });
    assert_eq!(m.run(), CpuExit::Halted);
    assert_eq!(m.r32(RES), 0x77);
    assert_eq!(m.r32(RES + 4), 0x88);
    assert_eq!(m.gpr(reg::RBX), 0x1234);
    assert_eq!(m.gpr(reg::RAX), 0x1234);
    assert_eq!(m.cpu.tr.selector, TSS_SEL);
    assert_eq!(m.gpr(reg::RSI) & flags::NT, 0);
    assert_eq!((m.r64(GDT + TSS2_SEL as u64) >> 40) & 0xf, 0x9);
    // JMP to a busy TSS is #GP(selector).
    let mut m = pm32();
    recorder32(&m, H0, vec::GP, true);
    m.idt32(vec::GP, K_CS, H0, 0x8e);
    m.code(32, CODE, |a| {
        a.db(&[0xea, 0, 0, 0, 0])?;
        a.dw(&[TSS_SEL])
    });
    assert_eq!(m.run(), CpuExit::Halted);
    assert_eq!(m.r32(RES + 4), TSS_SEL as u32);
}

#[test]
fn iretq_to_ring3() {
    let mut m = lm64();
    m.code(64, CODE, |a| {
        a.mov(rax, U_STACK)?;
        a.push(L_UDS as i32)?;
        a.push(rax)?;
        a.push(0x3202)?;
        a.push(L_UCS64 as i32)?;
        a.push(USER as i32)?;
        a.iretq()
    });
    m.code(64, USER, |a| {
        a.mov(rax, cs)?;
        a.mov(rdi, rsp)?;
        a.pushfq()?;
        a.pop(rsi)?;
        a.int(0x81)
    });
    m.code(64, H1, |a| {
        a.mov(rbx, qword_ptr(rsp + 8))?;
        a.mov(rcx, qword_ptr(rsp + 32))?;
        a.mov(rdx, rsp)?;
        a.hlt()
    });
    m.idt64(0x81, L_KCS, H1, 0xee, 0);
    assert_eq!(m.run(), CpuExit::Halted);
    assert_eq!(m.gpr(reg::RAX), L_UCS64 as u64);
    assert_eq!(m.gpr(reg::RDI), U_STACK);
    assert_eq!(
        m.gpr(reg::RSI) & 0x3200,
        0x3200,
        "IOPL and IF from the image"
    );
    assert_eq!(m.gpr(reg::RBX), L_UCS64 as u64);
    assert_eq!(m.gpr(reg::RCX), L_UDS as u64);
    assert_eq!(m.gpr(reg::RDX), K_STACK - 40);
    assert_eq!(m.cpu.seg[SS].selector, 0, "null SS after a ring change");
}

#[test]
fn virtual_8086_mode() {
    for iopl in [0u32, 3] {
        let mut m = pm32();
        let vm_cs = 0x2000u32;
        m.code(32, CODE, |a| {
            for s in [
                0x40u32,
                0x30,
                0x20,
                0x10,
                0x3000,
                0x900,
                0x202 | flags::VM as u32 | (iopl << 12),
                vm_cs,
                0x100,
            ] {
                a.push(s)?;
            }
            a.iretd()
        });
        m.code(16, 0x20100, |a| {
            a.mov(ax, 0x1234)?;
            a.int(0x21)
        });
        // #GP handler: records error code, CS and the segment pushes.
        m.code(32, H0, |a| {
            a.pop(eax)?;
            a.mov(ebx, dword_ptr(esp + 4))?;
            a.mov(ecx, dword_ptr(esp + 20))?;
            a.mov(edx, dword_ptr(esp + 32))?;
            a.mov(esi, ds)?;
            a.hlt()
        });
        m.code(32, H1, |a| {
            a.mov(ebx, dword_ptr(esp + 4))?;
            a.mov(ecx, dword_ptr(esp + 20))?;
            a.mov(edx, dword_ptr(esp + 32))?;
            a.mov(esi, ds)?;
            a.hlt()
        });
        m.idt32(vec::GP, K_CS, H0, 0x8e);
        m.idt32(0x21, K_CS, H1, 0xee);
        assert_eq!(m.run(), CpuExit::Halted);
        if iopl == 0 {
            assert_eq!(m.cpu.last_exception, Some(super::super::Exc::gp(0)));
            assert_eq!(m.gpr(reg::RAX), 0);
        }
        assert_eq!(m.gpr(reg::RBX), vm_cs as u64);
        assert_eq!(m.gpr(reg::RCX), 0x10, "ES pushed");
        assert_eq!(m.gpr(reg::RDX), 0x40, "GS pushed");
        assert_eq!(m.gpr(reg::RSI), 0, "DS nulled");
        assert!(!m.cpu.v86());
        assert_eq!(m.cpu.cpl, 0);
    }
}

#[test]
fn io_permission_bitmap() {
    let mut m = pm32();
    // Allow port 0x80 only (the bitmap at TSS+0x68 is all ones elsewhere).
    for i in 0..0x400u64 / 8 {
        m.w64(TSS + 0x68 + i * 8, u64::MAX);
    }
    m.w(TSS + 0x68 + 0x10, &[0xfe]);
    enter_ring3_32(&m, 0x202);
    recorder32(&m, H0, vec::GP, true);
    m.idt32(vec::GP, K_CS, H0, 0x8e);
    m.code(32, USER, |a| {
        a.out(0x80, al)?;
        a.out(0x81, al)
    });
    assert_eq!(m.run(), CpuExit::Halted);
    assert_eq!(m.r32(RES + 8) as u64, USER + 2);
}

#[test]
fn descriptor_inspection() {
    let mut m = pm32();
    m.code(32, CODE, |a| {
        a.mov(eax, U_DS as u32)?;
        a.lar(ebx, eax)?;
        a.lsl(ecx, eax)?;
        a.mov(edx, XO_CODE as u32)?;
        a.verr(dx)?;
        a.setz(byte_ptr(RES))?;
        a.verw(ax)?;
        a.setz(byte_ptr(RES + 1))?;
        a.mov(edx, 0x1f8)?;
        a.lar(esi, edx)?;
        a.setz(byte_ptr(RES + 2))?;
        a.sgdt(ptr(RES + 8))?;
        a.str(di)?;
        a.hlt()
    });
    assert_eq!(m.run(), CpuExit::Halted);
    assert_eq!(m.gpr(reg::RBX), 0x00cf_f200);
    assert_eq!(m.gpr(reg::RCX), 0xffff_ffff);
    assert_eq!(
        m.r32(RES) & 0xffffff,
        0x00_01_00,
        "VERR no, VERW yes, LAR fails"
    );
    assert_eq!(m.r64(RES + 8) & 0xffff_ffff_ffff, (GDT << 16) | 0xff);
    assert_eq!(m.gpr(reg::RDI) & 0xffff, TSS_SEL as u64);
}

#[test]
fn control_registers_and_msrs() {
    let mut m = lm64();
    // EFER.LME can't change while paging is on; unknown MSRs #GP.
    assert!(m.cpu.write_msr(0xc000_0080, efer::NXE).is_err());
    assert!(m.cpu.read_msr(0x1234).is_err());
    assert_eq!(m.cpu.read_msr(0xfe), Ok(0x508));
    assert!(m.cpu.write_msr(0xc000_0100, 0x8000_0000_0000_0000).is_err());
    m.cpu.write_msr(0xc000_0101, 0xffff_8000_0000_1000).unwrap();
    assert_eq!(m.cpu.seg[5].base, 0xffff_8000_0000_1000);
    // Writing the TSC moves it.
    m.cpu.write_msr(0x10, 1 << 40).unwrap();
    assert!(m.cpu.read_msr(0x10).unwrap() >= 1 << 40);
    // CR4: clearing PAE in long mode, unknown bits: #GP. CR0.PG off in 64-bit: #GP.
    assert!(m.cpu.write_cr4(0).is_err());
    assert!(m.cpu.write_cr4(cr4::PAE | (1 << 20)).is_err());
    assert!(m.cpu.write_cr0(m.cpu.cr0 & !cr0::PG).is_err());
    assert!(m.cpu.write_cr0(cr0::PG).is_err());
    // MOV to CR at CPL 3 is #GP(0); SWAPGS swaps.
    m.code(64, CODE, |a| {
        a.swapgs()?;
        a.mov(rax, cr0)?;
        a.hlt()
    });
    m.cpu.msr.kernel_gs_base = 0x5555;
    assert_eq!(m.run(), CpuExit::Halted);
    assert_eq!(m.cpu.seg[5].base, 0x5555);
    assert_eq!(m.gpr(reg::RAX), m.cpu.cr0);
}

#[test]
fn cpuid_table() {
    let l0 = cpuid_leaf(0, 0);
    let mut v = Vec::new();
    for r in [l0[1], l0[3], l0[2]] {
        v.extend_from_slice(&r.to_le_bytes());
    }
    assert_eq!(&v, b"GenuineIntel");
    let l1 = cpuid_leaf(1, 0);
    assert_eq!(l1[2], cpuid_features().leaf1_ecx);
    assert_ne!(l1[2] & (1 << 31), 0);
    assert_ne!(l1[3] & (1 << 9), 0, "APIC");
    assert_eq!(l1[3] & (1 << 1), 0, "no VME");
    let e1 = cpuid_leaf(0x8000_0001, 0);
    assert_ne!(e1[3] & (1 << 29), 0, "LM");
    let mut brand = Vec::new();
    for l in 0x8000_0002..=0x8000_0004 {
        for r in cpuid_leaf(l, 0) {
            brand.extend_from_slice(&r.to_le_bytes());
        }
    }
    assert!(brand.starts_with(b"Vireo Virtual CPU\0"));
    let h = cpuid_leaf(0x4000_0000, 0);
    let mut hv = Vec::new();
    for r in [h[1], h[2], h[3]] {
        hv.extend_from_slice(&r.to_le_bytes());
    }
    assert_eq!(&hv, b"VireoVireoVi");
    assert_eq!(cpuid_leaf(0x20, 0), cpuid_leaf(0x16, 0));
    assert_eq!(cpuid_leaf(0x8000_0020, 0), cpuid_leaf(0x16, 0));
    // A 1 GHz crystal and TSC: Linux need not calibrate.
    assert_eq!(cpuid_leaf(0x15, 0), [1, 1, 1_000_000_000, 0]);
}

#[test]
fn v86_interrupt_round_trip() {
    let mut m = pm32();
    m.code(32, CODE, |a| {
        for s in [
            0u32,
            0,
            0x600,
            0x500,
            0x3000,
            0x900,
            0x3202 | flags::VM as u32,
            0x2000,
            0x100,
        ] {
            a.push(s)?;
        }
        a.iretd()
    });
    m.code(16, 0x20100, |a| {
        a.mov(ax, 0x1234)?;
        a.int(0x21)?;
        a.mov(word_ptr(0x10), ax)?;
        a.hlt()
    });
    // INT 21h handler (ring 0): AX += 1, back to virtual-8086 mode.
    m.code(32, H0, |a| {
        a.add(eax, 1)?;
        a.iretd()
    });
    recorder32(&m, H1, vec::GP, true);
    m.idt32(0x21, K_CS, H0, 0xee);
    m.idt32(vec::GP, K_CS, H1, 0x8e);
    assert_eq!(m.run(), CpuExit::Halted);
    // DS = 0x600: the V86 store went to 0x6010.
    assert_eq!(m.r32(0x6010) & 0xffff, 0x1235);
    // HLT in V86 mode is #GP(0).
    assert_eq!(m.r32(RES), vec::GP as u32);
    assert_eq!(m.r32(RES + 4), 0);
    assert_eq!(m.r32(RES + 8), 0x108);
}

#[test]
fn int3_into_through_trap_gates() {
    let mut m = pm32();
    m.code(32, H0, |a| {
        a.pushfd()?;
        a.pop(ebx)?;
        a.mov(ecx, dword_ptr(esp))?;
        a.iretd()
    });
    m.code(32, H1, |a| {
        a.mov(edx, dword_ptr(esp))?;
        a.iretd()
    });
    m.idt32(vec::BP, K_CS, H0, 0x8f);
    m.idt32(vec::OF, K_CS, H1, 0x8f);
    m.code(32, CODE, |a| {
        a.sti()?;
        a.int3()?;
        a.mov(esi, 0x7fff_ffff)?;
        a.into()?;
        a.add(esi, 1)?;
        a.into()?;
        a.hlt()
    });
    assert_eq!(m.run(), CpuExit::Halted);
    assert_ne!(m.gpr(reg::RBX) & flags::IF, 0, "trap gate keeps IF");
    assert_eq!(m.gpr(reg::RCX), CODE + 2, "INT3 returns after itself");
    assert_eq!(
        m.gpr(reg::RDX),
        CODE + 2 + 5 + 1 + 3 + 1,
        "INTO traps only with OF"
    );
}

struct Pic {
    pending: std::sync::Mutex<Vec<u8>>,
}

impl super::super::InterruptController for Pic {
    fn has_interrupt(&self) -> bool {
        !self.pending.lock().unwrap().is_empty()
    }
    fn acknowledge(&self) -> Option<u8> {
        self.pending.lock().unwrap().pop()
    }
}

#[test]
fn external_interrupts() {
    // Real mode: HLT wakes up, the handler IRETs past the HLT.
    let mut m = M::new();
    let pic = Arc::new(Pic {
        pending: std::sync::Mutex::new(Vec::new()),
    });
    m.cpu.set_interrupt_controller(pic.clone());
    m.cpu.seg[CS] = Segment::real(0);
    m.cpu.seg[SS] = Segment::real(0);
    m.cpu.gpr[reg::RSP] = 0x7000;
    m.cpu.rip = 0x7c00;
    m.w16(0x08 * 4, 0x2000);
    m.w16(0x08 * 4 + 2, 0);
    m.code(16, 0x2000, |a| {
        a.inc(bx)?;
        a.iret()
    });
    m.code(16, 0x7c00, |a| {
        a.sti()?;
        a.hlt()?;
        a.mov(cx, 0x55)?;
        a.hlt()
    });
    assert_eq!(m.run(), CpuExit::Halted);
    pic.pending.lock().unwrap().push(0x08);
    assert_eq!(m.run(), CpuExit::Halted);
    assert_eq!(m.gpr(reg::RBX), 1);
    assert_eq!(m.gpr(reg::RCX), 0x55);
    // Protected mode, gate not present: #NP(vector*8 + 2 + EXT).
    let mut m = pm32();
    m.cpu.set_interrupt_controller(pic.clone());
    recorder32(&m, H0, vec::NP, true);
    m.idt32(vec::NP, K_CS, H0, 0x8e);
    m.idt32(0x30, K_CS, H1, 0x0e);
    m.code(32, CODE, |a| {
        a.sti()?;
        a.nop()?;
        a.hlt()
    });
    pic.pending.lock().unwrap().push(0x30);
    assert_eq!(m.run(), CpuExit::Halted);
    assert_eq!(m.r32(RES + 4), 0x30 * 8 + 3);
}

#[test]
fn ldt_segments_and_mov_ss_inhibit() {
    let mut m = pm32();
    // LDT at 0x4000 with one data segment (index 1) based at 0x12000.
    m.gdt(0x60, seg_desc(0x4000, 0x0f, 0x82, 0));
    m.w64(0x4008, seg_desc(0x12000, 0xffff, 0x92, 0));
    m.code(32, CODE, |a| {
        a.mov(eax, 0x60)?;
        a.lldt(ax)?;
        a.mov(eax, 0x0c)?;
        a.mov(es, ax)?;
        a.mov(dword_ptr(0).es(), 0xabcd)?;
        a.mov(eax, K_DS as u32)?;
        a.mov(ss, ax)?;
        a.hlt()
    });
    for _ in 0..7 {
        m.cpu.step();
    }
    assert!(m.cpu.irq_inhibit, "MOV SS inhibits interrupts");
    assert_eq!(m.run(), CpuExit::Halted);
    assert_eq!(m.cpu.seg[ES].base, 0x12000);
    assert_eq!(m.r32(0x12000), 0xabcd);
    assert_eq!(m.cpu.ldtr.selector, 0x60);
}

#[test]
fn jmp_through_task_gate() {
    let mut m = pm32();
    tss_image(&m, TSS2, H1, 0x60000);
    m.gdt(0x68, gate(TSS2_SEL, 0, 0xe5, 0));
    m.code(32, H1, |a| {
        a.pushfd()?;
        a.pop(esi)?;
        a.hlt()
    });
    m.code(32, CODE, |a| {
        a.mov(ebx, 0x4321)?;
        a.db(&[0xea, 0, 0, 0, 0])?;
        a.dw(&[0x68])
    });
    m.w32(TSS2, 0xdead);
    assert_eq!(m.run(), CpuExit::Halted);
    assert_eq!(m.cpu.tr.selector, TSS2_SEL);
    assert_eq!(m.gpr(reg::RSI) & flags::NT, 0, "JMP does not nest");
    assert_eq!(m.r32(TSS2), 0xdead, "no back link");
    assert_eq!(m.r32(TSS + 0x34), 0x4321, "EBX saved");
    assert_eq!(
        (m.r64(GDT + TSS_SEL as u64) >> 40) & 0xf,
        0x9,
        "old TSS not busy"
    );
    assert_eq!((m.r64(GDT + TSS2_SEL as u64) >> 40) & 0xf, 0xb);
}

#[test]
fn sixteen_bit_interrupt_gate() {
    let mut m = pm32();
    m.code(32, 0x9000, |a| {
        a.mov(ebx, esp)?;
        a.iret()
    });
    m.idt32(0x40, K_CS, 0x9000, 0x86);
    // 16-bit gates push a 16-bit IP: the code must sit below 64 KiB.
    m.cpu.rip = 0x8000;
    m.code(32, 0x8000, |a| {
        a.int(0x40)?;
        a.mov(ecx, esp)?;
        a.hlt()
    });
    assert_eq!(m.run(), CpuExit::Halted);
    assert_eq!(m.gpr(reg::RBX), K_STACK - 6);
    assert_eq!(m.gpr(reg::RCX), K_STACK);
    assert_eq!(m.r32(K_STACK - 6) & 0xffff, 0x8002);
}

//! Smoke tests of the interpreter core on small hand-assembled programs.

use super::*;
use crate::bus::AddressSpace;
use crate::memory::GuestRam;

fn cpu_with(code: &[u8], at: u64) -> Cpu {
    let ram = GuestRam::new(1 << 20).expect("ram");
    ram.write_bytes(at, code);
    Cpu::new(Arc::new(AddressSpace::new(ram)))
}

#[test]
fn real_mode_call_and_ret() {
    let code = [
        0xbc, 0x00, 0x80, // mov sp, 0x8000
        0xb8, 0x05, 0x00, // mov ax, 5
        0xe8, 0x01, 0x00, // call +1
        0xf4, // hlt
        0x01, 0xc0, // add ax, ax
        0xc3, // ret
    ];
    let mut cpu = cpu_with(&code, 0x7c00);
    cpu.seg[CS] = Segment::real(0);
    cpu.rip = 0x7c00;
    assert_eq!(cpu.run(100), CpuExit::Halted);
    assert_eq!(cpu.gpr[reg::RAX] & 0xffff, 10);
    assert_eq!(cpu.gpr[reg::RSP] & 0xffff, 0x8000);
    assert_eq!(cpu.rip, 0x7c0a);
}

#[test]
fn protected_mode_loop_and_store() {
    let code = [
        0xb9, 100, 0, 0, 0, // mov ecx, 100
        0x31, 0xc0, // xor eax, eax
        0x01, 0xc8, // add eax, ecx
        0xe2, 0xfc, // loop -4
        0xa3, 0x00, 0x20, 0x00, 0x00, // mov [0x2000], eax
        0xf4, // hlt
    ];
    let mut cpu = cpu_with(&code, 0x1000);
    cpu.cr0 |= cr0::PE;
    cpu.seg[CS] = Segment::flat32(8, true);
    cpu.seg[DS] = Segment::flat32(16, false);
    cpu.seg[SS] = Segment::flat32(16, false);
    cpu.rip = 0x1000;
    assert_eq!(cpu.run(1000), CpuExit::Halted);
    assert_eq!(cpu.gpr[reg::RAX], 5050);
    assert_eq!(cpu.space.ram.read_u32(0x2000), 5050);
    assert_eq!(cpu.icount, 2 + 200 + 2);
}

#[test]
fn self_modifying_code_is_seen() {
    // Loop twice over a `mov al, imm8` whose immediate the loop rewrites.
    let code = [
        0xb1, 0x02, // mov cl, 2
        0xb0, 0x11, // 0x1002: mov al, 0x11
        0xc6, 0x05, 0x03, 0x10, 0x00, 0x00, 0x22, // mov byte [0x1003], 0x22
        0xfe, 0xc9, // dec cl
        0x75, 0xf3, // jnz 0x1002
        0xf4,
    ];
    let mut cpu = cpu_with(&code, 0x1000);
    cpu.cr0 |= cr0::PE;
    cpu.seg[CS] = Segment::flat32(8, true);
    cpu.seg[DS] = Segment::flat32(16, false);
    cpu.rip = 0x1000;
    assert_eq!(cpu.run(1000), CpuExit::Halted);
    assert_eq!(cpu.gpr[reg::RAX] & 0xff, 0x22);
}

#[test]
fn unknown_instruction_is_undefined_opcode() {
    // 0f 0b = UD2 is claimed by the system module; use an invalid encoding.
    let mut cpu = cpu_with(&[0x0f, 0xff], 0x7c00);
    cpu.seg[CS] = Segment::real(0);
    cpu.rip = 0x7c00;
    // IVT entry 6 points at a HLT at 0x500.
    cpu.space.ram.write_bytes(6 * 4, &[0x00, 0x05, 0x00, 0x00]);
    cpu.space.ram.write_bytes(0x500, &[0xf4]);
    cpu.gpr[reg::RSP] = 0x8000;
    assert_eq!(cpu.run(10), CpuExit::Halted);
    assert_eq!(cpu.last_exception, Some(Exc::UD));
    assert_eq!(cpu.rip, 0x501);
}

#[test]
fn unimplemented_instruction_is_ud_and_logged_once() {
    // vzeroupper (VEX, not implemented) twice in 32-bit protected mode with
    // an empty IDT: each raises #UD (then a triple fault); logged once.
    let mut cpu = cpu_with(&[0xc5, 0xf8, 0x77], 0x1000);
    for _ in 0..2 {
        cpu.reset();
        cpu.cr0 |= cr0::PE;
        cpu.seg[CS] = Segment::flat32(8, true);
        cpu.idtr.limit = 0;
        cpu.rip = 0x1000;
        cpu.last_exception = None;
        assert_eq!(cpu.run(10), CpuExit::Shutdown);
        assert_eq!(cpu.last_exception, Some(Exc::UD));
    }
    assert_eq!(cpu.logged_ud.len(), 1);
}

#[test]
fn leave_pops_the_frame_pointer() {
    // mov ebp, esp; push 0x1234 (as the saved frame pointer's slot);
    // mov ebp, esp; sub esp, 0x20; leave; hlt
    let code = [
        0x68, 0x34, 0x12, 0x00, 0x00, // push 0x1234
        0x89, 0xe5, // mov ebp, esp
        0x83, 0xec, 0x20, // sub esp, 0x20
        0xc9, // leave
        0xf4,
    ];
    let mut cpu = cpu_with(&code, 0x1000);
    cpu.cr0 |= cr0::PE;
    cpu.seg[CS] = Segment::flat32(8, true);
    cpu.seg[SS] = Segment::flat32(16, false);
    cpu.gpr[reg::RSP] = 0x8000;
    cpu.rip = 0x1000;
    assert_eq!(cpu.run(100), CpuExit::Halted);
    assert_eq!(cpu.gpr[reg::RBP], 0x1234);
    assert_eq!(cpu.gpr[reg::RSP], 0x8000);
    // 16-bit form in real mode.
    let code16 = [0x68, 0x34, 0x12, 0x89, 0xe5, 0x83, 0xec, 0x20, 0xc9, 0xf4];
    let mut cpu = cpu_with(&code16, 0x7c00);
    cpu.seg[CS] = Segment::real(0);
    cpu.gpr[reg::RSP] = 0x8000;
    cpu.rip = 0x7c00;
    assert_eq!(cpu.run(100), CpuExit::Halted);
    assert_eq!(cpu.gpr[reg::RBP] & 0xffff, 0x1234);
    assert_eq!(cpu.gpr[reg::RSP] & 0xffff, 0x8000);
}

/// Two vCPUs on two host threads hammer shared counters with LOCK-prefixed
/// RMW instructions, a CMPXCHG loop and an XCHG spinlock around a plain
/// increment: every update must survive (SDM vol. 3 §8.1.2).
#[test]
fn locked_instructions_are_atomic_across_vcpus() {
    use iced_x86::code_asm::*;
    const N: u32 = 20_000;
    let mut a = CodeAssembler::new(32).expect("asm");
    let mut l = a.create_label();
    let mut c = a.create_label();
    let mut s = a.create_label();
    a.mov(ecx, N).unwrap();
    a.set_label(&mut l).unwrap();
    a.lock().inc(dword_ptr(0x2000)).unwrap();
    a.mov(eax, 1u32).unwrap();
    a.lock().xadd(dword_ptr(0x2004), eax).unwrap();
    a.set_label(&mut c).unwrap();
    a.mov(eax, dword_ptr(0x2008)).unwrap();
    a.lea(edx, dword_ptr(eax + 3)).unwrap();
    a.lock().cmpxchg(dword_ptr(0x2008), edx).unwrap();
    a.jne(c).unwrap();
    a.mov(edx, 1u32).unwrap();
    a.lock().bts(dword_ptr(0x2020), edx).unwrap();
    a.set_label(&mut s).unwrap();
    a.mov(eax, 1u32).unwrap();
    a.xchg(dword_ptr(0x200c), eax).unwrap();
    a.test(eax, eax).unwrap();
    a.jne(s).unwrap();
    a.add(dword_ptr(0x2010), 1u32).unwrap();
    a.mov(dword_ptr(0x200c), 0u32).unwrap();
    a.dec(ecx).unwrap();
    a.jne(l).unwrap();
    a.hlt().unwrap();
    let code = a.assemble(0x1000).expect("assemble");

    let ram = GuestRam::new(1 << 20).expect("ram");
    ram.write_bytes(0x1000, &code);
    let space = Arc::new(AddressSpace::new(ram));
    let shared = SharedCode::new(1 << 20, 2);
    let origin = std::time::Instant::now();
    let threads: Vec<_> = (0..2)
        .map(|i| {
            let mut cpu = Cpu::new_vcpu(space.clone(), shared.clone(), i, origin);
            cpu.cr0 |= cr0::PE;
            cpu.seg[CS] = Segment::flat32(8, true);
            cpu.seg[DS] = Segment::flat32(16, false);
            cpu.seg[SS] = Segment::flat32(16, false);
            cpu.rip = 0x1000;
            std::thread::spawn(move || {
                // A lost update of the spinlock would spin forever: bound it.
                for _ in 0..20_000 {
                    if cpu.run(100_000) == CpuExit::Halted {
                        return;
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("vcpu thread");
    }
    let ram = &space.ram;
    assert_eq!(ram.read_u32(0x2000), 2 * N, "lock inc");
    assert_eq!(ram.read_u32(0x2004), 2 * N, "lock xadd");
    assert_eq!(ram.read_u32(0x2008), 3 * 2 * N, "lock cmpxchg loop");
    assert_eq!(ram.read_u32(0x2010), 2 * N, "xchg spinlock");
    assert_eq!(ram.read_u32(0x2020), 2, "lock bts");
}

/// A vCPU that writes code another vCPU has cached makes that vCPU drop it.
#[test]
fn code_written_by_one_vcpu_is_seen_by_another() {
    let ram = GuestRam::new(1 << 20).expect("ram");
    // At 0x3000: mov eax, 1; hlt.
    ram.write_bytes(0x3000, &[0xb8, 1, 0, 0, 0, 0xf4]);
    // At 0x1000: mov byte [0x3001], 2; hlt.
    ram.write_bytes(0x1000, &[0xc6, 0x05, 0x01, 0x30, 0, 0, 2, 0xf4]);
    let space = Arc::new(AddressSpace::new(ram));
    let shared = SharedCode::new(1 << 20, 2);
    let origin = std::time::Instant::now();
    let mk = |i: usize, rip: u64| {
        let mut cpu = Cpu::new_vcpu(space.clone(), shared.clone(), i, origin);
        cpu.cr0 |= cr0::PE;
        cpu.seg[CS] = Segment::flat32(8, true);
        cpu.seg[DS] = Segment::flat32(16, false);
        cpu.rip = rip;
        cpu
    };
    let mut reader = mk(0, 0x3000);
    assert_eq!(reader.run(100), CpuExit::Halted);
    assert_eq!(reader.gpr[reg::RAX], 1);
    let mut writer = mk(1, 0x1000);
    assert_eq!(writer.run(100), CpuExit::Halted);
    reader.halted = false;
    reader.rip = 0x3000;
    assert_eq!(reader.run(100), CpuExit::Halted);
    assert_eq!(reader.gpr[reg::RAX], 2);
}

/// The host 16-byte compare-and-swap behind LOCK CMPXCHG16B.
#[test]
fn lock_cmpxchg16b_on_smp() {
    use iced_x86::code_asm::*;
    let mut a = CodeAssembler::new(64).expect("asm");
    a.mov(rax, 1u64).unwrap();
    a.mov(rdx, 2u64).unwrap();
    a.mov(rbx, 3u64).unwrap();
    a.mov(rcx, 4u64).unwrap();
    a.lock().cmpxchg16b(xmmword_ptr(0x2000)).unwrap(); // equal: stores 3:4
    a.setz(r8b).unwrap();
    a.lock().cmpxchg16b(xmmword_ptr(0x2000)).unwrap(); // unequal: loads 3:4
    a.setz(r9b).unwrap();
    a.hlt().unwrap();
    let code = a.assemble(0x1000).expect("assemble");
    let ram = GuestRam::new(1 << 20).expect("ram");
    ram.write_bytes(0x1000, &code);
    ram.write_bytes(0x2000, &[1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]);
    let space = Arc::new(AddressSpace::new(ram));
    let mut cpu = Cpu::new_vcpu(
        space,
        SharedCode::new(1 << 20, 2),
        0,
        std::time::Instant::now(),
    );
    tests_long_mode(&mut cpu);
    cpu.rip = 0x1000;
    assert_eq!(cpu.run(100), CpuExit::Halted);
    assert_eq!(cpu.gpr[8] & 0xff, 1);
    assert_eq!(cpu.gpr[9] & 0xff, 0);
    assert_eq!((cpu.gpr[reg::RAX], cpu.gpr[reg::RDX]), (3, 4));
    assert_eq!(cpu.space.read_phys(0x2000, 8), 3);
    assert_eq!(cpu.space.read_phys(0x2008, 8), 4);
}

/// Puts `cpu` in 64-bit mode with paging from `cr3` and a flat 64-bit code
/// segment (selector 8).
pub(crate) fn enter_long_mode(cpu: &mut Cpu, cr3: u64) {
    cpu.cr3 = cr3;
    cpu.cr4 |= cr4::PAE;
    cpu.efer |= efer::LME | efer::LMA;
    cpu.cr0 |= cr0::PE | cr0::PG;
    cpu.seg[CS] = Segment {
        selector: 8,
        base: 0,
        limit: 0xffff_ffff,
        attr: attr::P | attr::S | attr::L | attr::G | 0xb,
    };
}

/// Long mode with the first 2 MiB identity-mapped (page tables at 0x10000).
fn tests_long_mode(cpu: &mut Cpu) {
    let ram = &cpu.space.ram;
    ram.write_bytes(0x10000, &(0x11000u64 | 3).to_le_bytes());
    ram.write_bytes(0x11000, &(0x12000u64 | 3).to_le_bytes());
    ram.write_bytes(0x12000, &0x83u64.to_le_bytes());
    enter_long_mode(cpu, 0x10000);
    cpu.seg[DS] = Segment::flat32(16, false);
    cpu.seg[SS] = Segment::flat32(16, false);
    cpu.flush_tlb(false);
}

/// Whether the host CPU is an AMD one (CPUID leaf 0 vendor string; Hygon's
/// Zen-based parts included). The emulated CPU is an Intel one, so the tests
/// that compare it with the host allow, on such hosts, for the places where
/// AMD documents a different behaviour (each cited where it is masked).
#[cfg(target_arch = "x86_64")]
pub(crate) fn host_is_amd() -> bool {
    let r = std::arch::x86_64::__cpuid(0);
    let mut v = [0u8; 12];
    v[..4].copy_from_slice(&r.ebx.to_le_bytes());
    v[4..8].copy_from_slice(&r.edx.to_le_bytes());
    v[8..].copy_from_slice(&r.ecx.to_le_bytes());
    &v == b"AuthenticAMD" || &v == b"HygonGenuine"
}

/// SIGFPE for the host-differential tests (#DE, unmasked #XM raised by the
/// instruction under test): one process-wide handler that skips the
/// faulting instruction, its length and the outcome kept per thread. (Each
/// test module installing its own handler let the last one installed
/// replace the other, which then re-ran a faulting instruction forever.)
#[cfg(target_arch = "x86_64")]
pub(crate) mod host_fpe {
    use std::cell::Cell;

    thread_local! {
        /// Length of the instruction under test on this thread.
        static SKIP: Cell<i64> = const { Cell::new(0) };
        /// Set when it raised SIGFPE.
        static HIT: Cell<bool> = const { Cell::new(false) };
    }

    extern "C" fn on_sigfpe(_: libc::c_int, _: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
        let uc = ctx as *mut libc::ucontext_t;
        // SAFETY: the kernel passes a valid ucontext for SA_SIGINFO handlers;
        // only the saved RIP is moved past the faulting instruction (which
        // changed nothing, or only MXCSR flags). The signal is synchronous,
        // so it runs on the thread that armed SKIP.
        unsafe {
            (*uc).uc_mcontext.gregs[libc::REG_RIP as usize] += SKIP.with(|s| s.get());
        }
        HIT.with(|h| h.set(true));
    }

    /// Installs the handler (once per process) and arms it for an
    /// instruction of `len` bytes run natively next on this thread.
    pub(crate) fn arm(len: usize) {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // SAFETY: installs a handler that only touches thread-local
            // cells and the signal context; the sigaction struct is zeroed
            // first. Nothing else in the test binary handles SIGFPE.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_sigfpe as *const () as usize;
                sa.sa_flags = libc::SA_SIGINFO | libc::SA_NODEFER;
                libc::sigemptyset(&mut sa.sa_mask);
                assert_eq!(libc::sigaction(libc::SIGFPE, &sa, std::ptr::null_mut()), 0);
            }
        });
        SKIP.with(|s| s.set(len as i64));
        HIT.with(|h| h.set(false));
    }

    /// Whether the instruction armed for raised SIGFPE (and was skipped).
    pub(crate) fn hit() -> bool {
        HIT.with(|h| h.get())
    }
}

/// An instruction that crosses a page boundary is decoded once and reused,
/// yet sees writes to either of its pages and a new mapping of the second.
#[test]
fn page_crossing_instruction_follows_its_bytes_and_mappings() {
    // 32-bit paging: identity over the first 4 MiB.
    let mut prog = vec![0x90u8; 0x30];
    let code = [
        0xb1, 0x03, // 0x1ff0: mov cl, 3
        0xeb, 0x09, // jmp 0x1ffd
    ];
    prog[..4].copy_from_slice(&code);
    // 0x1ffd: mov eax, 0x11223344 (its last two bytes in the next page)
    prog[0xd..0x12].copy_from_slice(&[0xb8, 0x44, 0x33, 0x22, 0x11]);
    let tail = [
        0x01, 0x05, 0x00, 0x30, 0x00, 0x00, // 0x2002: add [0x3000], eax
        0xfe, 0x05, 0x01, 0x20, 0x00, 0x00, // inc byte [0x2001] (next page)
        0xfe, 0x05, 0xff, 0x1f, 0x00, 0x00, // inc byte [0x1fff] (this page)
        0xfe, 0xc9, // dec cl
        0x75, 0xe5, // jnz 0x1ffd
        0xf4, // hlt
    ];
    prog[0x12..0x12 + tail.len()].copy_from_slice(&tail);
    let mut cpu = cpu_with(&prog, 0x1ff0);
    let space = cpu.space.clone();
    let ram = &space.ram;
    ram.write_bytes(0x10000, &(0x11000u32 | 3).to_le_bytes());
    for p in 0..1024u32 {
        ram.write_bytes(0x11000 + 4 * p as u64, &((p << 12) | 3).to_le_bytes());
    }
    cpu.cr0 |= cr0::PE | cr0::PG;
    cpu.cr3 = 0x10000;
    cpu.seg[CS] = Segment::flat32(8, true);
    cpu.seg[DS] = Segment::flat32(16, false);
    cpu.seg[SS] = Segment::flat32(16, false);
    cpu.flush_tlb(false);
    cpu.rip = 0x1ff0;
    assert_eq!(cpu.run(1000), CpuExit::Halted);
    let want = (0..3u32).fold(0u32, |s, i| {
        s.wrapping_add(0x1122_3344 + i * 0x0100_0000 + i * 0x0100)
    });
    assert_eq!(ram.read_u32(0x3000), want);
    assert_eq!(cpu.gpr[reg::RAX] as u32, 0x1322_3544);

    // A straddling `mov eax, imm32; hlt`, run again after the next page
    // is mapped elsewhere: the instruction reads the bytes mapped now.
    let space = cpu.space.clone();
    let ram = &space.ram;
    ram.write_bytes(0x1ffd, &[0xb8, 0x44, 0x33]);
    ram.write_bytes(0x2000, &[0x22, 0x11, 0xf4]);
    ram.write_bytes(0x5000, &[0x66, 0x55, 0xf4]);
    cpu.cache.clear();
    for (phys, want) in [
        (0x2000u32, 0x1122_3344u32),
        (0x5000, 0x5566_3344),
        (0x2000, 0x1122_3344),
    ] {
        ram.write_bytes(0x11000 + 4 * 2, &(phys | 3).to_le_bytes());
        cpu.flush_tlb(false);
        for _ in 0..2 {
            cpu.rip = 0x1ffd;
            cpu.halted = false;
            assert_eq!(cpu.run(100), CpuExit::Halted);
            assert_eq!(cpu.gpr[reg::RAX] as u32, want, "next page at {phys:#x}");
        }
    }
}

fn read_u16(ram: &GuestRam, gpa: u64) -> u16 {
    let mut b = [0u8; 2];
    ram.read_bytes(gpa, &mut b);
    u16::from_le_bytes(b)
}

/// A port that reads as 0, 1, 2… (16 bits a read).
struct CountingPort(Arc<std::sync::Mutex<u16>>);

impl vireo_devices::BusDevice for CountingPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        let mut n = crate::bus::lock(&self.0);
        data.copy_from_slice(&n.to_le_bytes()[..data.len()]);
        *n += 1;
    }
    fn write(&mut self, _offset: u64, _data: &[u8]) {}
}

/// REP INSW into a page that faults part-way: the words before it are
/// stored, ECX/EDI say where it stopped, and no word read from the port is
/// lost (the rest arrive once the page is mapped and the instruction runs
/// again).
#[test]
fn rep_ins_stops_at_a_fault_without_losing_data() {
    let code = [
        0xbf, 0xf0, 0x2f, 0x00, 0x00, // mov edi, 0x2ff0
        0xb9, 0x28, 0x00, 0x00, 0x00, // mov ecx, 40
        0x66, 0xba, 0xf0, 0x01, // mov dx, 0x1f0
        0xf3, 0x66, 0x6d, // 0x100e: rep insw
        0xf4, // hlt
    ];
    let ram = GuestRam::new(1 << 20).expect("ram");
    ram.write_bytes(0x1000, &code);
    ram.write_bytes(0x10000, &(0x11000u32 | 3).to_le_bytes());
    for p in 0..3u32 {
        ram.write_bytes(0x11000 + 4 * p as u64, &((p << 12) | 3).to_le_bytes());
    }
    let count = Arc::new(std::sync::Mutex::new(0u16));
    let mut space = AddressSpace::new(ram);
    space
        .pio
        .insert(
            0x1f0,
            2,
            Arc::new(std::sync::Mutex::new(CountingPort(count.clone()))),
        )
        .expect("port");
    let space = Arc::new(space);
    let mut cpu = Cpu::new(space.clone());
    cpu.cr0 |= cr0::PE | cr0::PG;
    cpu.cr3 = 0x10000;
    cpu.seg[CS] = Segment::flat32(8, true);
    for s in [DS, ES, SS] {
        cpu.seg[s] = Segment::flat32(16, false);
    }
    cpu.flush_tlb(false);
    cpu.rip = 0x1000;
    // No IDT: the page fault ends in a triple fault, leaving the state.
    assert_eq!(cpu.run(1000), CpuExit::Shutdown);
    assert_eq!(cpu.cr2, 0x3000);
    assert_eq!(cpu.gpr[reg::RCX], 32);
    assert_eq!(cpu.gpr[reg::RDI], 0x3000);
    assert_eq!(*count.lock().unwrap(), 8);
    for i in 0..8u64 {
        assert_eq!(read_u16(&space.ram, 0x2ff0 + 2 * i), i as u16);
    }
    space
        .ram
        .write_bytes(0x11000 + 4 * 3, &(0x3000u32 | 3).to_le_bytes());
    cpu.flush_tlb(false);
    cpu.shutdown = false;
    cpu.rip = 0x100e;
    assert_eq!(cpu.run(1000), CpuExit::Halted);
    assert_eq!(cpu.gpr[reg::RCX], 0);
    assert_eq!(cpu.gpr[reg::RDI], 0x3040);
    assert_eq!(*count.lock().unwrap(), 40);
    for i in 0..40u64 {
        assert_eq!(read_u16(&space.ram, 0x2ff0 + 2 * i), i as u16, "word {i}");
    }
}

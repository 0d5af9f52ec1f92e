//! Runs cases on the host CPU.
//!
//! Each batch runs in a forked child. The child maps the code page, the data
//! buffer, a control area and a stub page at fixed addresses, then for each
//! case: loads the initial state (FXRSTOR, POPF, GPRs), jumps to the code and,
//! at the end, stores the state (GPRs, PUSHF, FXSAVE) and returns. 64-bit
//! cases run in 64-bit mode; 32-bit cases run in compatibility mode, entered
//! with a far call to the 32-bit user code selector and left with a far
//! return. Faults (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGTRAP) are caught by a
//! handler running on an alternate stack that records the state at the fault
//! from the signal context (with the hardware vector in `REG_TRAPNO`) and
//! resumes at the stub's exit path. Results go to a shared mapping; the
//! parent re-forks past a child that died or hung.

use super::{
    Case, FinalState, Outcome, X87State, CODE_ADDR, CODE_PAGES, CODE_SIZE, DATA_ADDR, DATA_SIZE,
};
use iced_x86::code_asm::*;
use iced_x86::{BlockEncoderOptions, IcedError};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Control area (native only).
const CTRL_ADDR: u64 = 0x0012_0000;
const CTRL_SIZE: usize = 0x3000;
/// Entry/exit stubs (native only).
const STUB_ADDR: u64 = 0x0013_0000;
const STUB_SIZE: usize = 0x1000;

const IN_GPR: u64 = CTRL_ADDR;
const IN_FLAGS: u64 = CTRL_ADDR + 0x80;
const HOST_RSP: u64 = CTRL_ADDR + 0x88;
const SAVED_ESP32: u64 = CTRL_ADDR + 0x90;
const IN_GUEST: u64 = CTRL_ADDR + 0x98;
const FAULTED: u64 = CTRL_ADDR + 0xa0;
const TRAPNO: u64 = CTRL_ADDR + 0xa8;
const FAULT_RIP: u64 = CTRL_ADDR + 0xb0;
const FARPTR: u64 = CTRL_ADDR + 0xc0;
const OUT_GPR: u64 = CTRL_ADDR + 0x100;
const OUT_FLAGS: u64 = CTRL_ADDR + 0x180;
const IN_FX: u64 = CTRL_ADDR + 0x200;
const OUT_FX: u64 = CTRL_ADDR + 0x400;
const HOST_FX: u64 = CTRL_ADDR + 0x600;
const LOW_STACK: u64 = CTRL_ADDR + 0x2ff0;

/// Linux x86-64 user code selectors.
const USER32_CS: u16 = 0x23;
const USER_DS: u16 = 0x2b;
const USER64_CS: u16 = 0x33;

const ALT_STACK_SIZE: usize = 0x10000;

/// The stubs and where their entry points are.
struct Stubs {
    bytes: Vec<u8>,
    entry64: u64,
    exit64: u64,
    recover: u64,
    entry32_64: u64,
    entry32: u64,
    exit32: u64,
}

fn gpr64() -> [AsmRegister64; 16] {
    [
        rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi, r8, r9, r10, r11, r12, r13, r14, r15,
    ]
}

fn gpr32() -> [AsmRegister32; 8] {
    [eax, ecx, edx, ebx, esp, ebp, esi, edi]
}

fn asm_stubs() -> Result<Stubs, IcedError> {
    // 64-bit part: entry64 | exit64 | recover | entry32_64.
    let mut a = CodeAssembler::new(64)?;
    let mut l_exit64 = a.create_label();
    let mut l_recover = a.create_label();
    let mut l_entry32_64 = a.create_label();
    // entry64: save callee-saved registers and the host FPU state, load the
    // guest state, jump to the code.
    for r in [rbx, rbp, r12, r13, r14, r15] {
        a.push(r)?;
    }
    a.sub(rsp, 8)?;
    a.mov(qword_ptr(HOST_RSP), rsp)?;
    a.fxsave64(ptr(HOST_FX))?;
    a.fxrstor64(ptr(IN_FX))?;
    a.push(qword_ptr(IN_FLAGS))?;
    a.popfq()?;
    for (i, r) in gpr64().into_iter().enumerate() {
        if i != 4 {
            a.mov(r, qword_ptr(IN_GPR + 8 * i as u64))?;
        }
    }
    a.mov(rsp, qword_ptr(IN_GPR + 32))?;
    a.jmp(CODE_ADDR)?;
    // exit64: the sequence jumps here.
    a.set_label(&mut l_exit64)?;
    for (i, r) in gpr64().into_iter().enumerate() {
        a.mov(qword_ptr(OUT_GPR + 8 * i as u64), r)?;
    }
    a.mov(rsp, LOW_STACK)?;
    a.pushfq()?;
    a.pop(qword_ptr(OUT_FLAGS))?;
    a.fxsave64(ptr(OUT_FX))?;
    // recover: common exit (also where the signal handler resumes).
    a.set_label(&mut l_recover)?;
    a.mov(rsp, qword_ptr(HOST_RSP))?;
    a.fxrstor64(ptr(HOST_FX))?;
    a.xor(eax, eax)?;
    a.mov(ds, ax)?;
    a.mov(es, ax)?;
    a.cld()?;
    a.add(rsp, 8)?;
    for r in [r15, r14, r13, r12, rbp, rbx] {
        a.pop(r)?;
    }
    a.ret()?;
    // entry32_64: same prologue, then a far call into compatibility mode.
    a.set_label(&mut l_entry32_64)?;
    for r in [rbx, rbp, r12, r13, r14, r15] {
        a.push(r)?;
    }
    a.sub(rsp, 8)?;
    a.mov(qword_ptr(HOST_RSP), rsp)?;
    a.fxsave64(ptr(HOST_FX))?;
    a.mov(rsp, LOW_STACK)?;
    a.call(fword_ptr(FARPTR))?;
    a.jmp(l_recover)?;
    let r64 = a.assemble_options(
        STUB_ADDR,
        BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS,
    )?;
    let off = |l: CodeLabel| r64.label_ip(&l);
    let exit64 = off(l_exit64)?;
    let recover = off(l_recover)?;
    let entry32_64 = off(l_entry32_64)?;
    let mut bytes = r64.inner.code_buffer.clone();

    // 32-bit part: entry32 | exit32.
    let entry32 = (STUB_ADDR + bytes.len() as u64 + 15) & !15;
    let mut b = CodeAssembler::new(32)?;
    let mut l_exit32 = b.create_label();
    b.mov(ax, USER_DS as u32)?;
    b.mov(ds, ax)?;
    b.mov(es, ax)?;
    b.mov(dword_ptr(SAVED_ESP32), esp)?;
    b.fxrstor(ptr(IN_FX))?;
    b.push(dword_ptr(IN_FLAGS))?;
    b.popfd()?;
    for (i, r) in gpr32().into_iter().enumerate() {
        if i != 4 {
            b.mov(r, dword_ptr(IN_GPR + 8 * i as u64))?;
        }
    }
    b.mov(esp, dword_ptr(IN_GPR + 32))?;
    b.jmp(CODE_ADDR)?;
    b.set_label(&mut l_exit32)?;
    for (i, r) in gpr32().into_iter().enumerate() {
        b.mov(dword_ptr(OUT_GPR + 8 * i as u64), r)?;
    }
    b.mov(esp, dword_ptr(SAVED_ESP32))?;
    b.pushfd()?;
    b.pop(dword_ptr(OUT_FLAGS))?;
    b.fxsave(ptr(OUT_FX))?;
    b.retf()?;
    let r32 = b.assemble_options(entry32, BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS)?;
    let exit32 = r32.label_ip(&l_exit32)?;
    bytes.resize((entry32 - STUB_ADDR) as usize, 0xcc);
    bytes.extend_from_slice(&r32.inner.code_buffer);
    assert!(bytes.len() <= STUB_SIZE);
    Ok(Stubs {
        bytes,
        entry64: STUB_ADDR,
        exit64,
        recover,
        entry32_64,
        entry32,
        exit32,
    })
}

/// What the child needs for one case, prepared before the fork (the child
/// must not allocate).
struct Prepared {
    bitness: u32,
    code: Vec<u8>,
    end_rip: u64,
    gpr: [u64; 16],
    flags: u64,
    fx: [u8; 512],
    data: Vec<u8>,
}

/// Result slot in the shared mapping.
#[repr(C)]
struct Slot {
    /// 1 done, 2 fault.
    status: u32,
    trapno: u32,
    gpr: [u64; 16],
    rip: u64,
    rflags: u64,
    fx: [u8; 512],
    data: [u8; DATA_SIZE],
}

/// Runs batches of cases natively.
pub struct NativeRunner {
    stubs: Stubs,
    /// Seconds a batch may take before its child is killed.
    pub timeout_secs: u32,
    supports32: bool,
}

const BATCH: usize = 256;

/// Owned shared anonymous mapping.
struct Shared {
    ptr: *mut u8,
    len: usize,
}

impl Shared {
    fn new(len: usize) -> Result<Shared, String> {
        // SAFETY: anonymous shared mapping at a kernel-chosen address; checked
        // for failure.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!("mmap shared: {}", std::io::Error::last_os_error()));
        }
        Ok(Shared {
            ptr: p as *mut u8,
            len,
        })
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `new`.
        unsafe {
            libc::munmap(self.ptr as *mut libc::c_void, self.len);
        }
    }
}

impl NativeRunner {
    /// A runner (assembles the stubs, checks that the host runs 64-bit and
    /// compatibility-mode code).
    pub fn new() -> Result<NativeRunner, String> {
        let mut r = NativeRunner {
            stubs: asm_stubs().map_err(|e| format!("assembling stubs: {e}"))?,
            timeout_secs: 20,
            supports32: true,
        };
        let probe = |bitness| Case {
            bitness,
            code: vec![0x90],
            init: super::InitState {
                gpr: [0; 16],
                rflags: 0,
                xmm: [0; 16],
                mxcsr: 0x1f80,
                x87: X87State::default(),
                data: vec![0; DATA_SIZE],
            },
        };
        let out = r.run(&[probe(64), probe(32)]);
        if let Outcome::Error(e) = &out[0] {
            return Err(format!("cannot run 64-bit code natively: {e}"));
        }
        r.supports32 = matches!(out[1], Outcome::Done(_));
        Ok(r)
    }

    /// True when the host runs 32-bit code in compatibility mode (it does
    /// not when the kernel disables IA-32 emulation).
    pub fn supports_32bit(&self) -> bool {
        self.supports32
    }

    fn prepare(&self, c: &Case) -> Result<Prepared, String> {
        if c.bitness != 32 && c.bitness != 64 {
            return Err(format!("bitness {} not supported", c.bitness));
        }
        if c.code.len() > super::MAX_CODE || c.init.data.len() != DATA_SIZE {
            return Err("case too large or data buffer of the wrong size".into());
        }
        let mut code = c.code.clone();
        let end_rip = CODE_ADDR + code.len() as u64;
        let exit = if c.bitness == 64 {
            self.stubs.exit64
        } else {
            self.stubs.exit32
        };
        let rel = exit.wrapping_sub(end_rip + 5) as u32;
        code.push(0xe9);
        code.extend_from_slice(&rel.to_le_bytes());
        let mut gpr = c.init.gpr;
        if c.bitness == 32 {
            for g in gpr.iter_mut() {
                *g &= 0xffff_ffff;
            }
        }
        Ok(Prepared {
            bitness: c.bitness,
            code,
            end_rip,
            gpr,
            flags: (c.init.rflags & super::fl::COMPARED) | 0x202,
            fx: c.init.x87.to_fxsave(c.init.mxcsr, &c.init.xmm),
            data: c.init.data.clone(),
        })
    }

    /// Runs `cases` natively, in batches, one forked child per batch.
    pub fn run(&self, cases: &[Case]) -> Vec<Outcome> {
        let mut out: Vec<Option<Outcome>> = vec![None; cases.len()];
        let mut prepared = Vec::with_capacity(cases.len());
        for (i, c) in cases.iter().enumerate() {
            match self.prepare(c) {
                Ok(p) => prepared.push((i, p)),
                Err(e) => out[i] = Some(Outcome::Error(e)),
            }
        }
        let slots = match Shared::new(std::mem::size_of::<Slot>() * BATCH + 64) {
            Ok(s) => s,
            Err(e) => return vec![Outcome::Error(e); cases.len()],
        };
        let mut start = 0;
        while start < prepared.len() {
            let end = (start + BATCH).min(prepared.len());
            let batch = &prepared[start..end];
            let (done, err) = self.run_batch(batch, &slots);
            for (k, (i, p)) in batch.iter().enumerate().take(done) {
                // SAFETY: the child filled slots 0..done; the shared mapping
                // holds BATCH slots after the 64-byte header.
                let slot = unsafe { &*((slots.ptr.add(64) as *const Slot).add(k)) };
                out[*i] = Some(slot_outcome(slot, p));
            }
            if done < batch.len() {
                out[batch[done].0] = Some(Outcome::Error(err));
                start += done + 1;
            } else {
                start = end;
            }
        }
        out.into_iter()
            .map(|o| o.unwrap_or_else(|| Outcome::Error("not run".into())))
            .collect()
    }

    /// Runs one batch in a child; returns how many cases completed and, if
    /// not all, why the child stopped.
    fn run_batch(&self, batch: &[(usize, Prepared)], slots: &Shared) -> (usize, String) {
        // SAFETY: the header's first word is an atomic counter in the shared
        // mapping, suitably aligned.
        let counter = unsafe { &*(slots.ptr as *const AtomicU32) };
        counter.store(0, Ordering::SeqCst);
        // SAFETY: fork in a possibly multi-threaded process: the child only
        // uses async-signal-safe calls (mmap, sigaction, alarm, _exit) and
        // touches memory prepared before the fork; it never allocates.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return (0, format!("fork: {}", std::io::Error::last_os_error()));
        }
        if pid == 0 {
            // SAFETY: in the child; see `child_main`.
            unsafe { child_main(&self.stubs, batch, slots.ptr, self.timeout_secs) }
        }
        let mut status = 0;
        loop {
            // SAFETY: waits for our own child.
            let r = unsafe { libc::waitpid(pid, &mut status, 0) };
            if r == pid
                || (r < 0
                    && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted)
            {
                break;
            }
        }
        let done = (counter.load(Ordering::SeqCst) as usize).min(batch.len());
        let why = if libc::WIFSIGNALED(status) {
            let sig = libc::WTERMSIG(status);
            if sig == libc::SIGALRM {
                "native: timeout (child killed)".to_string()
            } else {
                format!("native: child killed by signal {sig}")
            }
        } else {
            let code = libc::WEXITSTATUS(status);
            match code {
                0 => "native: child stopped early".to_string(),
                10 => "native: cannot map the fixed pages (address in use?)".to_string(),
                11 => "native: cannot install signal handlers".to_string(),
                c => format!("native: child exited with status {c}"),
            }
        };
        (done, why)
    }
}

fn slot_outcome(s: &Slot, p: &Prepared) -> Outcome {
    let (x87, mxcsr, mut xmm) = X87State::from_fxsave(&s.fx);
    let mut gpr = s.gpr;
    let mut rip = s.rip;
    let mut rflags = s.rflags;
    if p.bitness == 32 {
        // Compatibility mode: only the low halves of the legacy registers.
        for g in gpr.iter_mut() {
            *g &= 0xffff_ffff;
        }
        for g in gpr[8..].iter_mut() {
            *g = 0;
        }
        for x in xmm[8..].iter_mut() {
            *x = 0;
        }
        rip &= 0xffff_ffff;
        rflags &= 0xffff_ffff;
    }
    let st = FinalState {
        gpr,
        rip,
        rflags,
        xmm,
        mxcsr,
        x87,
        data: s.data.to_vec(),
    };
    match s.status {
        1 => Outcome::Done(st),
        2 => {
            if rip >= CODE_ADDR && rip < p.end_rip {
                Outcome::Fault(s.trapno as u8, st)
            } else {
                Outcome::Error(format!(
                    "native: fault {} (vector {}) outside the sequence at {:#x}",
                    super::vector_name(s.trapno as u8),
                    s.trapno,
                    rip
                ))
            }
        }
        _ => Outcome::Error("native: no result".into()),
    }
}

/// Maps `len` bytes at fixed `addr` with `prot`.
unsafe fn map_fixed(addr: u64, len: usize, prot: i32) -> bool {
    // SAFETY (caller): MAP_FIXED_NOREPLACE never clobbers an existing mapping.
    let p = libc::mmap(
        addr as *mut libc::c_void,
        len,
        prot,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
        -1,
        0,
    );
    p as u64 == addr
}

/// The signal handler: records the state at the fault and resumes at the
/// stub's exit path (or, for a fault outside a guest run, restores the
/// default action so that the child dies).
extern "C" fn on_fault(sig: libc::c_int, _info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the control page is mapped before handlers are installed; the
    // kernel passes a valid ucontext; only plain memory is touched.
    unsafe {
        let in_guest = *(IN_GUEST as *const u64);
        if in_guest == 0 {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(sig, &sa, std::ptr::null_mut());
            return;
        }
        *(IN_GUEST as *mut u64) = 0;
        let uc = &mut *(ctx as *mut libc::ucontext_t);
        let g = &mut uc.uc_mcontext.gregs;
        let order = [
            libc::REG_RAX,
            libc::REG_RCX,
            libc::REG_RDX,
            libc::REG_RBX,
            libc::REG_RSP,
            libc::REG_RBP,
            libc::REG_RSI,
            libc::REG_RDI,
            libc::REG_R8,
            libc::REG_R9,
            libc::REG_R10,
            libc::REG_R11,
            libc::REG_R12,
            libc::REG_R13,
            libc::REG_R14,
            libc::REG_R15,
        ];
        for (i, r) in order.iter().enumerate() {
            *((OUT_GPR + 8 * i as u64) as *mut u64) = g[*r as usize] as u64;
        }
        *(OUT_FLAGS as *mut u64) = g[libc::REG_EFL as usize] as u64;
        *(FAULT_RIP as *mut u64) = g[libc::REG_RIP as usize] as u64;
        *(TRAPNO as *mut u64) = g[libc::REG_TRAPNO as usize] as u64;
        *(FAULTED as *mut u64) = 1;
        let fp = uc.uc_mcontext.fpregs as *const u8;
        if !fp.is_null() {
            std::ptr::copy_nonoverlapping(fp, OUT_FX as *mut u8, 512);
        }
        // Resume in 64-bit mode at the common exit.
        g[libc::REG_RIP as usize] = RECOVER_RIP.load(Ordering::Relaxed) as i64;
        g[libc::REG_RSP as usize] = LOW_STACK as i64;
        let csgsfs = g[libc::REG_CSGSFS as usize] as u64;
        g[libc::REG_CSGSFS as usize] = ((csgsfs & !0xffff) | USER64_CS as u64) as i64;
        g[libc::REG_EFL as usize] = 0x202;
    }
}

/// Where the handler resumes (set in the child before handlers are installed).
static RECOVER_RIP: AtomicU64 = AtomicU64::new(0);

/// The child: maps the fixed pages, installs the handlers, runs every case of
/// the batch and exits.
unsafe fn child_main(
    stubs: &Stubs,
    batch: &[(usize, Prepared)],
    shared: *mut u8,
    timeout: u32,
) -> ! {
    // SAFETY (whole function): runs in the forked child only, which owns its
    // address space; the fixed mappings are created with NOREPLACE; the
    // stubs were assembled for exactly these addresses.
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    let rwx = rw | libc::PROT_EXEC;
    if !map_fixed(CTRL_ADDR, CTRL_SIZE, rw)
        || !map_fixed(STUB_ADDR, STUB_SIZE, rwx)
        || !map_fixed(CODE_PAGES, CODE_SIZE, rwx)
        || !map_fixed(DATA_ADDR, DATA_SIZE, rw)
    {
        libc::_exit(10);
    }
    std::ptr::copy_nonoverlapping(
        stubs.bytes.as_ptr(),
        STUB_ADDR as *mut u8,
        stubs.bytes.len(),
    );
    *(FARPTR as *mut u32) = stubs.entry32 as u32;
    *((FARPTR + 4) as *mut u16) = USER32_CS;
    RECOVER_RIP.store(stubs.recover, Ordering::Relaxed);
    let alt = libc::mmap(
        std::ptr::null_mut(),
        ALT_STACK_SIZE,
        rw,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
        -1,
        0,
    );
    if alt == libc::MAP_FAILED {
        libc::_exit(11);
    }
    let alt_ss = libc::stack_t {
        ss_sp: alt,
        ss_flags: 0,
        ss_size: ALT_STACK_SIZE,
    };
    if libc::sigaltstack(&alt_ss, std::ptr::null_mut()) != 0 {
        libc::_exit(11);
    }
    for sig in [
        libc::SIGSEGV,
        libc::SIGBUS,
        libc::SIGILL,
        libc::SIGFPE,
        libc::SIGTRAP,
    ] {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_fault as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER;
        if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
            libc::_exit(11);
        }
    }
    libc::alarm(timeout);
    let counter = &*(shared as *const AtomicU32);
    let slots = shared.add(64) as *mut Slot;
    let entry64: extern "C" fn() = std::mem::transmute(stubs.entry64 as usize);
    let entry32: extern "C" fn() = std::mem::transmute(stubs.entry32_64 as usize);
    for (k, (_, p)) in batch.iter().enumerate() {
        std::ptr::write_bytes(CODE_PAGES as *mut u8, 0xcc, CODE_SIZE);
        std::ptr::copy_nonoverlapping(p.code.as_ptr(), CODE_ADDR as *mut u8, p.code.len());
        std::ptr::copy_nonoverlapping(p.data.as_ptr(), DATA_ADDR as *mut u8, DATA_SIZE);
        for i in 0..16 {
            *((IN_GPR + 8 * i as u64) as *mut u64) = p.gpr[i];
            *((OUT_GPR + 8 * i as u64) as *mut u64) = 0;
        }
        *(IN_FLAGS as *mut u64) = p.flags;
        *(OUT_FLAGS as *mut u64) = 0;
        std::ptr::copy_nonoverlapping(p.fx.as_ptr(), IN_FX as *mut u8, 512);
        *(FAULTED as *mut u64) = 0;
        std::ptr::write_volatile(IN_GUEST as *mut u64, 1);
        if p.bitness == 64 {
            entry64();
        } else {
            entry32();
        }
        std::ptr::write_volatile(IN_GUEST as *mut u64, 0);
        let s = &mut *slots.add(k);
        let faulted = std::ptr::read_volatile(FAULTED as *const u64) != 0;
        s.status = if faulted { 2 } else { 1 };
        s.trapno = *(TRAPNO as *const u64) as u32;
        for i in 0..16 {
            s.gpr[i] = *((OUT_GPR + 8 * i as u64) as *const u64);
        }
        s.rflags = *(OUT_FLAGS as *const u64);
        s.rip = if faulted {
            *(FAULT_RIP as *const u64)
        } else {
            p.end_rip
        };
        std::ptr::copy_nonoverlapping(OUT_FX as *const u8, s.fx.as_mut_ptr(), 512);
        std::ptr::copy_nonoverlapping(DATA_ADDR as *const u8, s.data.as_mut_ptr(), DATA_SIZE);
        counter.store(k as u32 + 1, Ordering::SeqCst);
    }
    libc::_exit(0);
}
